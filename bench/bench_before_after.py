"""Training and decoding speed of this checkout against another one (e.g. the commit before a
refactor), in the same run, alternating, through the seed's public API only (GPT, model(idx,
targets), model.generate), so the same code measures both.

    git worktree add /tmp/before HEAD~1
    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_before_after.py --before /tmp/before [--rounds 4]

Each measurement runs in a fresh process with PYTHONPATH set to one checkout; the two checkouts
alternate (the order flips every round) and the table gives the median of the rounds and the
ratio after / before (> 1: the current checkout is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# (preset, overrides, batch, seq_len) of the training steps; (preset, batch, prompt, new tokens) of decoding
TRAIN = {
    "tiny": ("tiny", {"vocab_size": 65}, 32, 64),
    "gpt-oss-tiny": ("gpt-oss-tiny", {}, 8, 128),
    "gpt2-small (4 layers)": ("gpt2-small", {"num_layers": 4}, 4, 128),
}
DECODE = {
    "gpt2-small": ("gpt2-small", 1, 64, 48),
    "gpt-oss-tiny": ("gpt-oss-tiny", 1, 64, 96),
}


def worker(kind: str, name: str, steps: int) -> float:
    """Tokens per second of one configuration, in this process (the checkout on PYTHONPATH)."""
    import torch

    from gptoss import GPT, GPTConfig

    torch.manual_seed(0)
    if kind == "train":
        preset, overrides, batch, seq_len = TRAIN[name]
        model = GPT(GPTConfig.preset(preset, **overrides)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, model.config.vocab_size, (batch, seq_len + 1))
        timings = []
        for step in range(steps + 2):  # two warm-up steps
            start = time.perf_counter()
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timings.append(time.perf_counter() - start)
        return batch * seq_len / statistics.median(timings[2:])
    preset, batch, prompt, new_tokens = DECODE[name]
    model = GPT(GPTConfig.preset(preset)).eval()
    idx = torch.randint(0, model.config.vocab_size, (batch, prompt))
    model.generate(idx, 4, temperature=0)  # warm-up
    best = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        model.generate(idx, new_tokens, temperature=0)
        best = max(best, batch * new_tokens / (time.perf_counter() - start))
    return best


def measure(tree: Path, kind: str, name: str, steps: int, threads: int) -> float:
    env = os.environ | {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    code = f"import sys; sys.path.insert(0, {str(HERE / 'bench')!r}); import bench_before_after as b; print(b.worker({kind!r}, {name!r}, {steps}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{kind} {name} in {tree} failed:\n{out.stderr}")
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (a git worktree)")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two checkouts (default: 4)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (train) or generations (decode) per process")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": HERE}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}, {args.threads} threads; before = {trees['before']}, after = {trees['after']}")
    print("| kind | config | before tokens/s | after tokens/s | after / before |\n|---|---|---|---|---|")
    results = []
    for kind, names in (("train", TRAIN), ("decode", DECODE)):
        for name in names:
            runs = {"before": [], "after": []}
            for r in range(args.rounds):
                for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    runs[label].append(measure(trees[label], kind, name, args.steps, args.threads))
            before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
            results.append({"kind": kind, "config": name, "before": before, "after": after, "runs": runs})
            print(f"| {kind} | {name} | {before:.1f} | {after:.1f} | {after / before:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
