"""One gpt-oss-20b MoE layer's experts by the MXFP4 kernel, in every build this CPU can run.

    flock /tmp/gptoss-bench.lock .venv/bin/python bench/bench_mxfp4.py [--tokens 1 64] [--threads 2]

The layer: 32 experts of d_model = d_ff = 2880 in the checkpoint's MXFP4 layout (random bytes,
scales around 2^-5), each token routed to 4 of them (random, distinct), bf16 activations as in
decoding. Builds: "native" (-march=native: AVX512_BF16, else AVX2, else the portable loop),
"avx2" (-mno-avx512f, where the CPU has AVX2 and FMA) and "portable" (-mno-avx2, a scalar loop).
Time is the best of 5 calls (machine.best_seconds); GB/s counts the packed bytes of the distinct
experts the tokens use (blocks and scales, gate_up and down), read once per call; the last
column is that against torch.sum's read bandwidth measured in the same run (machine.read_bandwidth).
"""

from __future__ import annotations

import argparse
import platform

import torch

from gptoss.checkpoints.mxfp4 import PackedExperts
from gptoss.config import GPTConfig
from gptoss.inference import mxfp4_kernel
from machine import best_seconds, cpu_flags, describe, read_bandwidth

BUILDS = mxfp4_kernel.BUILD_FLAGS


def random_layer(generator: torch.Generator) -> PackedExperts:
    """One MoE layer of gpt-oss-20b's widths, its experts packed, bf16 biases."""
    config = GPTConfig.preset("gpt-oss-20b")
    with torch.device("meta"):
        layer = PackedExperts(config)
    state = {}
    for name, tensor in layer.state_dict().items():
        if tensor.dtype == torch.uint8:
            low, high = (0, 256) if name.endswith("blocks") else (120, 124)
            state[name] = torch.randint(low, high, tensor.shape, dtype=torch.uint8, generator=generator)
        else:
            state[name] = (0.01 * torch.randn(tensor.shape, generator=generator)).to(torch.bfloat16)
    layer.load_state_dict(state, assign=True)
    return layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    layer = random_layer(g)
    num_experts, k = layer.gate_up_proj_bias.shape[0], 4
    per_expert = sum(getattr(layer, f"{n}_{part}")[0].numel() for n in layer.PACKED for part in ("blocks", "scales"))
    bandwidth = read_bandwidth()
    builds = [b for b in BUILDS if b == "native" or platform.machine().lower() in ("x86_64", "amd64")]
    if not {"avx2", "fma"} <= cpu_flags():
        builds = [b for b in builds if b != "avx2"]
    print(f"{describe()}; {args.threads} threads; torch.sum reads {bandwidth / 1e9:.1f} GB/s\n")
    print("| build | path | tokens | ms | experts read | GB/s | of torch.sum |")
    print("|---|---|---|---|---|---|---|")
    for name in builds:
        lib = mxfp4_kernel.library(BUILDS[name])
        if lib is None:
            raise SystemExit(f"the {name} build of the MXFP4 kernel failed (see the warning above)")
        for n in args.tokens:
            top = torch.stack([torch.randperm(num_experts, generator=g)[:k] for _ in range(n)])
            weights = torch.softmax(torch.randn(n, k, generator=g), -1)
            x = torch.randn(n, layer.gate_up_proj_bias.shape[1] // 2, generator=g).to(torch.bfloat16)
            seconds = best_seconds(lambda: mxfp4_kernel.experts(layer, x, top, weights, lib=lib))
            used = top.unique().numel()
            gbs = used * per_expert / seconds / 1e9
            print(f"| {name} | {mxfp4_kernel.instructions(lib)} | {n} | {seconds * 1e3:.2f} | {used} | {gbs:.1f} | "
                  f"{gbs * 1e9 / bandwidth:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()
