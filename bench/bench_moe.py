"""Mixture-of-experts forward: tokens grouped by expert (gptoss) vs the dense reference and transformers.

    python bench/bench_moe.py [--tokens 1 64 1024 4096] [--d-model 512] [--d-ff 512] [--experts 32] [--top-k 4]

Four implementations of the same gpt-oss MoE block (router, top-k softmax, clamped-SwiGLU experts),
all with the same weights and checked to give the same output:
- gptoss: `gptoss.model.MixtureOfExperts`: one sort groups the (token, expert) assignments by
  expert, then each expert runs one matrix product over exactly its tokens.
- dense: every expert on every token (batched matrix products over the expert axis), then the
  outputs weighted by routing weights that are zero outside each token's top k: E/k times the
  arithmetic, and (E, N, 2*d_ff) intermediates.
- hf loop: transformers' GptOssMLP as written (one_hot mask, a loop over the experts hit).
- hf grouped_mm: the same module with experts_implementation="grouped_mm" (torch's grouped GEMM).

Time is the best of several interleaved forwards (the machine is shared). Peak memory is the
growth of the resident set during one forward, measured in a fresh process per cell (Linux: the
high-water mark is reset through /proc/self/clear_refs). "useful GFLOP/s" counts only the k
experts each token needs, N*k*3*d_model*d_ff*2 FLOPs, for every implementation.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time

import torch
from transformers import GptOssConfig
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

from gptoss.config import GPTConfig
from gptoss.model import MixtureOfExperts

IMPLEMENTATIONS = ("gptoss", "dense", "hf loop", "hf grouped_mm")


def build_modules(d_model: int, d_ff: int, experts: int, top_k: int) -> dict:
    """{name: function (N, d_model) -> (N, d_model)} sharing one set of random weights."""
    config = GPTConfig.preset(
        "gpt-oss-tiny", d_model=d_model, d_ff=d_ff, num_experts=experts, experts_per_token=top_k
    )
    torch.manual_seed(0)
    ours = MixtureOfExperts(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 1.0 / d_model**0.5)
    functions = {"gptoss": lambda x: ours(x[None])[0][0], "dense": lambda x: dense_reference(ours, x)}
    for name, implementation in (("hf loop", "eager"), ("hf grouped_mm", "grouped_mm")):
        hf_config = GptOssConfig(
            hidden_size=d_model, intermediate_size=d_ff, num_local_experts=experts, num_experts_per_tok=top_k
        )
        hf_config._experts_implementation = implementation
        module = GptOssMLP(hf_config).eval()
        module.load_state_dict(ours.state_dict(), strict=True)  # same parameter names inside the block
        functions[name] = lambda x, module=module: module(x[None])[0][0]
    return functions


def dense_reference(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by routing weights that are zero outside the top k."""
    router_logits = moe.router(x)  # (N, E)
    top_logits, top_experts = router_logits.topk(moe.top_k, dim=-1)
    weights = torch.zeros_like(router_logits).scatter(1, top_experts, torch.softmax(top_logits, dim=-1))  # (N, E)
    e = moe.experts
    gate_up = x @ e.gate_up_proj + e.gate_up_proj_bias[:, None]  # (E, N, 2*d_ff), a batched product
    gate = gate_up[..., 0::2].clamp(max=e.limit)
    linear = gate_up[..., 1::2].clamp(-e.limit, e.limit)
    hidden = gate * torch.sigmoid(e.alpha * gate) * (linear + 1)  # (E, N, d_ff)
    out = hidden @ e.down_proj + e.down_proj_bias[:, None]  # (E, N, d_model)
    return (out * weights.t()[..., None]).sum(dim=0)


def best_times(functions: dict, x: torch.Tensor, min_seconds: float, min_repeats: int) -> dict:
    """Smallest seconds per call of each function (the run least disturbed by other processes);
    calls interleaved so that a burst of load hits every implementation alike."""
    for function in functions.values():
        function(x)  # warm-up
    times = {name: [] for name in functions}
    start = time.perf_counter()
    while len(times["gptoss"]) < min_repeats or time.perf_counter() - start < min_seconds:
        for name, function in functions.items():
            begin = time.perf_counter()
            function(x)
            times[name].append(time.perf_counter() - begin)
    return {name: min(values) for name, values in times.items()}


def resident_kib(field: str) -> int:
    """VmRSS or VmHWM of this process in KiB (Linux)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_forward_mib(name: str, tokens: int, shapes: tuple, threads: int) -> float:
    """Run in a fresh process: growth of the resident set during one forward of `name`, in MiB."""
    torch.set_num_threads(threads)
    function = build_modules(*shapes)[name]
    x = torch.randn(tokens, shapes[0])
    with torch.no_grad():
        function(x[:1])  # one-off costs of a first call (kernel and thread-pool setup) are not the forward's
        before = resident_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the high-water mark VmHWM to the current resident set
        function(x)
        return (resident_kib("VmHWM") - before) / 1024


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, PyTorch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64, 1024, 4096])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each token count at least this long")
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared 2-core machine a second thread mostly waits at barriers)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = (args.d_model, args.d_ff, args.experts, args.top_k)
    functions = build_modules(*shapes)
    spawn = multiprocessing.get_context("spawn")

    print(f"machine: {machine()}")
    print(
        f"shapes: d_model {args.d_model}, d_ff {args.d_ff}, {args.experts} experts, top-{args.top_k}, fp32, "
        "forward only (no grad)\n"
    )
    print("| tokens | implementation | ms / forward | time vs gptoss | useful GFLOP/s | peak memory MiB | max abs diff vs gptoss |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for tokens in args.tokens:
        x = torch.randn(tokens, args.d_model, generator=torch.Generator().manual_seed(tokens))
        with torch.no_grad():
            outputs = {name: function(x) for name, function in functions.items()}
            times = best_times(functions, x, args.min_seconds, args.min_repeats)
        with spawn.Pool(1, maxtasksperchild=1) as pool:
            memory = {name: pool.apply(peak_forward_mib, (name, tokens, shapes, args.threads)) for name in functions}
        useful_flops = tokens * args.top_k * 3 * args.d_model * args.d_ff * 2
        for name in IMPLEMENTATIONS:
            diff = (outputs[name] - outputs["gptoss"]).abs().max().item()
            print(
                f"| {tokens} | {name} | {times[name] * 1e3:.2f} | {times[name] / times['gptoss']:.2f}x | "
                f"{useful_flops / times[name] / 1e9:.1f} | {memory[name]:.1f} | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
