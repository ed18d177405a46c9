"""Where a decoding step's time goes, for any model: its weight kernels against everything else.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_decode_profile.py \\
        [--checkpoint DIR | --preset gpt2-small] [--weights bf16] [--steps 16] [--ops 15]

The model (a checkpoint, e.g. bench_vs_llamacpp's random gpt-oss-20b, or a preset with random
weights) goes through prepare_for_inference, as `gptoss generate` does; a prompt of --prompt-tokens
random ids fills its KV cache; then --steps greedy steps at batch 1, timed three times (the best
kept). Every call into a C kernel (cpu_kernel's linear kernels, the MXFP4 experts kernel) is timed
around it, Python wrapper included: "kernels" is their sum per step, "rest" the step less that (the
attention over the cache, norms, RoPE, routing, the Python between). Then torch.profiler over the
same steps lists the PyTorch operators of the rest, by self time. The read bandwidth is measured
in the same run (bench/machine.py), and the kernels' bytes per step against it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, read_bandwidth  # noqa: E402

from gptoss import GPT, GPTConfig  # noqa: E402
from gptoss.inference import cpu_kernel, mxfp4_kernel, prepare_for_inference  # noqa: E402

KERNELS = [(cpu_kernel, "linear"), (cpu_kernel, "linear_bf16"), (cpu_kernel, "linear_int8"), (mxfp4_kernel, "experts")]


def timed_kernels(seconds: dict) -> contextlib.AbstractContextManager:
    """Within it, every kernel call of KERNELS adds its time to seconds[name]."""
    stack = contextlib.ExitStack()
    for module, name in KERNELS:
        original = getattr(module, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_name] += time.perf_counter() - started

        setattr(module, name, timed)
        stack.callback(setattr, module, name, original)
    return stack


def decode(model, prompt: torch.Tensor, steps: int, during=contextlib.nullcontext) -> float:
    """Seconds for `steps` greedy steps after prefilling `prompt` into a fresh cache (not timed)."""
    cache = model.new_cache(1, capacity=prompt.shape[1] + steps + 1)
    with torch.inference_mode():
        logits = model(prompt, cache=cache, logits_to_keep=1)[:, -1]
        with during():
            started = time.perf_counter()
            for _ in range(steps):
                logits = model(logits.argmax(-1, keepdim=True), cache=cache, logits_to_keep=1)[:, -1]
            return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="a checkpoint directory (GPT.from_pretrained)")
    source.add_argument("--preset", default="gpt2-small", help="a preset with random weights (default gpt2-small)")
    parser.add_argument("--weights", default="auto", help="prepare_for_inference's weights= (auto, fp32, bf16, int8)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--ops", type=int, default=15, help="operators listed from the profile")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT.from_pretrained(args.checkpoint, progress=False) if args.checkpoint else GPT(GPTConfig.preset(args.preset, dropout=0.0))
    model = prepare_for_inference(model, weights=args.weights)
    name = args.checkpoint.name if args.checkpoint else args.preset
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens))
    decode(model, prompt, 4)  # warm-up: packing, page faults, allocations
    bandwidth = read_bandwidth()

    best_step, best_kernels = float("inf"), {}
    for _ in range(3):
        seconds = collections.defaultdict(float)
        step = decode(model, prompt, args.steps, during=lambda: timed_kernels(seconds)) / args.steps  # noqa: B023
        if step < best_step:
            best_step, best_kernels = step, {k: v / args.steps for k, v in seconds.items()}
    kernels = sum(best_kernels.values())

    print(f"{describe()}; read bandwidth {bandwidth / 1e9:.1f} GB/s; {torch.get_num_threads()} threads")
    print(f"{name}, weights={args.weights}, batch 1, {args.prompt_tokens}-token prompt, {args.steps} steps\n")
    print("| part | ms per step | of the step |")
    print("|---|---|---|")
    print(f"| step | {best_step * 1e3:.2f} | 100% |")
    for kernel, spent in sorted(best_kernels.items(), key=lambda item: -item[1]):
        print(f"| kernel {kernel} | {spent * 1e3:.2f} | {spent / best_step:.0%} |")
    print(f"| rest | {(best_step - kernels) * 1e3:.2f} | {(best_step - kernels) / best_step:.0%} |\n")

    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    decode(model, prompt, args.steps, during=lambda: profiler)
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    print("| operator (the rest, profiled) | calls per step | self ms per step |")
    print("|---|---|---|")
    for event in events[: args.ops]:
        print(f"| {event.key} | {event.count / args.steps:.0f} | {event.self_cpu_time_total / 1e3 / args.steps:.2f} |")


if __name__ == "__main__":
    main()
