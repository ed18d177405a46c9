"""The `gptoss` command (also `python -m gptoss`): one sub-command per verb.

Each verb is a module of this package with `register(subparsers)`, which adds its parser and sets
`func` to the function that runs it; the options they share (model, tokenizer, dtype, device,
sampling) are in gptoss.cli.common. Bad input is reported in one place, `main`: an `error:` line
on standard error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb modules, in the order their help is shown
VERBS = ["prepare", "convert", "train", "eval", "generate", "chat", "serve", "inspect"]
# what bad input raises: a clear message for the user, not a bug to trace
USER_ERRORS = (ValueError, TypeError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb registered."""
    parser = argparse.ArgumentParser(prog="gptoss", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        importlib.import_module(f"gptoss.cli.{verb}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen verb; returns the process exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
