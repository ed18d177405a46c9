"""gpt-oss's experts computed from their MXFP4 bytes by gptoss/inference/mxfp4_kernel.c (why and
how: see there), built on first use by gptoss.util.c_build like cpu_kernel.c, and the experts module that uses it.

    y = linear(x, blocks, scales, bias)              # x (..., in) fp32 @ the MXFP4 matrix (out, in).T
    out = experts(packed, tokens, top_experts, top_weights)   # one MoE layer after its router

`KernelExperts` is a PackedExperts (gptoss.checkpoints.mxfp4) whose `mix` is that one kernel call;
prepare_for_inference turns every PackedExperts of a model into one, in place: the packed bytes
loaded from the checkpoint are what the kernel reads, and no bf16 copy of an expert is ever made.
Without a C compiler (or with GPTOSS_CPU_KERNEL=0), the library is None and the experts stay
PackedExperts, which decode one expert at a time to bf16 in PyTorch (much slower).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import torch

from gptoss.checkpoints.mxfp4 import BLOCK_SIZE, PackedExperts
from gptoss.inference import cpu_kernel
from gptoss.util.c_build import FLAGS, build_library

SOURCE = Path(__file__).with_name("mxfp4_kernel.c")
LAYOUT_VERSION = 1  # mxfp4_kernel.c's mxfp4_layout_version (checked when it is loaded)
# the kernel's paths, by the compiler flags that choose them on an x86 CPU (-march=native takes the
# best the CPU has; the others are for the tests and bench/bench_mxfp4.py)
BUILD_FLAGS = {"native": (), "avx2": ("-mno-avx512f",), "portable": ("-mno-avx2",)}
EXACT_TERMS = 3  # bf16 terms an fp32 input is split into: all its 24 bits (see mxfp4_kernel.c)
_p, _long, _int, _float = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
SIGNATURES = {  # name: (restype, argtypes), as mxfp4_kernel.c declares them
    "mxfp4_linear_scratch": (_long, [_long, _long, _int]),
    "mxfp4_linear": (None, [_p, _long, _long, _p, _p, _long, _p, _p, _int, _p, _int]),
    "mxfp4_experts_scratch": (_long, [_long, _long, _long, _long, _int, _int]),
    "mxfp4_experts": (_int, [_p, _int, _long, _long, _long, _long, _int, _p, _p, _p, _p, _p, _p, _p, _p,
                             _float, _float, _int, _p, _p, _int]),
}  # fmt: skip


@functools.cache
def library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The kernel, loaded (and built first if this machine has no build yet: gptoss.util.c_build);
    None when C kernels are turned off (GPTOSS_CPU_KERNEL=0) or it cannot be built here, after a
    warning. extra_flags: more compiler flags (the tests build the other paths with -mno-avx512f, -mno-avx2)."""
    fallback = "MXFP4 experts are decoded to bf16 in PyTorch, not computed by the much faster C kernel"
    return build_library(SOURCE, [*FLAGS, *extra_flags], _declare, fallback)


def _declare(lib: ctypes.CDLL) -> None:
    """Check the build's layout version and declare its functions' signatures."""
    version = ctypes.c_long.in_dll(lib, "mxfp4_layout_version").value
    if version != LAYOUT_VERSION:
        raise RuntimeError(f"{lib._name} has layout version {version}, mxfp4_kernel.py expects {LAYOUT_VERSION}")
    for name, (restype, argtypes) in SIGNATURES.items():
        getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes


def instructions(lib: ctypes.CDLL) -> str:
    """Which path this build runs: "avx512_bf16", "avx2" (AVX2 and FMA) or "portable" (a scalar loop)."""
    return (ctypes.c_char * 16).in_dll(lib, "mxfp4_instructions").value.decode()  # a char array, not a pointer


def _checked_library(lib: ctypes.CDLL | None) -> ctypes.CDLL:
    lib = library() if lib is None else lib
    if lib is None:
        raise RuntimeError("the MXFP4 kernel is turned off or could not be built here (see mxfp4_kernel.library())")
    return lib


class _Scratch(threading.local):
    """Working memory for the kernel, kept between calls (per thread) and grown when too small: a
    decoding step allocates none."""

    buffer = torch.empty(0, dtype=torch.uint8)

    def get(self, nbytes: int) -> torch.Tensor:
        if self.buffer.numel() < nbytes:
            self.buffer = torch.empty(nbytes, dtype=torch.uint8)
        return self.buffer


_scratch = _Scratch()


def _check_packed(blocks: torch.Tensor, scales: torch.Tensor, leading: int) -> None:
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or not (blocks.is_cpu and scales.is_cpu):
        raise ValueError(f"MXFP4 blocks and scales must be uint8 CPU tensors, got {blocks.dtype} and {scales.dtype}")
    if blocks.dim() != leading + 3 or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks must be (..., out, in/32, 16) and scales (..., out, in/32), got "
                         f"{tuple(blocks.shape)} and {tuple(scales.shape)}")  # fmt: skip
    if not (blocks.is_contiguous() and scales.is_contiguous()):
        raise ValueError("the MXFP4 kernel reads the blocks and scales where they lie: they must be contiguous")


