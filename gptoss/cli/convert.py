"""`gptoss convert SRC DST --to hf|gptoss`: rewrite a checkpoint of any format that
gptoss.checkpoints reads (gptoss, Hugging Face GPT-2 / gpt-oss, OpenAI's original gpt-oss) as a
Hugging Face or a gptoss checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from gptoss.checkpoints import SAVE_FORMATS, detect_format, from_pretrained, save_pretrained
from gptoss.checkpoints.mxfp4 import has_packed_experts
from gptoss.cli.common import DTYPES, add_dtype_argument, add_tokenizer_argument, tokenizer_from
from gptoss.model import GPT


def register(subparsers) -> None:
    """Add the `convert` verb."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint (gptoss, Hugging Face GPT-2/gpt-oss, OpenAI gpt-oss) to Hugging Face or gptoss format",
        description=__doc__,
    )
    parser.add_argument("source", help="checkpoint directory to read")
    parser.add_argument(
        "destination", help="directory to write (a checkpoint folder there is replaced atomically; the source is never)"
    )
    parser.add_argument("--to", choices=SAVE_FORMATS, required=True, help="format to write")
    add_dtype_argument(parser, "cast floating weights (default: keep them as stored)")
    parser.add_argument(
        "--dequantize-experts", action="store_true", help="decode MXFP4 experts to plain weights (default: keep them packed)"
    )
    add_tokenizer_argument(parser, "tokenizer to save with the model: a kind (gpt2, o200k_harmony) or a folder saved by a "
                           "gptoss tokenizer (default: the one saved with the source, if any)")  # fmt: skip
    parser.set_defaults(func=run)


def run(args) -> int:
    """Load args.source, save it as args.to at args.destination, and say what was written."""
    check_destination(args.source, args.destination)
    format_name, _ = detect_format(args.source)
    tokenizer = tokenizer_from(args.tokenizer, args.source)  # before the (long) load: a typo fails fast
    model = from_pretrained(args.source, dtype=DTYPES.get(args.dtype), dequantize_experts=args.dequantize_experts, progress=None)
    save_pretrained(model, args.destination, format=args.to, tokenizer=tokenizer)
    experts = "" if model.config.mlp != "moe" else (", experts MXFP4-packed" if has_packed_experts(model) else ", experts plain")
    count = GPT(model.config, device="meta").num_parameters()
    print(
        f"{format_name} checkpoint {args.source} -> {args.to} checkpoint {args.destination}: {count:,} parameters, "
        f"{model.transformer.wte.weight.dtype}{experts}; tokenizer: {tokenizer.kind if tokenizer else 'none'}"
    )
    return 0


def check_destination(source: str | Path, destination: str | Path) -> None:
    """Refuse a destination whose replacement would delete the source or a folder that is not a
    checkpoint (the destination is replaced whole)."""
    source, target = Path(source).resolve(), Path(destination).resolve()
    if target == source or target in source.parents:
        raise ValueError(
            f"the destination {destination} holds the source checkpoint, and writing it replaces the whole "
            "folder: choose a destination outside the source"
        )
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / "config.json").is_file())):
        raise ValueError(
            f"{destination} exists and is not a checkpoint folder (no config.json); convert replaces the "
            "destination whole: choose a new folder, or remove it first"
        )
