"""Tokenizer speed and compression on real corpora: build (train or load), encode, decode.

    python bench/bench_tokenizer.py [--corpus shakespeare pystdlib] [--kinds char bpe gpt2 o200k_harmony]

Prints a Markdown table. Times are the best of --repeats runs (the machine may be shared), except
training, which runs once. Every row also checks that decode(encode(text)) gives the text back.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from gptoss.data import load_corpus
from gptoss.data.tokenizers import _tiktoken_encoding, build_tokenizer


def best_time(function, repeats: int):
    """(smallest wall time in seconds, result of the last call) over `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=["shakespeare", "pystdlib"])
    parser.add_argument("--kinds", nargs="+", default=["char", "bpe", "gpt2", "o200k_harmony"])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"machine: {machine()}\n")
    print("| corpus | tokenizer | vocab | build s | encode s | encode MB/s | tokens | chars/token | decode s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for corpus in args.corpus:
        text = load_corpus(corpus)
        megabytes = len(text.encode("utf-8")) / 1e6
        for kind in args.kinds:
            _tiktoken_encoding.cache_clear()  # time loading the files, not the in-process cache
            start = time.perf_counter()
            tokenizer = build_tokenizer(kind, text, vocab_size=args.vocab_size)
            build_s = time.perf_counter() - start
            encode_s, ids = best_time(lambda: tokenizer.encode(text), args.repeats)
            decode_s, decoded = best_time(lambda: tokenizer.decode(ids), args.repeats)
            assert decoded == text, f"{kind} did not round-trip {corpus}"
            print(
                f"| {corpus} ({megabytes:.1f} MB) | {kind} | {tokenizer.vocab_size:,} | {build_s:.2f} | "
                f"{encode_s:.2f} | {megabytes / encode_s:.1f} | {len(ids):,} | {len(text) / len(ids):.2f} | "
                f"{decode_s:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
