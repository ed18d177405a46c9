"""`gptoss chat --checkpoint DIR`: a conversation with a model in the terminal, keeping the history.

The conversation is rendered by the model's chat format (gptoss.inference.chat_format: harmony for
gpt-oss, a plain transcript otherwise); only final answers enter the history.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TextIO

from gptoss.cli.common import add_model_arguments, add_sampling_arguments, load_model_and_tokenizer, sampling_arguments
from gptoss.inference.chat_format import HarmonyFormat, PlainFormat, Turn, chat_format_for, fit_prompt
from gptoss.inference.generation import check_generation_options, make_generator

CHAT_MAX_NEW_TOKENS = 512  # per reply, by default


def register(subparsers) -> None:
    """Add the `chat` verb."""
    parser = subparsers.add_parser(
        "chat",
        help="talk with a model, interactively (harmony format for gpt-oss)",
        description="An interactive conversation: type a message per line; /reset forgets the "
        "conversation, /quit (or end of input) leaves. gpt-oss models use the harmony format and "
        "show only their final answer unless --show-analysis.",
    )
    add_model_arguments(parser)
    add_sampling_arguments(parser, max_new_tokens=f"{CHAT_MAX_NEW_TOKENS}, or half the model's context if that is less")
    parser.add_argument("--system", help="instructions for the model (harmony: a developer message)")
    parser.add_argument("--reasoning-effort", choices=["low", "medium", "high"], help="harmony only (default: medium)")
    parser.add_argument("--show-analysis", action="store_true", help="also show the model's analysis channel (its reasoning)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Load the model, check the options, then talk on standard input and output."""
    model, tokenizer = load_model_and_tokenizer(args)
    chat_format = chat_format_for(tokenizer, args.system, args.reasoning_effort or "medium")
    if isinstance(chat_format, PlainFormat) and args.show_analysis:
        raise ValueError("--show-analysis shows reasoning, so its options apply to gpt-oss (harmony) chats only, and to models fine-tuned here with the chat template")
    if not isinstance(chat_format, HarmonyFormat) and args.reasoning_effort:
        raise ValueError("--reasoning-effort applies to gpt-oss (harmony) chats only")
    options = sampling_arguments(args)
    if args.max_new_tokens is None:
        args.max_new_tokens = min(CHAT_MAX_NEW_TOKENS, model.config.max_seq_len // 2)
    if args.max_new_tokens >= model.config.max_seq_len:
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for the conversation in this model's "
            f"context of {model.config.max_seq_len} tokens; ask for fewer"
        )
    check_generation_options(model, args.max_new_tokens, **options)  # before the first message
    # one random stream for the whole conversation, not one seeded afresh for each reply
    options["generator"] = make_generator(options.pop("seed"), None, model.lm_head.weight.device)
    chat_loop(model, chat_format, args.max_new_tokens, sys.stdin, sys.stdout, args.show_analysis, **options)
    return 0


def write_reply(pieces: Iterator[tuple[str, str]], output_stream: TextIO, show_analysis: bool) -> str:
    """Write the reply's pieces as they come, the final channel plainly and, with show_analysis,
    the others after a "[channel]" label on their own lines; returns the final answer."""
    answer, shown_channel = [], None
    try:
        for channel, piece in pieces:
            if channel == "final":
                answer.append(piece)
            elif not show_analysis:
                continue
            if channel != shown_channel:
                output_stream.write("\n" if shown_channel is not None else "")
                output_stream.write(f"[{channel}] " if channel != "final" else "")
                shown_channel = channel
            output_stream.write(piece)
            output_stream.flush()
    except ValueError as error:  # e.g. a reply that is not valid harmony: say so, keep what came
        output_stream.write(("\n" if shown_channel is not None else "") + f"[{error}]")
    output_stream.write("\n")
    return "".join(answer)


def chat_loop(
    model,
    chat_format,
    max_new_tokens: int,
    input_stream: TextIO,
    output_stream: TextIO,
    show_analysis: bool = False,
    **options,
) -> list[Turn]:
    """Read a user message per line from input_stream and stream each reply to output_stream,
    until end of input or /quit. /reset forgets the conversation. Returns the history.

    Replies on the "final" channel are shown; others (analysis) only when show_analysis. Options:
    sampling keywords of stream().
    """
    history: list[Turn] = []
    while True:
        output_stream.write("> ")
        output_stream.flush()
        line = input_stream.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            output_stream.write("" if line else "\n")
            return history
        message = line.rstrip("\n")
        if message.strip() == "/reset":
            history.clear()
        elif message.strip():
            try:
                prompt, kept = fit_prompt(chat_format, history + [("user", message)], model.config.max_seq_len - max_new_tokens)
            except ValueError as error:  # too long, or characters the tokenizer cannot encode
                output_stream.write(f"[{error}]\n")
                continue
            history[:] = kept
            pieces = chat_format.reply(model, prompt, max_new_tokens, **options)
            answer = write_reply(pieces, output_stream, show_analysis)
            if answer:
                history.append(("assistant", answer))
            else:  # e.g. all of max_new_tokens spent in the analysis channel: the question stays unanswered
                del history[-1:]
                output_stream.write(f"[no answer within {max_new_tokens} new tokens: ask again, or raise --max-new-tokens]\n")
