"""Where one GPT-2 small decoding step's time goes (batch 1, fp32, random weights, 2 threads).

    flock /tmp/gptoss-cpu.lock .venv/bin/python bench/bench_decode_step.py [--rows 20]

Each row measures, one right after the other (so all see the same load from the machine's
neighbours), the best of 5 of:

- step: ms per token of `generate` after prepare_for_inference (t(65 tokens) - t(1)) / 64;
- rest: the same with every InferenceLinear's matrix-vector product replaced by a preallocated
  zero output, i.e. everything but the weight reads: attention over the cache, norms, GELU, Python;
- linears: the 49 InferenceLinear layers called one after the other on a random vector, as the
  step calls them (Python included), and bmm: the same products as bare torch.bmm/baddbmm calls;
- sum: torch.sum over a copy of the same weights, the machine's read speed at that moment.

GB/s = 494 MB of linear weights / time. The machine is shared: rows differ with the load, and a
quiet moment shows in the sum column.
"""

from __future__ import annotations

import argparse
import time

import torch

from gptoss.config import GPTConfig
from gptoss.generation import InferenceLinear, generate, prepare_for_inference
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

    def bare_bmm():
        for layer in linears:
            blocks, _, size = layer.row_blocks.shape
            vector = vectors[size].as_strided((blocks, size, 1), (0, 1, size))
            if layer.bias_blocks is None:
                torch.bmm(layer.row_blocks, vector)
            else:
                torch.baddbmm(layer.bias_blocks, layer.row_blocks, vector)

    zeros = {id(layer): torch.zeros(layer.out_features) for layer in linears}
    real_product = InferenceLinear.matrix_vector

    def no_product(layer, x):
        return zeros[id(layer)].view(*x.shape[:-1], layer.out_features)

    print(f"GPT-2 small, batch 1, fp32, {torch.get_num_threads()} threads; {len(linears)} linear weights, {nbytes / 1e6:.0f} MB\n")
    print("| step ms | rest ms | linears ms (GB/s) | bmm ms (GB/s) | sum ms (GB/s) | step - rest ms |")
    print("|---|---|---|---|---|---|")
    rate = lambda seconds: f"{seconds * 1e3:.2f} ({nbytes / seconds / 1e9:.1f})"  # noqa: E731
    with torch.inference_mode():
        generate(model, prompt, 4, temperature=0)  # warm-up (packing, allocations)
        for _ in range(args.rows):
            step = step_ms()
            InferenceLinear.matrix_vector = no_product
            try:
                rest = step_ms()
            finally:
                InferenceLinear.matrix_vector = real_product
            linear, bmm, summed = best_of(call_linears), best_of(bare_bmm), best_of(weights.sum)
            print(f"| {step * 1e3:.2f} | {rest * 1e3:.2f} | {rate(linear)} | {rate(bmm)} | {rate(summed)} | {(step - rest) * 1e3:.2f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
