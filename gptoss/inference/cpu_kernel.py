"""The linear kernels of gptoss/inference/cpu_kernel.c (why they exist: see there), built on first use.

It is built once per machine by gptoss.util.c_build (the system's C compiler, a build per source,
flags and CPU, cached). Where it cannot be built or loaded, `library()` warns once and returns
None, and InferenceLinear falls back to oneDNN (slower at batch 1). GPTOSS_CPU_KERNEL=0 turns it off.

    tiles = pack_tiles(weight)                  # once: weight (out, in), fp32 -> its tiles
    y = linear(x, tiles, bias, out_features)    # x (..., in), fp32 -> x @ weight.T + bias
    y = linear_bf16(x, weight, bias)            # bf16 x and weight (read where it lies) -> bf16 y
    q, scale = quantize_int8(weight)            # once: (out, in) int8 and (out,) fp32 row scales
    y = linear_int8(x, q, scale, bias)          # x (..., in) -> x @ (scale[:, None] * q).T + bias
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
from pathlib import Path

import torch

from gptoss.util import c_build
from gptoss.util.c_build import build_library, compiler  # noqa: F401 (compiler: this module's API)

SOURCE = Path(__file__).with_name("cpu_kernel.c")
FLAGS = c_build.FLAGS  # a module attribute: the tests add -mno-... flags to build the portable loops
TILE = 16  # output features per tile: cpu_kernel.c's TILE (checked when it is loaded)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernel, loaded (and built first if this machine has no build yet: gptoss.util.c_build);
    None when it is turned off (GPTOSS_CPU_KERNEL=0) or cannot be built here, after a warning."""
    return build_library(SOURCE, FLAGS, _declare, "linear layers use oneDNN and decoding attention PyTorch, not the faster C kernel")


def _declare(lib: ctypes.CDLL) -> None:
    """Check the build's tile size and declare its functions' signatures."""
    built_tile = ctypes.c_long.in_dll(lib, "tile_outputs").value
    if built_tile != TILE:
        raise RuntimeError(f"{lib._name} has tiles of {built_tile} outputs, cpu_kernel.py of {TILE}")
    lib.linear_bf16.restype = lib.linear_int8.restype = lib.linear_f32.restype = None
    lib.linear_bf16.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_long, ctypes.c_long, ctypes.c_int]  # as linear_f32's, w row-major bf16
    lib.linear_int8.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_int]  # x, m, w, scale, bias, y, ...
    lib.attend_one_query.restype = None
    lib.attend_one_query.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_void_p] * 3 + \
        [ctypes.c_long] * 5 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]  # fmt: skip
    lib.linear_f32.argtypes = [
        ctypes.c_void_p,  # x (m, in_features)
        ctypes.c_long,  # m
        ctypes.c_void_p,  # tiles
        ctypes.c_void_p,  # bias (out_features) or NULL
        ctypes.c_void_p,  # y (m, out_features)
        ctypes.c_long,  # out_features
        ctypes.c_long,  # in_features
        ctypes.c_int,  # threads
    ]


