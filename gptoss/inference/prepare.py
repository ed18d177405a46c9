"""Making a model fast at generating on a CPU: its large linear layers read their weights from a
copy laid out once for reading, and MXFP4 experts are computed from their packed bytes
(`prepare_for_inference`)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptoss.inference import cpu_kernel, mxfp4_kernel


class InferenceLinear(nn.Linear):
    """nn.Linear made fast at inference on a CPU. Same parameters, same state dict, same results (to
    float rounding); with autograd on (training), it is plain nn.Linear.

    Why: decoding one token multiplies a vector by every weight matrix, so its speed is the speed
    at which those matrices are read. F.linear reads them at about half the machine's bandwidth:
    in fp32 it calls MKL, whose matrix-vector product runs on one core; in bf16 it calls oneDNN,
    which re-lays the weight at every call. So the weight is laid out once, for reading, in a
    copy (docs/inference.md has the numbers):

    - fp32: the tiles of gptoss/inference/cpu_kernel.c, whose C loop reads each thread's share of the
      weight in one stream, close to the memory's speed, for one row of input or many;
    - bf16, or fp32 where that kernel cannot be built (no C compiler): oneDNN's own layout, for
      its inner product (at batch 1 it reads at ~60-80% of the memory's speed).

    The costs: memory, the copy of each weight; and time, a few us more per call than F.linear,
    which is why small weights are left alone (see MIN_PACKED_WEIGHT).
    """

    def pack(self) -> None:
        """(Re)build the copy of the weight laid out for reading: the C kernel's tiles (fp32, when
        it is available), else oneDNN's layout."""
        weight = self.weight.detach()
        use_kernel = weight.dtype == torch.float32 and cpu_kernel.library() is not None
        self.tiles = cpu_kernel.pack_tiles(weight) if use_kernel else None
        self.packed_weight = None if use_kernel else torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.packed_from = (weight.data_ptr(), self.weight._version)

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the packed copy (derived, as large as the weight): the
        first call rebuilds it."""
        return {**self.__dict__, "tiles": None, "packed_weight": None, "packed_from": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ~9 us a call in all (F.linear: ~5), ~50 calls per decoding step: every attribute read counts
        weight = self.weight
        if torch.is_grad_enabled() or not (x.is_cpu and weight.is_cpu) or x.dtype != weight.dtype:
            return F.linear(x, weight, self.bias)
        if self.packed_from != (weight.data_ptr(), weight._version):
            self.pack()  # the weight was changed (trained, loaded, cast) since packing
        if self.tiles is not None:
            return cpu_kernel.linear(x, self.tiles, self.bias, self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


# Weights smaller than this (elements) stay plain nn.Linear: reading them takes less time than
# the packed paths' extra call overhead (a 768 x 768 fp32 matrix, 2.4 MB, takes ~90 us at 27 GB/s).
MIN_PACKED_WEIGHT = 2**18


@torch.no_grad()
def prepare_for_inference(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Make `model` fast at generating on a CPU, in place, and return it: eval mode, optionally
    cast to `dtype` (torch.bfloat16 halves the bytes read per token), every fp32/bf16 CPU
    nn.Linear of at least MIN_PACKED_WEIGHT weights turned into an InferenceLinear, and MXFP4-packed
    experts (gpt-oss-20b's, as loaded) into KernelExperts, computed from the packed bytes where
    they lie (gptoss.inference.mxfp4_kernel). Only forwards differ, so names, checkpoints and tied
    weights are untouched."""
    model.eval()
    if dtype is not None:
        model.to(dtype)
    mxfp4_kernel.use_kernel_experts(model)
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return model
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.numel() >= MIN_PACKED_WEIGHT:
            weight = module.weight
            if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16):
                module.__class__ = InferenceLinear
                module.pack()
    return model
