"""The machine a benchmark runs on, measured in that run: CPU model and features, matmul peaks, read bandwidth.

    from machine import describe, matmul_peak_gflops, read_bandwidth
    print(describe())                       # "AMD EPYC ... | 2 threads | AVX512_BF16 yes, AMX no | torch 2.13.0"
    peak = matmul_peak_gflops(torch.bfloat16)
    bytes_per_s = read_bandwidth()

The hardware under the project changes between sessions (../shared/docs/MACHINE.md), so no bench
hard-codes a peak: each measures the ones it compares against here, in its own run, and prints
this header. The machine is shared and noisy: every figure is the best of a few tries, and a bench
that needs a quiet machine should measure the peak again at its end and keep the higher reading.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    """The processor's model name, as lscpu prints it (from /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx512_bf16, amx_bf16, ...), empty where /proc/cpuinfo has none."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def describe() -> str:
    """One header line: CPU model, threads, the bf16 features that decide the fast paths, torch."""
    flags = cpu_flags()
    yes = lambda flag: "yes" if flag in flags else "no"  # noqa: E731
    return (f"{cpu_model()} | {torch.get_num_threads()} threads | AVX512_BF16 {yes('avx512_bf16')}, "
            f"AMX {yes('amx_bf16')} | torch {torch.__version__}")


def best_seconds(fn, tries: int = 5) -> float:
    """The fastest of `tries` timed calls of fn() (one untimed call first, to warm up)."""
    fn()
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = 2048) -> float:
    """GFLOP/s of a size x size x size matmul in dtype (2 * size^3 FLOPs), best of 5: the peak
    that MFU is measured against."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    return 2 * size**3 / best_seconds(lambda: a @ b) / 1e9


def read_bandwidth(mebibytes: int = 512) -> float:
    """Bytes/s at which torch.sum reads a written fp32 tensor of that size (best of 5): the bound
    of anything that streams its weights once per step, like decoding. The tensor lies in 2 MB
    pages where the OS gives them, as the C kernels' weights do (in 4 KB pages it reads 10-30%
    slower here): the fastest the memory reads, so the bound is not flattered."""
    from gptoss.inference.cpu_kernel import zeros_in_large_pages

    data = zeros_in_large_pages((mebibytes * 2**20 // 4,)).fill_(1.0)  # written: unwritten pages all read one zero page
    return data.numel() * data.element_size() / best_seconds(data.sum)
