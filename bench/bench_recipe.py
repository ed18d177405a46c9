"""A training recipe over several seeds, AdamW against Muon: full-split validation loss, training
time, and the training time each needs to reach a fixed validation loss.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_recipe.py --config configs/shakespeare_char.toml \
        [--seeds 3] [--optimizers adamw muon] [--target 1.70] [--set key=value ...] [--corpus FILE]

Each (optimizer, seed) is one run of the trainer (`gptoss train --config ... --set seed=S --set
optim.optimizer=O`, in a scratch run folder under --out), one after the other. After it:
- full val: the mean cross-entropy over every non-overlapping window of the whole validation split
  (gptoss.train.simple.evaluate; the trainer's own val_loss is on its fixed subset);
- train s: the time spent in training steps (evaluations and checkpoints excluded), the trainer's;
- to target: the training time at the first evaluation whose (subset) val_loss is <= --target
  (so eval_every sets its resolution), "-" when never reached.
--corpus runs the same recipe unchanged on another text (e.g. an English text of similar size).
The machine's load changes the times, not the losses: compare times from one invocation only.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
from pathlib import Path

import torch

from gptoss.train import Trainer, TrainConfig
from gptoss.train.config import apply_override, read_config_file
from gptoss.train.simple import evaluate
from machine import describe


def run(config: TrainConfig, target: float) -> dict:
    """Train one run; its full-split val loss, training time and time to the target loss."""
    shutil.rmtree(config.run_dir, ignore_errors=True)  # the bench's own scratch run: start afresh
    load = os.getloadavg()[0]
    trainer = Trainer(config)
    summary = trainer.fit()
    with torch.no_grad():
        full_val = evaluate(trainer.raw_model, trainer.data.val, config.batch.seq_len, 64, trainer.device)
    with open(Path(config.run_dir) / "metrics.csv", newline="", encoding="utf-8") as f:
        evals = [r for r in csv.DictReader(f) if r["val_loss"]]
    reached = [float(r["elapsed_s"]) for r in evals if float(r["val_loss"]) <= target]
    return {"full_val": full_val, "subset_val": float(evals[-1]["val_loss"]), "train_s": trainer.train_time,
            "to_target": reached[0] if reached else None, "load": load, "steps": summary["steps"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the recipe's TOML file")
    parser.add_argument("--seeds", type=int, default=3, help="runs per optimizer, seeds 1..N (default: 3)")
    parser.add_argument("--optimizers", nargs="+", default=["adamw", "muon"], choices=["adamw", "muon"])
    parser.add_argument("--target", type=float, default=1.70, help="the fixed validation loss for time-to-target (default: 1.70)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (as gptoss train)")
    parser.add_argument("--corpus", help="train and validate on this text instead of the recipe's corpus")
    parser.add_argument("--out", default="runs/bench_recipe", help="scratch run folders (default: runs/bench_recipe)")
    args = parser.parse_args()
    values = read_config_file(args.config)
    for override in args.set:
        values = apply_override(values, override)
    if args.corpus:
        values = apply_override(values, f"data.corpus={args.corpus!r}")
        values = apply_override(values, f"data.data_dir={str(Path(args.out) / 'data')!r}")
    base = TrainConfig.from_dict(values).replace(progress=False, tensorboard=False)

    print(describe())
    print(f"recipe {args.config} {' '.join(args.set)}{f' on {args.corpus}' if args.corpus else ''}; target val loss {args.target}\n")
    print("| optimizer | seed | full val loss | subset val loss | train s | s to target | load at start |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for optimizer in args.optimizers:
        for seed in range(1, args.seeds + 1):
            config = base.replace(seed=seed, optimizer=optimizer, run_dir=str(Path(args.out) / f"{optimizer}-{seed}"))
            r = run(config, args.target)
            results.setdefault(optimizer, []).append(r)
            to_target = f"{r['to_target']:.1f}" if r["to_target"] is not None else "-"
            print(f"| {optimizer} | {seed} | {r['full_val']:.4f} | {r['subset_val']:.4f} | {r['train_s']:.1f} | {to_target} | "
                  f"{r['load']:.1f} |", flush=True)  # fmt: skip
    print("\n| optimizer | mean full val loss | mean train s | mean s to target (runs reaching it) |")
    print("|---|---|---|---|")
    for optimizer, rs in results.items():
        reached = [r["to_target"] for r in rs if r["to_target"] is not None]
        to_target = f"{statistics.mean(reached):.1f} ({len(reached)}/{len(rs)})" if reached else f"- (0/{len(rs)})"
        print(f"| {optimizer} | {statistics.mean(r['full_val'] for r in rs):.4f} | "
              f"{statistics.mean(r['train_s'] for r in rs):.1f} | {to_target} |")


if __name__ == "__main__":
    main()
