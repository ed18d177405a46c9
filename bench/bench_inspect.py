"""Does recording cost anything when it is off? Forward, decode and training-step speed of the model
code before gptoss.inspection (gptoss/model.py at a git revision) and now, with recording off
(after a `with record(model)` block has come and gone), timed in the same run.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_inspect.py [--before REV] [--rounds 7]

The two models have the same weights. Each round times, one right after the other and in
alternating order (so both see the same load from the machine's neighbours): a forward pass of a
256-token prompt (no grad), 32 decoding steps with a KV cache after a 64-token prompt, and one
training step (forward + backward of 8 x 256 tokens). The table gives the median of the rounds and
the ratio now / before (1.00: no cost), and, for scale, the same forward pass with recording on.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptoss.config import GPTConfig
from gptoss.inspection import record
from gptoss.model import GPT

REPO = Path(__file__).resolve().parent.parent
# the last commit before gptoss.inspection changed gptoss/model.py
BEFORE = "c3e005c"


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def model_module_at(revision: str):
    """gptoss/model.py as it was at `revision`, imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:gptoss/model.py"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "model_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("model_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def workloads(model, vocab_size: int) -> dict:
    """The timed things, as functions of nothing."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab_size, (1, 256), generator=generator)
    batch = torch.randint(0, vocab_size, (8, 257), generator=generator)

    @torch.no_grad()
    def forward():
        model.eval()
        model(prompt)

    @torch.no_grad()
    def decode():
        model.eval()
        cache = model.new_cache(1, 128)
        model(prompt[:, :64], cache=cache, logits_to_keep=1)
        for t in range(64, 96):
            model(prompt[:, t : t + 1], cache=cache, logits_to_keep=1)

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()

    return {"forward 256 tokens": forward, "decode 32 steps": decode, "train step 8x256": train_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"git revision of the model code to compare with (default: {BEFORE[:7]})")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--presets", nargs="+", default=["tiny", "gpt-oss-tiny"])
    args = parser.parse_args()

    before_module = model_module_at(args.before)
    if hasattr(before_module.Attention, "attention_weights"):
        print(f"note: {args.before}'s model.py already has attention_weights: it is not the code before", file=sys.stderr)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; before = {args.before}")
    print(f"median of {args.rounds} rounds, seconds\n")
    print("| model | workload | before | now, recording off | now / before | now, recording on |")
    print("|---|---|---:|---:|---:|---:|")
    for preset in args.presets:
        config = GPTConfig.preset(preset, vocab_size=4096, max_seq_len=256)
        torch.manual_seed(0)
        now = GPT(config)
        before = before_module.GPT(config)
        before.load_state_dict(now.state_dict())
        with record(now), torch.no_grad():  # on, then off again: what "off" means
            now.eval()(torch.zeros(1, 8, dtype=torch.long))
        timed = {"before": workloads(before, config.vocab_size), "now": workloads(now, config.vocab_size)}
        times = {(who, name): [] for who in timed for name in timed[who]}
        recorded = []
        for round_ in range(args.rounds):
            order = ["before", "now"] if round_ % 2 == 0 else ["now", "before"]
            for name in timed["now"]:
                for who in order:
                    times[who, name].append(seconds(timed[who][name]))
            with record(now):
                recorded.append(seconds(timed["now"]["forward 256 tokens"]))
        for name in timed["now"]:
            b, n = statistics.median(times["before", name]), statistics.median(times["now", name])
            on = f"{statistics.median(recorded):.4f}" if name.startswith("forward") else ""
            print(f"| {preset} | {name} | {b:.4f} | {n:.4f} | {n / b:.3f} | {on} |")


if __name__ == "__main__":
    main()
