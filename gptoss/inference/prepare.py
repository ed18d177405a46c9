"""Making a model fast at generating on a CPU: its large linear layers read their weights through
the C kernels, in the layout and format chosen once, and MXFP4 experts are computed from their
packed bytes (`prepare_for_inference`)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptoss.inference import cpu_kernel, mxfp4_kernel
from gptoss.model import Attention

# the weight formats prepare_for_inference offers: "auto" keeps the model's dtype
WEIGHTS = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "int8": None}


class InferenceLinear(nn.Linear):
    """nn.Linear made fast at inference on a CPU. Same parameters, same state dict, same results (to
    float rounding; int8: those of its dequantised weight); with autograd on (training), it is
    plain nn.Linear.

    Why: decoding one token multiplies a vector by every weight matrix, so its speed is the speed
    at which those matrices are read. F.linear reads them at about half the machine's bandwidth:
    in fp32 it calls MKL, whose matrix-vector product runs on one core; in bf16 it calls oneDNN,
    which re-lays the weight at every call. So each weight is read by a kernel of
    gptoss/inference/cpu_kernel.c (docs/inference.md has the numbers):

    - fp32: from a copy in the kernel's tiles, whose C loop reads each thread's share of the weight
      in one stream, for one row of input or many;
    - bf16: the weight itself, moved once into 2 MB pages (no copy kept), by the CPU's bf16 dot
      products; a prompt (at least PROMPT_ROWS rows of input, bound by arithmetic) goes to F.linear;
    - int8 (`quantized`): a copy quantised per output row (a quarter of the fp32 weight's bytes),
      widened to fp32 in registers;
    - where the kernel cannot be built (no C compiler): oneDNN's own layout, in a copy, for its
      inner product (slower than the kernels at batch 1: docs/inference.md); int8 is then not used;
      where oneDNN cannot pack the dtype on this CPU either (bf16 without AVX-512 or AVX-NE-CONVERT),
      F.linear.

    The costs: a few us more per call than F.linear, which is why small weights are left alone (see
    MIN_PACKED_WEIGHT); the memory of the fp32 tiles or the int8 copy.
    """

    quantized = False  # set by prepare_for_inference(weights="int8")

    def pack(self) -> None:
        """(Re)build what the forward reads, from the weight as it is now: the int8 copy, the fp32
        tiles, the bf16 weight moved into 2 MB pages (the C kernel, when it is available), else
        oneDNN's packed copy."""
        weight = self.weight.detach()
        use_kernel = weight.dtype in (torch.float32, torch.bfloat16) and cpu_kernel.library() is not None
        self.int8 = cpu_kernel.quantize_int8(weight) if use_kernel and self.quantized else None
        self.tiles = cpu_kernel.pack_tiles(weight) if use_kernel and not self.quantized and weight.dtype == torch.float32 else None
        self.in_place = use_kernel and not self.quantized and weight.dtype == torch.bfloat16
        if self.in_place:  # the old memory is freed (a tied weight moves too); a normal tensor, even when
            with torch.inference_mode(False):  # repacked while generating: training can use it after
                self.weight.data = cpu_kernel.in_large_pages(weight)
        self.packed_weight = None if use_kernel or not onednn_packs(weight.dtype) else torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.packed_from = (self.weight.data_ptr(), self.weight._version)

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the packed copies (derived from the weight): the first call
        rebuilds them."""
        return {**self.__dict__, "tiles": None, "packed_weight": None, "int8": None, "packed_from": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # called ~50 times per decoding step, each call a few microseconds: every attribute read counts
        weight = self.weight
        if torch.is_grad_enabled() or not (x.is_cpu and weight.is_cpu) or x.dtype != weight.dtype:
            return F.linear(x, weight, self.bias)
        if self.packed_from != (weight.data_ptr(), weight._version):
            self.pack()  # the weight was changed (trained, loaded, cast) since packing
            weight = self.weight
        if self.int8 is not None:
            return cpu_kernel.linear_int8(x, *self.int8, self.bias)
        if self.tiles is not None:
            return cpu_kernel.linear(x, self.tiles, self.bias, self.out_features)
        if self.in_place:
            if x.numel() >= PROMPT_ROWS * self.in_features:
                return F.linear(x, weight, self.bias)
            return cpu_kernel.linear_bf16(x, weight, self.bias)
        if self.packed_weight is None:  # neither the kernel nor oneDNN can take this weight here
            return F.linear(x, weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


class InferenceAttention(Attention):
    """Attention whose decoding steps (one query per sequence, autograd off, CPU, fp32 or bf16) run
    cpu_kernel.attend_one_query: one C call per layer instead of a dozen PyTorch operators, the KV
    cache read where it lies, no k/v head repeated, the sinks in the softmax. Same parameters, same
    results to float rounding (its sums are fp32); everything else is plain Attention."""

    def attend(self, q, k, v, mask, dropout: float) -> torch.Tensor:
        if dropout or torch.is_grad_enabled() or cpu_kernel.one_query_problem(q, k, v, mask):
            return super().attend(q, k, v, mask, dropout)
        return cpu_kernel.attend_one_query(q, k, v, mask, self.sinks, 1 / math.sqrt(q.shape[-1]))


@functools.cache
def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack a linear weight of `dtype` on this CPU (its bf16 path needs AVX-512
    or AVX-NE-CONVERT, and refuses other CPUs with a RuntimeError)."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 1)
    except RuntimeError:
        return False
    return True


# fp32 weights smaller than this (elements) stay plain nn.Linear: reading them takes less time than
# the kernels' extra call overhead (docs/inference.md); and only larger ones are quantised to int8.
MIN_PACKED_WEIGHT = 2**18
# bf16 inputs of at least this many rows (a prompt) go to F.linear, faster there (docs/inference.md)
PROMPT_ROWS = 64


@torch.no_grad()
def prepare_for_inference(model: nn.Module, dtype: torch.dtype | None = None, weights: str = "auto") -> nn.Module:
    """Make `model` fast at generating on a CPU, in place, and return it: eval mode, optionally
    cast to `dtype`, every bf16 CPU nn.Linear and every fp32 one of at least MIN_PACKED_WEIGHT
    weights turned into an InferenceLinear, attention layers into InferenceAttention (decoding
    steps in one C call per layer), and MXFP4-packed experts (gpt-oss-20b's, as loaded) into KernelExperts,
    computed from the packed bytes where they lie (gptoss.inference.mxfp4_kernel). Only forwards
    differ, so names, checkpoints and tied weights are untouched.

    weights: "auto" keeps the model's dtype; "fp32" / "bf16" cast the model to it (bf16 halves the
    bytes read per token; the same as dtype=, which may be given too if it agrees); "int8"
    quantises the linear layers of at least MIN_PACKED_WEIGHT weights per output row (a quarter of fp32's bytes; the rest of
    the model, and the activations, keep their dtype)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(WEIGHTS)}")
    if WEIGHTS[weights] is not None:
        if dtype is not None and dtype != WEIGHTS[weights]:
            raise ValueError(f"weights={weights!r} and dtype={dtype} disagree: give one of them")
        dtype = WEIGHTS[weights]
    model.eval()
    if dtype is not None:
        model.to(dtype)
    mxfp4_kernel.use_kernel_experts(model)
    attention = [m for m in model.modules() if type(m) is Attention and m.c_attn.weight.device.type == "cpu"]
    if attention and cpu_kernel.library() is not None:
        for module in attention:
            module.__class__ = InferenceAttention
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return model
    for module in model.modules():
        if type(module) is not nn.Linear or module.weight.device.type != "cpu":
            continue
        large = module.weight.numel() >= MIN_PACKED_WEIGHT
        # in bf16 every size: PyTorch's product of even a small bf16 matrix (a router's) is slower
        # than the kernel's call; small ones are not quantised (a router's choices are sensitive)
        if module.weight.dtype == torch.bfloat16 or (module.weight.dtype == torch.float32 and large):
            module.__class__ = InferenceLinear
            module.quantized = weights == "int8" and large
            module.pack()
    return model
