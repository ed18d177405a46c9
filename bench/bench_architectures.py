"""GPT-2 style `tiny` vs `gpt-oss-tiny` trained by the trainer on Tiny Shakespeare, same everything else.

    python bench/bench_architectures.py [--steps 600] [--batch-size 16] [--seq-len 256] [--plot out/...png]

Both models see the same character-level data in the same order (same seed), with the same batch,
sequence length, learning-rate schedule and optimizer: only the [model] preset differs. Each is
trained with `gptoss.train.Trainer` (fit(): AdamW, warmup + cosine, clipping, periodic
validation on a fixed subset, metrics.csv) in its own run folder under --out. Prints a Markdown
table of the loss at intervals and a summary (final validation loss, parameters, tokens/s), and
saves both loss curves in one PNG. Train losses are cross-entropy only (the trainer logs the MoE
model's load-balancing loss apart, as aux_loss).

tokens/s is the trainer's: tokens of the updates divided by the time spent in them (evaluation and
checkpoints excluded). The two runs are sequential, on a possibly shared machine: the load average
at the start of each is printed with it.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
from pathlib import Path

import torch

from gptoss import GPT
from gptoss.train import Trainer, TrainConfig

PRESETS = ("tiny", "gpt-oss-tiny")


def train(preset: str, args) -> tuple[dict, list[dict], float, tuple[int, int]]:
    """Train one preset; returns the trainer's summary, its metrics.csv rows, the load average at
    the start and the parameter counts (all, active per token)."""
    config = TrainConfig.from_dict(dict(
        run_dir=str(Path(args.out) / preset), corpus="shakespeare", tokenizer="char",
        data_dir=str(Path(args.out) / "data"), model={"preset": preset}, seq_len=args.seq_len,
        batch_size=args.batch_size, max_steps=args.steps, learning_rate=args.learning_rate, min_lr=args.learning_rate / 10,
        warmup_steps=args.warmup_steps, schedule="cosine", eval_every=args.eval_every, eval_sequences=args.eval_sequences,
        checkpoint_every=0, keep_last=1, log_every=args.eval_every, progress=False, tensorboard=False, device="cpu",
        seed=args.seed,
    ))  # fmt: skip
    shutil.rmtree(config.run_dir, ignore_errors=True)  # the bench's own scratch run: start afresh
    load = os.getloadavg()[0]
    trainer = Trainer(config)
    summary = trainer.fit()
    with open(Path(config.run_dir) / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return summary, rows, load, parameter_counts(trainer.raw_model)


def parameter_counts(model: GPT) -> tuple[int, int]:
    """(all parameters, those one token uses: only k of the E experts of each MoE layer)."""
    config, total = model.config, model.num_parameters()
    if config.mlp != "moe":
        return total, total
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    return total, round(total - experts * (1 - config.experts_per_token / config.num_experts))


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    """Train and validation loss of every run against step, in one PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for (name, rows), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        for column, style, label in (("train_loss", "-", "train"), ("val_loss", "o--", "validation")):
            points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
            axes.plot(*zip(*points), style, color=color, markersize=3, linewidth=1, label=f"{name} {label}")
    axes.set(xlabel="step", ylabel="loss (nats/character)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp)
    os.replace(tmp, path)


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, PyTorch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=50, help="also the interval of the loss table")
    parser.add_argument("--eval-sequences", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="out/bench_architectures", help="folder of the two runs")
    parser.add_argument("--plot", default=None, help="loss-curve PNG (default: OUT/loss_curves.png)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {machine()}")
    print(
        f"run: Tiny Shakespeare, char tokenizer, {args.steps} updates of {args.batch_size} x {args.seq_len} tokens, "
        f"AdamW, lr {args.learning_rate:g} (warmup {args.warmup_steps}, cosine to {args.learning_rate / 10:g}), fp32\n"
    )
    results = {preset: train(preset, args) for preset in PRESETS}

    rows = {preset: {int(r["step"]): r for r in result[1]} for preset, result in results.items()}
    print("Loss (nats/character): train = mean cross-entropy of the updates since the previous row; val = on the fixed")
    print("validation subset.\n")
    print("| step | " + " | ".join(f"{p} train | {p} val" for p in PRESETS) + " |")
    print("|---:|" + "---:|---:|" * len(PRESETS))
    for step in sorted(set.intersection(*(set(r) for r in rows.values()))):
        cells = [f"{float(rows[p][step][c]):.3f}" if rows[p][step].get(c) else "" for p in PRESETS for c in ("train_loss", "val_loss")]
        print(f"| {step} | " + " | ".join(cells) + " |")

    print(
        "\n| model | parameters | active per token | final val loss | best val loss | tokens/s (train) "
        "| load avg at start | train time s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for preset, (summary, _, load, (total, active)) in results.items():
        print(
            f"| {preset} | {total / 1e6:.2f}M | {active / 1e6:.2f}M | {summary['last_eval']['val_loss']:.4f} | "
            f"{summary['best_val_loss']:.4f} | {summary['tokens_per_s']:,.0f} | {load:.1f} | {summary['train_time_s']:.0f} |"
        )
    speeds = [results[p][0]["tokens_per_s"] for p in PRESETS]
    print(f"\ngpt-oss-tiny trains at {speeds[1] / speeds[0]:.2f}x the tokens/s of tiny")

    path = Path(args.plot) if args.plot else Path(args.out) / "loss_curves.png"
    plot({p: r[1] for p, r in results.items()}, path, "Tiny Shakespeare (char): tiny vs gpt-oss-tiny")
    print(f"loss curves: {path}")


if __name__ == "__main__":
    main()
