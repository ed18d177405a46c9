"""`gptoss generate --checkpoint DIR --prompt "Once upon a time"`: continue a prompt, streaming."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gptoss.cli.common import add_model_arguments, add_sampling_arguments, load_model_and_tokenizer, sampling_arguments
from gptoss.inference import GenerationStats, stream_text


def register(subparsers) -> None:
    """Add the `generate` verb."""
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt, streaming the text as it is produced",
        description="Continue a prompt with a model, streaming the new text to standard output as it is "
        "produced; then print the prefill and decode speed (tokens/s) to standard error.",
    )
    add_model_arguments(parser)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text to continue")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the text to continue from FILE ('-': standard input)")
    add_sampling_arguments(parser, max_new_tokens=200)
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end the text before TEXT (repeatable)")
    parser.add_argument("--stop-token-id", action="append", type=int, default=[], metavar="ID", help="end at token ID (repeatable)")
    parser.add_argument("--ignore-eot", action="store_true", help="do not stop at the tokenizer's end-of-text token (nor at gpt-oss's <|return|>, <|call|>)")
    parser.set_defaults(func=run)


def read_prompt(args) -> str:
    """The prompt text: --prompt, or the contents of --prompt-file ('-' reads standard input)."""
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file == "-":
        return sys.stdin.read()
    return Path(args.prompt_file).read_text(encoding="utf-8")


def run(args) -> int:
    """Stream the continuation to standard output, then the speeds to standard error."""
    model, tokenizer = load_model_and_tokenizer(args)
    text = read_prompt(args)
    stop_ids = list(args.stop_token_id)
    if tokenizer.eot_id is not None and not args.ignore_eot:
        stop_ids.append(tokenizer.eot_id)
        if tokenizer.kind == "o200k_harmony":  # gpt-oss ends a message with <|return|> or <|call|>
            stop_ids += tokenizer.encode("<|return|><|call|>")
    stats = GenerationStats()
    pieces = stream_text(
        model, tokenizer, text, args.max_new_tokens, stop_strings=args.stop, stop_token_ids=stop_ids,
        stats=stats, **sampling_arguments(args),
    )  # fmt: skip
    first = next(pieces, "")  # bad options raise here, before any output
    if args.preset:
        print(f"(random weights: preset {args.preset}; the text is noise)", file=sys.stderr)
    sys.stdout.write(text + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    device = model.lm_head.weight.device
    where = f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    decoding = f"{stats.decode_tokens_per_second:.1f} tokens/s" if stats.decode_tokens else "n/a (one step)"
    weights = f"{model.lm_head.weight.dtype}" + (", int8 linear weights" if args.weights == "int8" else "")
    print(
        f"[{stats.prompt_tokens} prompt tokens at {stats.prefill_tokens_per_second:.1f} tokens/s, "
        f"{stats.new_tokens} new tokens sampled, decoding at {decoding}; {weights}, {where}]",
        file=sys.stderr,
    )
    return 0
