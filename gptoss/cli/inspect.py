"""`gptoss inspect --checkpoint DIR --prompt TEXT --out DIR`: a report of what the model does with
a prompt, layer by layer (attention, sinks, experts, logit lens, positions), as HTML and PNGs."""

from __future__ import annotations

import sys
import time

from gptoss.cli.common import add_model_arguments, load_model_and_tokenizer
from gptoss.inspection import write_report


def register(subparsers) -> None:
    """Add the `inspect` verb."""
    parser = subparsers.add_parser(
        "inspect",
        help="draw what the model does with a prompt: attention, sinks, experts, logit lens",
        description="Run a prompt through the model once, recording every layer, and write a self-contained "
        "HTML report (index.html, its pictures inside) and the pictures as PNGs to --out.",
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the text to inspect (at most 160 tokens: every token is drawn)")
    parser.add_argument("--out", default="inspect_report", metavar="DIR", help="folder for index.html and the PNGs (default: inspect_report)")
    parser.add_argument("--seed", type=int, help="seed of a preset's random weights (default: 0)")
    parser.add_argument("--title", help="the report's title (default: the checkpoint or preset)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Write the report and print where it is."""
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(args)
    title = args.title or f"gptoss inspect: {args.checkpoint or 'preset ' + args.preset}"
    if args.preset:
        title += " (random weights)"
    path = write_report(model, tokenizer, args.prompt, args.out, title=title)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
