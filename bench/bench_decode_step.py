"""Where one GPT-2 small decoding step's time goes (batch 1, fp32, random weights, 2 threads).

    flock /tmp/gptoss-cpu.lock .venv/bin/python bench/bench_decode_step.py [--rows 20]

Each row measures, one right after the other (so all see the same load from the machine's
neighbours), the best of 5 of:

- step: ms per token of `generate` after prepare_for_inference (t(65 tokens) - t(1)) / 64;
- rest: the same with every InferenceLinear's product (the C kernel's, cpu_kernel.linear) replaced
  by a preallocated zero output, i.e. everything but the weight reads: attention over the cache,
  norms, GELU, Python;
- linears: the 49 InferenceLinear layers called one after the other on a random vector, as the
  step calls them (Python included), and kernel: the same products as bare cpu_kernel.linear calls;
- sum: torch.sum over a copy of the same weights, the machine's read speed at that moment.

GB/s = 494 MB of linear weights / time. The machine is shared: rows differ with the load, and a
quiet moment shows in the sum column.
"""

from __future__ import annotations

import argparse
import time

import torch

from gptoss.inference import cpu_kernel
from gptoss.config import GPTConfig
from gptoss.inference import InferenceLinear, generate, prepare_for_inference
from gptoss.model import GPT


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()

    if cpu_kernel.library() is None:
        raise SystemExit("this bench times the C kernel, which could not be built here (see the warning)")
    torch.manual_seed(0)
    model = prepare_for_inference(GPT(GPTConfig.preset("gpt2-small", dropout=0.0)))
    prompt = torch.randint(0, model.config.vocab_size, (1, 128))
    linears = [m for m in model.modules() if isinstance(m, InferenceLinear)]
    weights = torch.cat([layer.weight.detach().flatten() for layer in linears])
    nbytes = weights.numel() * weights.element_size()
    vectors = {layer.in_features: torch.randn(1, 1, layer.in_features) for layer in linears}

    def step_ms() -> float:
        one = best_of(lambda: generate(model, prompt, 1, temperature=0), 3)
        many = best_of(lambda: generate(model, prompt, 65, temperature=0), 3)
        return (many - one) / 64

    def call_linears():
        for layer in linears:
            layer(vectors[layer.in_features])

    def bare_kernel():
        for layer in linears:
            cpu_kernel.linear(vectors[layer.in_features], layer.tiles, layer.bias, layer.out_features)

    zeros = {layer.out_features: torch.zeros(1, 1, layer.out_features) for layer in linears}
    real_product = cpu_kernel.linear

    def no_product(x, tiles, bias, out_features):  # decoding steps only; the prompt's prefill as usual
        return zeros[out_features] if x.numel() == x.shape[-1] else real_product(x, tiles, bias, out_features)

    print(f"GPT-2 small, batch 1, fp32, {torch.get_num_threads()} threads; {len(linears)} linear weights, {nbytes / 1e6:.0f} MB\n")
    print("| step ms | rest ms | linears ms (GB/s) | kernel ms (GB/s) | sum ms (GB/s) | step - rest ms |")
    print("|---|---|---|---|---|---|")
    rate = lambda seconds: f"{seconds * 1e3:.2f} ({nbytes / seconds / 1e9:.1f})"  # noqa: E731
    with torch.inference_mode():
        generate(model, prompt, 4, temperature=0)  # warm-up (packing, allocations)
        for _ in range(args.rows):
            step = step_ms()
            cpu_kernel.linear = no_product
            try:
                rest = step_ms()
            finally:
                cpu_kernel.linear = real_product
            linear, kernel, summed = best_of(call_linears), best_of(bare_kernel), best_of(weights.sum)
            print(f"| {step * 1e3:.2f} | {rest * 1e3:.2f} | {rate(linear)} | {rate(kernel)} | {rate(summed)} | {(step - rest) * 1e3:.2f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
