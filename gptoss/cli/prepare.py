"""`gptoss prepare --corpus shakespeare --tokenizer bpe --out DIR`: tokenize a corpus once."""

from __future__ import annotations

from pathlib import Path

from gptoss.data.tokenizers import KINDS
from gptoss.data.token_files import default_prepared_dir, prepare


def register(subparsers) -> None:
    """Add the `prepare` verb."""
    parser = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus once into train.bin / val.bin for training",
        description="Tokenize a corpus into train.bin, val.bin and meta.json (plus its tokenizer); "
        "cached by content, so running it again on the same text is instant.",
    )
    parser.add_argument("--corpus", default="pystdlib", help="pystdlib, shakespeare, or a file, folder or glob of UTF-8 text (default: pystdlib)")
    parser.add_argument("--tokenizer", default="bpe", choices=KINDS, help="tokenizer kind (default: bpe)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size of a bpe tokenizer (default: 4096)")
    parser.add_argument("--out", type=Path, help="output folder (default: data_cache/CORPUS-TOKENIZER, plus the bpe vocabulary size and -Nchars "
                        "with --max-chars: the folder gptoss train looks in for the same settings)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text kept for validation (default: 0.1)")
    parser.add_argument("--max-chars", type=int, help="use only the first MAX_CHARS characters of the corpus")
    parser.add_argument("--tokenizer-files", type=Path, help="folder with OpenAI's tokenizer files, for offline gpt2 / o200k_harmony")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Prepare the corpus and say what was written."""
    out = args.out or default_prepared_dir(args.corpus, args.tokenizer, args.vocab_size, args.max_chars)
    dataset = prepare(
        args.corpus, args.tokenizer, out, args.val_fraction, vocab_size=args.vocab_size,
        tokenizer_files_dir=args.tokenizer_files, max_chars=args.max_chars,
    )  # fmt: skip
    meta = dataset.meta
    tokens = meta["train_tokens"] + meta["val_tokens"]
    print(
        f"{out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens ({meta['dtype']}), "
        f"{meta['source_chars'] / tokens:.2f} characters per token, {meta['tokenizer']['kind']} "
        f"tokenizer with {meta['tokenizer']['vocab_size']:,} ids"
    )
    return 0
