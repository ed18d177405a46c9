"""Do curriculum learning and data augmentation help here? Time to a fixed validation loss.

    flock /tmp/gptoss-cpu.lock .venv/bin/python bench/bench_curriculum.py [--seeds 1 2 3] [--steps 500]

Tiny Shakespeare with a 4096-id BPE tokenizer, a 1.3M-parameter rotary GPT: the recipe
configs/shakespeare_bpe.toml with every option off, trained by gptoss.trainer exactly as
`gptoss train` runs it. Each condition turns on one option of
gptoss.sampler against the baseline (random window offsets, nothing else) or, for `aligned`,
turns the random offsets off. Every run has the same steps, schedule and tokens per update (during
a length warmup, give or take one window); conditions are interleaved seed by seed so that a change
in the machine's load touches all of them alike. Each seed also draws its own validation subset
(the same for every condition of that seed); the table compares means over seeds, with the spread
of each condition's runs.

Time is the trainer's training time (the sum of its update times, batch building and BPE-dropout
included; evaluations excluded), read from metrics.csv; the time to the target is interpolated
linearly between the two evaluations around it. The table gives mean and spread over seeds; the
plot (docs/img/curriculum.png) the validation loss of every run against time.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gptoss.train.config import read_config_file  # noqa: E402
from gptoss.train import Trainer, TrainConfig
from gptoss.train.metrics import METRICS_FILE  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "shakespeare_bpe.toml"
OFF = dict(random_offsets=True, bpe_dropout=0.0, seq_len_warmup_steps=0, difficulty_warmup_steps=0)
# the baseline: the recipe with every option off (the recipe itself keeps what helped), one
# checkpoint at the end, no progress bars
BASE = read_config_file(RECIPE) | OFF | dict(checkpoint_every=0, keep_last=1, progress=False, tensorboard=False)


def conditions(steps: int) -> dict[str, dict]:
    """{name: TrainConfig changes}: the baseline and one option each (warmups over a quarter of the run)."""
    quarter = steps // 4
    return {
        "baseline": {},
        "aligned": {"random_offsets": False},
        "bpe_dropout": {"bpe_dropout": 0.1},
        "seq_len_warmup": {"seq_len_warmup_steps": quarter, "seq_len_start": 16},
        "difficulty": {"difficulty_warmup_steps": quarter, "difficulty_start_fraction": 0.25},
    }


def run(name: str, changes: dict, seed: int, args) -> list[tuple[float, float, int, int]]:
    """Train one run; returns its evaluations as (training time s, val loss, step, tokens seen)."""
    run_dir = args.out / f"{name}-seed{seed}"
    config = TrainConfig.from_dict(BASE | changes | dict(run_dir=str(run_dir), seed=seed, max_steps=args.steps,
                                                         eval_every=args.eval_every, max_chars=args.max_chars))  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)  # the bench's own scratch run: start afresh
    summary = Trainer(config).fit()
    with open(run_dir / METRICS_FILE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    print(f"  {name:15s} seed {seed}: best val {summary['best_val_loss']:.4f}, {summary['train_time_s']:.1f} s, "
          f"{summary['tokens_per_s']:,.0f} tokens/s", flush=True)  # fmt: skip
    return [(float(r["elapsed_s"]), float(r["val_loss"]), int(r["step"]), int(r["tokens"])) for r in rows]


def time_to(target: float, evals: list[tuple[float, float, int, int]]) -> tuple[float, float, float] | None:
    """(time, step, tokens) at which the val loss first reaches `target`, interpolated between
    evaluations; None if never."""
    previous = (0.0, float("inf"), 0, 0)
    for current in evals:
        if current[1] <= target:
            share = 1.0 if previous[1] == float("inf") else (previous[1] - target) / (previous[1] - current[1])
            return tuple(p + share * (c - p) for i, (p, c) in enumerate(zip(previous, current)) if i != 1)
        previous = current
    return None


def mean_spread(values: list[float], digits: int = 1) -> str:
    """'mean ± sample standard deviation' (just the value for one)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=500, help="updates per run (default 500)")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--target", type=float, default=4.8, help="validation loss to reach (default 4.8)")
    parser.add_argument("--conditions", nargs="+", help="a subset of the conditions (default: all)")
    parser.add_argument("--max-chars", type=int, default=0,
                        help="train on the first N characters only (more epochs in the same updates); 0: all")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_curriculum"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/curriculum.png"))
    parser.add_argument("--reuse", action="store_true", help="tabulate and plot --out's results.json again, without training")
    args = parser.parse_args()
    chosen = {n: c for n, c in conditions(args.steps).items() if not args.conditions or n in args.conditions}

    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}")
    results_file = args.out / "results.json"
    if args.reuse:
        results = {name: runs for name, runs in json.loads(results_file.read_text()).items() if name in chosen}
    else:
        results = {name: {} for name in chosen}
        for seed in args.seeds:
            for name, changes in chosen.items():
                results[name][seed] = run(name, changes, seed, args)
        results_file.write_text(json.dumps(results, indent=1))

    text = f"the first {args.max_chars:,} characters of Tiny Shakespeare" if args.max_chars else "Tiny Shakespeare"
    print(f"\n{text}, bpe 4096, {args.steps} updates x {BASE['batch_size']} x {BASE['seq_len']} tokens, "
          f"seeds {args.seeds}; time to val loss {args.target}\n")  # fmt: skip
    print("| condition | reached | time to target (s) | vs baseline | updates to target | tokens to target (K) | best val loss | final val loss | training time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_time = None
    for name, runs in results.items():
        reached = [time_to(args.target, evals) for evals in runs.values()]
        times = [r[0] for r in reached if r is not None]
        steps = [r[1] for r in reached if r is not None]
        tokens = [r[2] / 1e3 for r in reached if r is not None]
        best = [min(e[1] for e in evals) for evals in runs.values()]
        final = [evals[-1][1] for evals in runs.values()]
        total = [evals[-1][0] for evals in runs.values()]
        if name == "baseline" and len(times) == len(runs):
            base_time = statistics.mean(times)
        ratio = f"{statistics.mean(times) / base_time:.2f}x" if times and base_time and len(times) == len(runs) else "—"
        print(f"| {name} | {len(times)}/{len(runs)} | {mean_spread(times) if times else '—'} | {ratio} | "
              f"{mean_spread(steps, 0) if steps else '—'} | {mean_spread(tokens, 0) if tokens else '—'} | {mean_spread(best, 3)} | {mean_spread(final, 3)} | {mean_spread(total)} |")  # fmt: skip

    figure, axes = plt.subplots(figsize=(8, 5))
    for index, (name, runs) in enumerate(results.items()):
        color = f"C{index}"
        for i, evals in enumerate(runs.values()):
            axes.plot([e[0] for e in evals], [e[1] for e in evals], color=color, alpha=0.8, lw=1,
                      label=name if i == 0 else None)  # fmt: skip
    axes.axhline(args.target, color="gray", ls="--", lw=0.8)
    axes.set(xlabel="training time (s)", ylabel="validation loss (nats/token)", ylim=(args.target - 0.4, args.target + 1.2),
             title=f"{text}, BPE 4096: {len(args.seeds)} seeds each")  # fmt: skip
    axes.legend()
    axes.grid(alpha=0.3)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110, bbox_inches="tight")
    print(f"\nplot: {args.plot}; runs and results.json: {args.out}")


if __name__ == "__main__":
    main()
