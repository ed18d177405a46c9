"""`gptoss chat`: a conversation with a model, in a loop that keeps the history.

Two formats, picked by the tokenizer:
- harmony, for gpt-oss models (o200k_harmony tokenizer): the conversation is rendered with OpenAI's
  `openai-harmony` library, as gpt-oss was trained. The model answers in messages on channels:
  "analysis" (its chain of thought, hidden unless show_analysis) and "final" (the answer shown).
  Only final answers enter the history. Generation ends at <|return|> (or <|call|>, a tool call).
  openai-harmony reads o200k_base.tiktoken from the folder in TIKTOKEN_ENCODINGS_BASE (offline);
  we point it at the tokenizer's own files when that variable is unset.
- plain, for every other model: a transcript "User: ...\\nAssistant: ...\\n" that the model
  continues until it starts the next "\\nUser:" line or ends the text.

When the conversation no longer fits in the model's context, the oldest exchanges are dropped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TextIO

from gptoss.generation import (
    add_model_arguments,
    add_sampling_arguments,
    check_generation_options,
    load_model_and_tokenizer,
    make_generator,
    sampling_arguments,
    stream,
    stream_text,
)

HARMONY_FILE = "o200k_base.tiktoken"
CHAT_MAX_NEW_TOKENS = 512  # per reply, by default
Turn = tuple[str, str]  # (role: "user" or "assistant", text)


class HarmonyFormat:
    """gpt-oss's chat format, rendered and parsed by openai-harmony."""

    def __init__(self, tokenizer, system: str | None = None, reasoning_effort: str = "medium"):
        files_dir = getattr(tokenizer, "files_dir", None)
        if "TIKTOKEN_ENCODINGS_BASE" not in os.environ and files_dir and (files_dir / HARMONY_FILE).is_file():
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(files_dir)
        import openai_harmony as harmony

        self.harmony = harmony
        try:
            self.encoding = harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
        except harmony.HarmonyError as error:
            raise ValueError(
                f"openai-harmony could not load its encoding ({error}); offline, set TIKTOKEN_ENCODINGS_BASE "
                f"to a folder holding {HARMONY_FILE}"
            ) from None
        efforts = {e.name.lower(): e for e in harmony.ReasoningEffort}
        if reasoning_effort not in efforts:
            raise ValueError(f"reasoning effort must be one of {sorted(efforts)}, got {reasoning_effort!r}")
        header = [harmony.Message.from_role_and_content(
            harmony.Role.SYSTEM, harmony.SystemContent.new().with_reasoning_effort(efforts[reasoning_effort])
        )]
        if system:
            header.append(harmony.Message.from_role_and_content(
                harmony.Role.DEVELOPER, harmony.DeveloperContent.new().with_instructions(system)
            ))
        self.header = header

    def prompt(self, history: list[Turn]) -> list[int]:
        """Token ids of the conversation, ending where the assistant's next message starts."""
        h = self.harmony
        messages = list(self.header)
        for role, text in history:
            if role == "user":
                messages.append(h.Message.from_role_and_content(h.Role.USER, text))
            else:
                messages.append(h.Message.from_role_and_content(h.Role.ASSISTANT, text).with_channel("final"))
        conversation = h.Conversation.from_messages(messages)
        return self.encoding.render_conversation_for_completion(conversation, h.Role.ASSISTANT)

    def reply(self, model, prompt: list[int], max_new_tokens: int, **options) -> Iterator[tuple[str, str]]:
        """Generate the assistant's messages: yields (channel, text) pieces as they are parsed."""
        parser = self.harmony.StreamableParser(self.encoding, role=self.harmony.Role.ASSISTANT)
        stops = self.encoding.stop_tokens_for_assistant_actions()
        for step in stream(model, [prompt], max_new_tokens, stop_token_ids=stops, **options):
            for token in step[0]:
                try:
                    parser.process(token)
                except self.harmony.HarmonyError as error:
                    raise ValueError(f"the model's reply is not valid harmony ({error})") from None
                if parser.last_content_delta:
                    yield parser.current_channel or "final", parser.last_content_delta


class PlainFormat:
    """A plain "User: / Assistant:" transcript, for models trained on ordinary text."""

    def __init__(self, tokenizer, system: str | None = None):
        self.tokenizer = tokenizer
        self.system = system

    def transcript(self, history: list[Turn]) -> str:
        lines = [self.system] if self.system else []
        lines += [f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in history]
        return "\n".join(lines) + "\nAssistant:"

    def prompt(self, history: list[Turn]) -> list[int]:
        """Token ids of the transcript, ending with the "Assistant:" that the model continues."""
        return self.tokenizer.encode(self.transcript(history))

    def reply(self, model, prompt: list[int], max_new_tokens: int, **options) -> Iterator[tuple[str, str]]:
        """Generate the assistant's answer: yields ("final", text) pieces as they are produced."""
        stops = [self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else []
        text = self.tokenizer.decode(prompt)
        first = True
        for piece in stream_text(
            model, self.tokenizer, text, max_new_tokens, stop_strings=["\nUser:"], stop_token_ids=stops, **options
        ):
            if first:  # the transcript puts a space after "Assistant:"
                piece, first = piece.lstrip(" "), False
            yield "final", piece


def chat_format_for(tokenizer, system: str | None = None, reasoning_effort: str = "medium"):
    """Harmony for the o200k_harmony tokenizer (gpt-oss), the plain transcript otherwise."""
    if tokenizer.kind == "o200k_harmony":
        return HarmonyFormat(tokenizer, system, reasoning_effort)
    return PlainFormat(tokenizer, system)


def fit_prompt(chat_format, history: list[Turn], room: int) -> tuple[list[int], list[Turn]]:
    """The prompt for `history`, dropping the oldest exchanges until it takes at most `room`
    tokens, and the history it was made from (ValueError if even the last message alone does not
    fit; `history` itself is left as it was)."""
    kept = list(history)
    prompt = chat_format.prompt(kept)
    while len(prompt) > room and len(kept) > 1:
        del kept[:2]  # the oldest user message and its answer
        prompt = chat_format.prompt(kept)
    if len(prompt) > room:
        raise ValueError(f"this message takes {len(prompt)} tokens, more than the {room} the context leaves for it")
    return prompt, kept


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


def register_cli(subparsers) -> None:
    """Add the `chat` verb: `gptoss chat --checkpoint DIR`."""
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
    parser.set_defaults(func=_run_chat)


def _run_chat(args) -> int:
    try:
        model, tokenizer = load_model_and_tokenizer(args)
        chat_format = chat_format_for(tokenizer, args.system, args.reasoning_effort or "medium")
        if isinstance(chat_format, PlainFormat) and (args.show_analysis or args.reasoning_effort):
            raise ValueError("--show-analysis and --reasoning-effort apply to gpt-oss (harmony) chats only")
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
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    chat_loop(model, chat_format, args.max_new_tokens, sys.stdin, sys.stdout, args.show_analysis, **options)
    return 0
