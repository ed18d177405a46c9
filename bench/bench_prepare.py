"""Prepare a 300 MB corpus with bounded memory, then train a few steps from its memmap.

    python bench/bench_prepare.py [--megabytes 300] [--tokenizer bpe|gpt2|...] [--keep DIR]

The corpus is real text repeated: Tiny Shakespeare and the Python standard library, alternating,
up to --megabytes. Each stage runs in its own process, which reports its own peak RSS (VmHWM, in MB;
not ru_maxrss, which on Linux carries the parent's peak across exec):
1. prepare: tokenize the corpus into train.bin / val.bin (a bpe tokenizer is trained on
   Shakespeare first; tiktoken kinds are used as they are);
2. prepare again: the cache hit, which only hashes the text;
3. train: a few optimizer steps of the tiny GPT preset on random windows of the train memmap.
Everything is written to a temporary folder, deleted at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the stage's own peak resident memory, in MB (10^6 bytes)
PEAK_RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]) * 1024 / 1e6"

PREPARE_STAGE = """
import json, sys, time
from gptoss.data.token_files import prepare
from gptoss.data.tokenizers import load_tokenizer
corpus, tokenizer_dir, out = sys.argv[1:4]
start = time.perf_counter()
dataset = prepare(corpus, load_tokenizer(tokenizer_dir), out, progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "meta": dataset.meta, "peak_rss_mb": PEAK_RSS}))
""".replace("PEAK_RSS", PEAK_RSS)

TRAIN_STAGE = """
import json, sys, time
import torch
from gptoss.config import GPTConfig
from gptoss.data import TokenDataset, random_batch
from gptoss.model import GPT
torch.manual_seed(0)
dataset = TokenDataset.load(sys.argv[1])
steps, batch_size, seq_len = int(sys.argv[2]), 8, 128
model = GPT(GPTConfig.preset("tiny", vocab_size=dataset.tokenizer.vocab_size, max_seq_len=seq_len))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
losses, start = [], time.perf_counter()
for _ in range(steps):
    x, y = random_batch(dataset.train, batch_size, seq_len, generator)
    _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / steps, "first_loss": losses[0],
                  "last_loss": losses[-1], "train_tokens": len(dataset.train), "memmap": type(dataset.train).__name__,
                  "peak_rss_mb": PEAK_RSS}))
""".replace("PEAK_RSS", PEAK_RSS)


def run_stage(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python process; it prints one JSON line, returned as a dict."""
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"stage failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_repeated_corpus(path: Path, megabytes: int) -> int:
    """Alternate Shakespeare and the standard library into `path` up to `megabytes`; returns bytes."""
    from gptoss.data import load_corpus

    pieces = [load_corpus("shakespeare").encode(), load_corpus("pystdlib").encode()]
    written, index = 0, 0
    with open(path, "wb") as file:
        while written < megabytes * 1_000_000:
            piece = pieces[index % 2][: megabytes * 1_000_000 - written]
            piece = piece.decode("utf-8", errors="ignore").encode()  # a cut inside a character drops it
            file.write(piece)
            written += len(piece)
            index += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--tokenizer", default="bpe", help="char, bpe (trained on Shakespeare), gpt2, o200k_harmony")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="keep the files in this folder instead of a temporary one")
    args = parser.parse_args()

    from gptoss.data import load_corpus
    from gptoss.data.tokenizers import build_tokenizer

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "corpus.txt"
        start = time.perf_counter()
        size = write_repeated_corpus(corpus, args.megabytes)
        print(f"corpus: {size / 1e6:.0f} MB of repeated real text, written in {time.perf_counter() - start:.1f} s")
        # A char vocabulary must cover the whole corpus: build it from both texts repeated in it.
        sample = load_corpus("shakespeare") + (load_corpus("pystdlib") if args.tokenizer == "char" else "")
        build_tokenizer(args.tokenizer, sample, vocab_size=args.vocab_size).save(work / "tokenizer")

        first = run_stage(PREPARE_STAGE, corpus, work / "tokenizer", work / "prepared")
        again = run_stage(PREPARE_STAGE, corpus, work / "tokenizer", work / "prepared")
        train = run_stage(TRAIN_STAGE, work / "prepared", args.steps)
        meta = first["meta"]
        tokens = meta["train_tokens"] + meta["val_tokens"]
        token_bytes = sum((work / "prepared" / f).stat().st_size for f in ("train.bin", "val.bin"))
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n")
        print("| stage | wall s | peak RSS MB | notes |")
        print("|---|---:|---:|---|")
        print(
            f"| prepare {size / 1e6:.0f} MB, {meta['tokenizer']['kind']} ({meta['tokenizer']['vocab_size']:,} ids) "
            f"| {first['seconds']:.1f} | {first['peak_rss_mb']:.0f} | {tokens:,} tokens ({meta['dtype']}, "
            f"{token_bytes / 1e6:.0f} MB on disk), {size / 1e6 / first['seconds']:.1f} MB/s |"
        )
        print(f"| prepare again (cached) | {again['seconds']:.1f} | {again['peak_rss_mb']:.0f} | only hashes the text |")
        print(
            f"| train {args.steps} steps, tiny GPT, batch 8 x 128 | {train['seconds_per_step'] * args.steps:.1f} "
            f"| {train['peak_rss_mb']:.0f} | from a {train['memmap']} of {train['train_tokens']:,} tokens; "
            f"loss {train['first_loss']:.2f} -> {train['last_loss']:.2f} |"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
