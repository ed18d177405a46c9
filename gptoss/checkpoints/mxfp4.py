"""MXFP4: the 4-bit format gpt-oss ships its expert weights in, and experts that stay packed in it.

A weight matrix (rows, cols) is cut along its input dimension (cols) into blocks of 32 values.
Each block is stored as
  - 16 bytes holding 32 FP4 E2M1 codes, two per byte, the low nibble first (the even column);
  - 1 scale byte in E8M0 (a bare exponent): the block is multiplied by 2^(scale - 127).
So value = FP4_VALUES[code] * 2^(scale - 127), and a checkpoint stores
  blocks (..., rows, cols/32, 16) uint8 and scales (..., rows, cols/32) uint8
(4.25 bits per weight). gpt-oss-20b's experts are 19.1B of its 20.9B parameters: packed they take
10.2 GB, decoded to bf16 38.2 GB.

`PackedExperts` keeps them packed in memory and dequantises one expert's matrices when that expert
runs, so a model needs only the packed bytes plus one expert's weights at a time.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from gptoss.config import GPTConfig
from gptoss.model import Experts

BLOCK_SIZE = 32  # values per block, sharing one scale
BYTES_PER_BLOCK = BLOCK_SIZE // 2
SCALE_BIAS = 127  # E8M0: scale byte s means 2^(s - 127)

# E2M1 (1 sign, 2 exponent, 1 mantissa bit) code -> value; codes 8..15 are the negatives of 0..7
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
DECODE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def _decode_table(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int]:
    """A lookup table from packed bytes straight to 8 bytes of decoded values.

    Decoding is one gather: the bf16 table takes 2 packed bytes (4 codes) to 4 values, the fp32
    table 1 byte (2 codes) to 2 values; each entry is viewed as one int64, so the gather moves 8
    bytes at a time, faster than gathering value by value (docs/checkpoints.md).
    Returns (table (256**k,) int64, k = packed bytes per entry).
    """
    bytes_per_entry = 8 // torch.empty(0, dtype=dtype).element_size() // 2
    codes = torch.arange(256)
    pairs = torch.tensor(FP4_VALUES, dtype=dtype)[torch.stack([codes & 0x0F, codes >> 4], dim=-1)]  # (256, 2): low nibble first
    # every k-byte pattern, in the machine's byte order: entry i holds the bytes whose k-byte
    # integer view is i, so the index is simply the packed bytes viewed as an integer
    index_dtype = torch.uint8 if bytes_per_entry == 1 else torch.int16
    patterns = torch.arange(256**bytes_per_entry).to(index_dtype).view(torch.uint8).view(-1, bytes_per_entry)
    values = pairs[patterns.long()].reshape(-1, 2 * bytes_per_entry)  # (256**k, 2k)
    return values.contiguous().view(torch.int64).view(-1).to(device), bytes_per_entry


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode MXFP4: blocks (..., G, 16) uint8 and scales (..., G) uint8 -> values (..., G * 32).

    Exact: every FP4 value times a power of two is representable in fp32 and bf16 (fp16 decodes
    through fp32, its exponent range being too narrow for the scales). Scale byte 255 (which the
    OCP MX spec reserves for NaN) decodes as transformers and OpenAI's reference decode it, with
    ldexp: zero stays zero, +-0.5 becomes +-2^127, larger values overflow to +-inf.
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[-1] != BYTES_PER_BLOCK or blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"MXFP4 blocks must have shape (..., G, {BYTES_PER_BLOCK}) and scales (..., G); got "
            f"{tuple(blocks.shape)} and {tuple(scales.shape)}"
        )
    if dtype not in DECODE_DTYPES:
        raise ValueError(f"MXFP4 decodes to one of {DECODE_DTYPES}, not {dtype}")
    if dtype == torch.float16:
        return dequantize_mxfp4(blocks, scales, torch.float32).to(dtype)
    *prefix, groups, _ = blocks.shape
    table, bytes_per_entry = _decode_table(dtype, blocks.device)  # one copy per device, not per call
    packed = blocks.contiguous().view(-1)
    if bytes_per_entry == 2:
        index = packed.view(torch.int16).int() & 0xFFFF
    else:
        index = packed.int()
    values = table.index_select(0, index).view(dtype).view(-1, groups, BLOCK_SIZE)
    scales = scales.reshape(-1, groups)
    values *= _scale_powers(dtype, blocks.device)[scales.int()].unsqueeze(-1)
    top = scales == 255
    if top.any():  # 2^128 overflows even fp32: scale by 2^127 (above), then by 2, as ldexp would
        values[top] *= 2
    return values.view(*prefix, groups * BLOCK_SIZE)


@functools.lru_cache(maxsize=None)
def _scale_powers(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """E8M0 scale byte s -> 2^(s - 127) (256,), exact in fp32 and bf16: 2^-127 is a subnormal of
    both. Byte 255 maps to 2^127; dequantize_mxfp4 doubles those blocks once more."""
    exponents = torch.arange(256, device=device).clamp(max=254) - SCALE_BIAS
    return torch.ldexp(torch.ones(256, device=device), exponents).to(dtype)


def mxfp4_shapes(rows: int, cols: int, leading: tuple[int, ...] = ()) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the blocks and scales that pack a (..., rows, cols) matrix (cols along the blocks)."""
    if cols % BLOCK_SIZE:
        raise ValueError(f"MXFP4 packs the input dimension in blocks of {BLOCK_SIZE}, and {cols} is not a multiple")
    groups = cols // BLOCK_SIZE
    return (*leading, rows, groups, BYTES_PER_BLOCK), (*leading, rows, groups)


