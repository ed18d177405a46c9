"""`python train.py`: the seed's training demo on real text, offline by default.

Trains a small GPT on a corpus (default: the Python standard library's own source, character
level), printing loss and perplexity each epoch, saves the model with its tokenizer, and ends by
printing a generated sample.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import torch

from gptoss.checkpoints import save_model
from gptoss.config import GPTConfig
from gptoss.data import build_tokenizer, load_corpus, split_train_val
from gptoss.model import GPT
from gptoss.train import train_model


def unigram_entropy(tokens: list[int]) -> float:
    """Entropy (nats/token) of the token frequencies: the loss of a model that ignores context."""
    counts = Counter(tokens)
    n = len(tokens)
    return -sum(c / n * math.log(c / n) for c in counts.values())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="FILE", help="train on this UTF-8 text file instead of --dataset")
    source.add_argument("--dataset", default="pystdlib", help="corpus name (pystdlib, shakespeare) or path (default: pystdlib)")
    parser.add_argument("--tokenizer", default="char", help="char, bpe, gpt2 or o200k_harmony (default: char)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size of a trained bpe tokenizer")
    parser.add_argument("--max-chars", type=int, default=1_000_000, help="use only the first N characters of the corpus; 0: all (default: 1,000,000)")
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--sample-tokens", type=int, default=300, help="length of the sample printed at the end")
    parser.add_argument("--out", default="out/demo", help="where the model and its tokenizer are saved")
    args = parser.parse_args(argv)
    for name in ("max_chars", "sample_tokens"):  # checked now, not after the training
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the demo (see the module doc)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    text = load_corpus(args.data or args.dataset, max_chars=args.max_chars or None)
    tokenizer = build_tokenizer(args.tokenizer, text=text, vocab_size=args.vocab_size)
    tokens = tokenizer.encode(text)
    train_tokens, val_tokens = split_train_val(tokens, val_fraction=0.1)
    print(
        f"corpus {args.data or args.dataset}: {len(text):,} characters -> {len(tokens):,} tokens "
        f"({args.tokenizer}, vocabulary {tokenizer.vocab_size}); train {len(train_tokens):,}, val {len(val_tokens):,}"
    )
    print(f"unigram entropy of the training tokens (a context-blind model's loss on them): {unigram_entropy(list(train_tokens)):.4f}")

    prompt = text[:1]  # the sample starts from the corpus's first character (1-3 tokens with BPE)
    # learned positions: a table only as long as the training windows, every row of it trained
    # (longer samples slide past it); rotary: no table, room for the whole sample
    context = args.seq_len
    if GPTConfig.preset(args.preset).position == "rope":
        context = max(context, len(tokenizer.encode(prompt)) + args.sample_tokens)
    config = GPTConfig.preset(args.preset, vocab_size=tokenizer.vocab_size, max_seq_len=context, dropout=0.0)
    model = GPT(config)
    print(f"model {args.preset}: {model.num_parameters():,} parameters")
    started = time.perf_counter()
    train_model(
        model, train_tokens, val_tokens, seq_len=args.seq_len, batch_size=args.batch_size,
        num_epochs=args.epochs, learning_rate=args.lr, seed=args.seed,
    )
    print(f"trained in {time.perf_counter() - started:.0f} s")
    save_model(model, args.out, tokenizer)
    print(f"saved model and tokenizer to {args.out}")

    print("--- sample ---")
    print(sample(model, tokenizer, prompt, args.sample_tokens, seed=args.seed))


def sample(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> str:
    """Text sampled from `model` after `prompt` (temperature 0.8, top-k 40); the same seed gives
    the same text."""
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = model.generate(ids, max_new_tokens, temperature=0.8, top_k=40, seed=seed)  # on the model's device
    return tokenizer.decode(out[0].tolist())