def linear(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
           terms: int = EXACT_TERMS, lib: ctypes.CDLL | None = None) -> torch.Tensor:  # fmt: skip
    """x (..., in_features), fp32 -> x @ W.T + bias (..., out_features), fp32, W (out_features,
    in_features) in MXFP4: blocks (out_features, in_features/32, 16), scales (out_features,
    in_features/32); bias (out_features,) fp32 or None. terms: x split into 1 to 3 bf16 terms (3:
    as accurate as fp32; 1: x rounded to bf16). lib: a build of the kernel (default: library())."""
    _check_packed(blocks, scales, 0)
    out_features, groups, _ = blocks.shape
    in_features = groups * BLOCK_SIZE
    if x.dim() == 0 or x.shape[-1] != in_features or x.dtype != torch.float32 or not x.is_cpu:
        raise ValueError(f"input {tuple(x.shape)} {x.dtype}: the kernel takes fp32 CPU rows of {in_features}")
    if bias is not None and (bias.shape != (out_features,) or bias.dtype != torch.float32 or not bias.is_contiguous()):
        raise ValueError(f"bias {tuple(bias.shape)} {bias.dtype}: takes a contiguous fp32 ({out_features},)")
    if terms not in (1, 2, 3):
        raise ValueError(f"terms must be 1, 2 or 3, got {terms}")
    lib = _checked_library(lib)
    x = x.contiguous()
    m = x.numel() // in_features
    out = x.new_empty(*x.shape[:-1], out_features)
    scratch = _scratch.get(lib.mxfp4_linear_scratch(m, in_features, terms))
    lib.mxfp4_linear(x.data_ptr(), m, in_features, blocks.data_ptr(), scales.data_ptr(), out_features,
                     None if bias is None else bias.data_ptr(), out.data_ptr(), terms, scratch.data_ptr(),
                     torch.get_num_threads())  # fmt: skip
    return out


def experts(packed: PackedExperts, tokens: torch.Tensor, top_experts: torch.Tensor, top_weights: torch.Tensor,
            terms: int | None = None, lib: ctypes.CDLL | None = None) -> torch.Tensor:  # fmt: skip
    """What `packed.mix(tokens, top_experts, top_weights)` computes, in one kernel call: tokens
    (N, d_model) in the biases' dtype (fp32 or bf16), top_experts (N, k) int64, top_weights (N, k)
    -> (N, d_model). terms: how many bf16 terms the activations are split into (default: 1 for bf16
    tokens, 3, as accurate as fp32, for fp32 ones)."""
    gu_bias, dn_bias = packed.gate_up_proj_bias, packed.down_proj_bias
    dtype = gu_bias.dtype
    if dtype not in (torch.float32, torch.bfloat16) or tokens.dtype != dtype or dn_bias.dtype != dtype:
        raise ValueError(f"the MXFP4 kernel takes fp32 or bf16 tokens in the biases' dtype, got tokens "
                         f"{tokens.dtype} and biases {gu_bias.dtype}/{dn_bias.dtype}")  # fmt: skip
    n, d_model = tokens.shape
    num_experts, two_d_ff = gu_bias.shape
    k = top_experts.shape[1]
    gu_blocks, gu_scales = packed.gate_up_proj_blocks, packed.gate_up_proj_scales
    dn_blocks, dn_scales = packed.down_proj_blocks, packed.down_proj_scales
    _check_packed(gu_blocks, gu_scales, 1)
    _check_packed(dn_blocks, dn_scales, 1)
    if terms is None:
        terms = 1 if dtype == torch.bfloat16 else EXACT_TERMS
    lib = _checked_library(lib)
    tokens = tokens.contiguous()
    top_experts = top_experts.to(torch.int64).contiguous()
    top_weights = top_weights.to(torch.float32).contiguous()
    gu_bias, dn_bias = gu_bias.detach().contiguous(), dn_bias.detach().contiguous()
    out = torch.empty_like(tokens)
    scratch = _scratch.get(lib.mxfp4_experts_scratch(n, d_model, two_d_ff // 2, num_experts, k, terms))
    status = lib.mxfp4_experts(
        tokens.data_ptr(), dtype == torch.bfloat16, n, d_model, two_d_ff // 2, num_experts, k,
        top_experts.data_ptr(), top_weights.data_ptr(),
        gu_blocks.data_ptr(), gu_scales.data_ptr(), gu_bias.data_ptr(),
        dn_blocks.data_ptr(), dn_scales.data_ptr(), dn_bias.data_ptr(),
        packed.limit, packed.alpha, terms, out.data_ptr(), scratch.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"an expert index in top_experts is outside 0..{num_experts - 1}")
    return out


class KernelExperts(PackedExperts):
    """PackedExperts whose `mix` runs the MXFP4 kernel: same buffers, same state dict, the same
    results to bf16 rounding (the kernel sums in fp32; see docs/inference.md). With autograd on, or
    off the CPU, it is plain PackedExperts."""

    def mix(self, tokens: torch.Tensor, top_experts: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not tokens.is_cpu or tokens.dtype != self.gate_up_proj_bias.dtype:
            return super().mix(tokens, top_experts, top_weights)
        return experts(self, tokens, top_experts, top_weights)


def use_kernel_experts(model: torch.nn.Module) -> int:
    """Turn every CPU PackedExperts of `model` (fp32 or bf16) into KernelExperts, in place: the class
    changes, and the packed bytes move into 2 MB pages (cpu_kernel.in_large_pages: read faster, as
    the bf16 weights are; one buffer at a time, its old memory freed, so no second copy of the
    experts); returns how many. None are when the kernel cannot be built here."""
    candidates = [m for m in model.modules() if type(m) is PackedExperts and m.gate_up_proj_blocks.is_cpu
                  and m.gate_up_proj_bias.dtype in (torch.float32, torch.bfloat16)]  # fmt: skip
    if not candidates or library() is None:
        return 0
    for module in candidates:
        module.__class__ = KernelExperts
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.dtype == torch.uint8:  # the blocks and scales
                setattr(module, name, cpu_kernel.in_large_pages(buffer))
    return len(candidates)