class PackedExperts(Experts):
    """gpt-oss experts whose matrices stay MXFP4-packed; `expert_weights(e)` decodes expert e.

    Buffers, in the checkpoints' layout (matrices stored (out, in), packed along `in`):
      gate_up_proj_blocks (E, 2*d_ff, d_model/32, 16), gate_up_proj_scales (E, 2*d_ff, d_model/32)
      down_proj_blocks (E, d_model, d_ff/32, 16),      down_proj_scales (E, d_model, d_ff/32)
    The biases stay plain parameters, and their dtype is the dtype the weights decode to.
    Build it on the meta device and fill it with load_state_dict(..., assign=True), as
    gptoss.checkpoints.load.from_pretrained does.
    """

    PACKED = ("gate_up_proj", "down_proj")

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        E, D, F_ = config.num_experts, config.d_model, config.d_ff
        for name, (rows, cols) in zip(self.PACKED, [(2 * F_, D), (D, F_)]):
            delattr(self, name)  # the plain (E, in, out) parameter is replaced by its packed form
            blocks_shape, scales_shape = mxfp4_shapes(rows, cols, (E,))
            self.register_buffer(f"{name}_blocks", torch.empty(blocks_shape, dtype=torch.uint8))
            self.register_buffer(f"{name}_scales", torch.empty(scales_shape, dtype=torch.uint8))

    def decode(self, name: str, e: int | slice) -> torch.Tensor:
        """Matrix `name` of expert(s) e, decoded: (..., out, in) in the biases' dtype."""
        blocks, scales = getattr(self, f"{name}_blocks")[e], getattr(self, f"{name}_scales")[e]
        return dequantize_mxfp4(blocks, scales, self.gate_up_proj_bias.dtype)

    def stacked_weights(self) -> None:
        return None  # decoded one expert at a time (expert_weights), so mix loops over the experts

    def expert_weights(self, e: int) -> tuple[torch.Tensor, ...]:
        # decoded (out, in); the transposed views are the (in, out) matrices Experts.forward expects
        w_gate_up, w_down = self.decode("gate_up_proj", e), self.decode("down_proj", e)
        return w_gate_up.t(), self.gate_up_proj_bias[e], w_down.t(), self.down_proj_bias[e]


def has_packed_experts(model: nn.Module) -> bool:
    """Whether any of the model's experts are MXFP4-packed."""
    return any(isinstance(m, PackedExperts) for m in model.modules())


def pack_experts_on_meta(model: nn.Module) -> None:
    """Replace every Experts module of a model built on the meta device by an empty PackedExperts."""
    for block in model.transformer.h:
        if isinstance(getattr(block.mlp, "experts", None), Experts):
            with torch.device("meta"):
                block.mlp.experts = PackedExperts(model.config)


@torch.no_grad()
def dequantize_experts(model: nn.Module) -> nn.Module:
    """Replace every PackedExperts of `model` by plain Experts holding the decoded weights.

    One layer at a time, one expert at a time: memory grows by the decoded layer only.
    """
    for block in model.transformer.h:
        packed = getattr(block.mlp, "experts", None)
        if not isinstance(packed, PackedExperts):
            continue
        with torch.device("meta"):
            plain = Experts(model.config)
        bias = packed.gate_up_proj_bias
        for name in PackedExperts.PACKED:
            # decoded (E, out, in) -> plain (E, in, out), filled expert by expert
            num_experts, d_in, d_out = getattr(plain, name).shape
            weight = torch.empty(num_experts, d_in, d_out, dtype=bias.dtype, device=bias.device)
            for e in range(num_experts):
                weight[e] = packed.decode(name, e).t()
            setattr(plain, name, nn.Parameter(weight, requires_grad=bias.requires_grad))
        plain.gate_up_proj_bias, plain.down_proj_bias = packed.gate_up_proj_bias, packed.down_proj_bias
        block.mlp.experts = plain
    return model
