"""The `gptoss` command (also `python -m gptoss`): one sub-command per verb.

Each verb lives in the module of its concern, which exposes `register_cli(subparsers)`: it adds its
own parser and sets `func` to the function that runs it. This file only collects them.
"""

from __future__ import annotations

import argparse
import importlib

# verb modules, in the order their help is shown
COMMAND_MODULES = [
    "gptoss.data",  # prepare
    "gptoss.convert",  # convert
    "gptoss.train_cli",  # train
    "gptoss.generation",  # generate
    "gptoss.chat",  # chat
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb registered."""
    parser = argparse.ArgumentParser(prog="gptoss", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen verb; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.func(args) or 0