def pack_tiles(weight: torch.Tensor) -> torch.Tensor:
    """weight (out_features, in_features), fp32 on the CPU -> its copy in the kernel's layout
    (tiles, in_features, TILE): tile t holds rows t*TILE to t*TILE + TILE - 1, column by column
    (tiles[t, k, j] = weight[t*TILE + j, k]), the last tile zero-padded."""
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ValueError(f"the C kernel takes a 2-D fp32 CPU weight, got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
    out_features, in_features = weight.shape
    weight = weight.detach()
    whole = out_features // TILE  # whole tiles; then a last one of the remaining rows, zero-padded
    tiles = zeros_in_large_pages(((out_features + TILE - 1) // TILE, in_features, TILE))
    tiles[:whole] = weight[: whole * TILE].reshape(whole, TILE, in_features).transpose(1, 2)
    if out_features % TILE:
        tiles[whole, :, : out_features % TILE] = weight[whole * TILE :].T
    return tiles


def zeros_in_large_pages(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A zeroed tensor in a memory mapping of its own, asking the OS for 2 MB pages (the kernels'
    weights live in these; Linux gives them for the mapping's 2 MB-aligned stretches, most of it).

    Why: a stream through 2 MB pages misses the TLB and crosses page boundaries, where the hardware
    prefetcher stops, 512 times less often, and it reads measurably faster (docs/inference.md).
    Where anonymous mappings are not available, the usual allocator."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    try:
        pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zeroed by the OS
    except (AttributeError, OSError):  # no such mappings (Windows)
        return torch.zeros(shape, dtype=dtype)
    try:
        pages.madvise(mmap.MADV_HUGEPAGE)  # Linux: a request, granted for the 2 MB-aligned stretches
    except (AttributeError, OSError):  # no such request here (macOS), or a kernel without them
        pass
    return torch.frombuffer(pages, dtype=dtype).view(shape)  # the tensor keeps `pages` open


def in_large_pages(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `tensor` in 2 MB pages (see zeros_in_large_pages): what a weight that
    the kernels read where it lies is moved into, its old memory then freed."""
    copy = zeros_in_large_pages(tuple(tensor.shape), tensor.dtype)
    copy.copy_(tensor)
    return copy


def _checked_library() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the C kernel is turned off or could not be built here (see cpu_kernel.library())")
    return lib


def _check_rows(x: torch.Tensor, in_features: int, dtype: torch.dtype) -> None:
    if x.dim() == 0 or x.shape[-1] != in_features or x.dtype is not dtype or not x.is_cpu:
        raise ValueError(f"input {tuple(x.shape)} {x.dtype} on {x.device}: the kernel takes {dtype} CPU rows of {in_features}")


def _check_bias(bias: torch.Tensor | None, out_features: int, dtype: torch.dtype) -> None:
    if bias is not None and (bias.shape != (out_features,) or bias.dtype is not dtype or not bias.is_cpu or not bias.is_contiguous()):
        raise ValueError(f"bias {tuple(bias.shape)} {bias.dtype} on {bias.device}: takes a contiguous {dtype} CPU ({out_features},)")


def _check_weight(weight: torch.Tensor, dtype: torch.dtype) -> None:
    if weight.dim() != 2 or weight.dtype is not dtype or not weight.is_cpu or not weight.is_contiguous():
        raise ValueError(f"weight {tuple(weight.shape)} {weight.dtype} on {weight.device}: takes a contiguous 2-D {dtype} CPU one")


def linear_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in_features), bf16 -> x @ weight.T + bias (..., out_features), bf16: the products of
    the bf16 values (exact in fp32) summed in fp32, rounded to bf16 once; weight (out_features,
    in_features), bf16, contiguous (read where it lies); bias (out_features,), bf16, or None."""
    _check_weight(weight, torch.bfloat16)
    out_features, in_features = weight.shape
    _check_rows(x, in_features, torch.bfloat16)
    _check_bias(bias, out_features, torch.bfloat16)
    lib = _checked_library()
    x = x.contiguous()
    out = x.new_empty(*x.shape[:-1], out_features)
    lib.linear_bf16(
        x.data_ptr(), math.prod(x.shape[:-1]), weight.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), out_features, in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out_features, in_features), floating -> (q, scale): q (out_features, in_features)
    int8 in 2 MB pages, scale (out_features,) fp32, with weight ~= scale[:, None] * q; each row's
    largest magnitude maps to 127 (symmetric, round to nearest; a zero row gets scale 1)."""
    if weight.dim() != 2 or not weight.is_floating_point() or not weight.is_cpu:
        raise ValueError(f"quantize_int8 takes a 2-D floating CPU weight, got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
    weight = weight.detach().float()
    largest = weight.abs().amax(dim=1)
    scale = torch.where(largest > 0, largest / 127, torch.ones_like(largest))
    q = zeros_in_large_pages(tuple(weight.shape), torch.int8)
    for rows in torch.split(torch.arange(weight.shape[0]), 4096):  # a block of rows at a time: no full fp32 temporary
        q[rows] = (weight[rows] / scale[rows, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def linear_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in_features), fp32 or bf16 -> x @ (scale[:, None] * q).T + bias (..., out_features),
    in x's dtype: each int8 weight times the fp32 activation (bf16 ones are widened), summed in fp32,
    the row's scale applied to the sum (quantize_int8 makes q and scale); bias (out_features,) or None."""
    _check_weight(q, torch.int8)
    out_features, in_features = q.shape
    if scale.shape != (out_features,) or scale.dtype is not torch.float32 or not scale.is_contiguous():
        raise ValueError(f"scale {tuple(scale.shape)} {scale.dtype}: takes a contiguous fp32 ({out_features},)")
    dtype = x.dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"input {tuple(x.shape)} {dtype}: the int8 kernel takes fp32 or bf16 rows")
    x = x.float()
    bias = None if bias is None else bias.float()
    _check_rows(x, in_features, torch.float32)
    _check_bias(bias, out_features, torch.float32)
    lib = _checked_library()
    x = x.contiguous()
    out = x.new_empty(*x.shape[:-1], out_features)
    lib.linear_int8(
        x.data_ptr(), math.prod(x.shape[:-1]), q.data_ptr(), scale.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), out_features, in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out.to(dtype)


def linear(x: torch.Tensor, tiles: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """x (..., in_features), fp32 -> x @ weight.T + bias (..., out_features), from the tiles of
    `weight` (pack_tiles; out_features is passed because the padded tiles do not record it); bias
    (out_features,), fp32, or None. Wrong sizes, dtypes or devices raise ValueError: the C loop
    would read out of bounds."""
    count, in_features, tile = tiles.shape
    if tiles.dtype is not torch.float32 or tile != TILE or not tiles.is_contiguous():
        raise ValueError(f"tiles {tuple(tiles.shape)} {tiles.dtype}: not made by pack_tiles")
    if x.dim() == 0 or x.shape[-1] != in_features or x.dtype is not torch.float32 or not x.is_cpu:
        raise ValueError(f"input {tuple(x.shape)} {x.dtype} on {x.device}: the kernel takes fp32 CPU rows of {in_features}")
    if not out_features <= count * TILE < out_features + TILE:
        raise ValueError(f"out_features={out_features} does not fit tiles of {tuple(tiles.shape)}")
    if bias is not None and (bias.shape != (out_features,) or bias.dtype is not torch.float32 or not bias.is_cpu or not bias.is_contiguous()):
        raise ValueError(f"bias {tuple(bias.shape)} {bias.dtype} on {bias.device}: takes a contiguous fp32 CPU ({out_features},)")
    lib = library()
    if lib is None:
        raise RuntimeError("the C kernel is turned off or could not be built here (see cpu_kernel.library())")
    x = x.contiguous()
    out = x.new_empty(*x.shape[:-1], out_features)
    lib.linear_f32(
        x.data_ptr(), math.prod(x.shape[:-1]), tiles.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), out_features, in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out


def one_query_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> str | None:
    """Why attend_one_query cannot take these inputs (see there), or None when it can."""
    B, H, T, hs = q.shape
    _, Hkv, S, _ = k.shape
    if T != 1 or k.shape != v.shape or k.shape[0] != B or k.shape[3] != hs or H % Hkv:
        return (f"attend_one_query takes q (B, H, 1, hs) and k, v (B, Hkv, S, hs), got {tuple(q.shape)}, "
                f"{tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    if q.dtype not in (torch.float32, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"attend_one_query takes fp32 or bf16 q, k, v alike, got {q.dtype}, {k.dtype}, {v.dtype}"
    if k.stride() != v.stride() or k.stride(3) != 1 or not (q.is_cpu and k.is_cpu and v.is_cpu):
        return "attend_one_query reads k and v where they lie: CPU tensors of equal strides, last dimension contiguous"
    if mask is not None and not (isinstance(mask, torch.Tensor) and mask.shape == (B, 1, 1, S) and mask.dtype == torch.bool):
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else repr(mask)
        return f"mask must be (B, 1, 1, S) = {(B, 1, 1, S)} bool or None, got {got}"
    return None


def attend_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     sinks: torch.Tensor | None, scale: float) -> torch.Tensor:  # fmt: skip
    """A decoding step's softmax attention, in fp32, one call (cpu_kernel.c's attend_one_query):
    q (B, H, 1, hs), k and v (B, Hkv, S, hs) with the same strides and a contiguous last dimension
    (a KV cache's view, read where it lies; query head h uses k/v head h // (H // Hkv)); mask
    (B, 1, 1, S) bool (True: visible) or None; sinks (H,) or None: a logit per head in the
    softmax's denominator, with no value. fp32 or bf16, all alike -> (B, H, 1, hs). Other inputs
    raise ValueError (one_query_problem says why)."""
    problem = one_query_problem(q, k, v, mask)
    if problem:
        raise ValueError(problem)
    B, H, _, hs = q.shape
    _, Hkv, S, _ = k.shape
    if mask is not None:
        mask = mask.reshape(B, S).contiguous().view(torch.uint8)
    if sinks is not None:
        sinks = sinks.detach().float().contiguous()
    lib = _checked_library()
    q = q.contiguous()
    y = torch.empty_like(q)
    lib.attend_one_query(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
        None if mask is None else mask.data_ptr(), None if sinks is None else sinks.data_ptr(), y.data_ptr(),
        B, H, Hkv, S, hs, scale, q.dtype == torch.bfloat16, torch.get_num_threads(),
    )  # fmt: skip
    return y
