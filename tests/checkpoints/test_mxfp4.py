"""MXFP4 decoding against transformers' own decoder, bit for bit; packed experts against decoded ones."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.integrations.mxfp4 import FP4_VALUES as TRANSFORMERS_FP4_VALUES
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from gptoss import GPT, GPTConfig
from gptoss.checkpoints.mxfp4 import FP4_VALUES, PackedExperts, dequantize_experts, dequantize_mxfp4, pack_experts_on_meta

BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def random_packed(shape, generator, scale_range=(0, 256)):
    """Random blocks (*shape, 16) and scales (*shape) bytes."""
    blocks = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(*scale_range, shape, dtype=torch.uint8, generator=generator)
    return blocks, scales


def test_fp4_table_is_e2m1():
    assert FP4_VALUES == tuple(TRANSFORMERS_FP4_VALUES)
    # E2M1 by its definition: sign, 2 exponent bits (bias 1), 1 mantissa bit; exponent 0 is subnormal
    for code, value in enumerate(FP4_VALUES):
        sign, exponent, mantissa = code >> 3, (code >> 1) & 3, code & 1
        magnitude = mantissa * 0.5 if exponent == 0 else 2.0 ** (exponent - 1) * (1 + mantissa / 2)
        assert value == (-magnitude if sign else magnitude)


def test_low_nibble_first_and_scale_bias():
    # one block: byte 0x21 -> codes 1 (low: 0.5) then 2 (high: 1.0); byte 0xF7 -> 6.0 then -6.0
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0], blocks[0, 1] = 0x21, 0xF7
    values = dequantize_mxfp4(blocks, torch.tensor([128], dtype=torch.uint8))  # 2^(128 - 127) = 2
    assert values.shape == (32,)
    assert values[:4].tolist() == [1.0, 2.0, 12.0, -12.0] and not values[4:].any()


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    experts=st.integers(1, 3),
    rows=st.integers(1, 12),
    groups=st.integers(1, 4),
    dtype=st.sampled_from(sorted(BITS, key=str)),
)
def test_bit_for_bit_equal_to_transformers(seed, experts, rows, groups, dtype):
    """Random bytes and every scale byte (0..255, the overflowing 255 included)."""
    blocks, scales = random_packed((experts, rows, groups), torch.Generator().manual_seed(seed))
    ours = dequantize_mxfp4(blocks, scales, dtype)  # (E, rows, groups * 32)
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=dtype).transpose(1, 2)  # theirs comes (E, in, out)
    assert torch.equal(ours.view(BITS[dtype]), theirs.contiguous().view(BITS[dtype]))


def test_all_scales_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (1, 256, 2, 16), dtype=torch.uint8, generator=g)
    scales = torch.arange(256, dtype=torch.uint8).view(1, 256, 1).expand(1, 256, 2).contiguous()
    for dtype, bits in BITS.items():
        theirs = convert_moe_packed_tensors(blocks, scales, dtype=dtype).transpose(1, 2).contiguous()
        assert torch.equal(dequantize_mxfp4(blocks, scales, dtype).view(bits), theirs.view(bits))


@pytest.mark.parametrize(
    "blocks, scales, error, match",
    [
        (torch.zeros(2, 16, dtype=torch.int8), torch.zeros(2, dtype=torch.uint8), TypeError, "uint8"),
        (torch.zeros(2, 15, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8), ValueError, "16"),
        (torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8), ValueError, "scales"),
    ],
)
def test_bad_packed_input(blocks, scales, error, match):
    with pytest.raises(error, match=match):
        dequantize_mxfp4(blocks, scales)


def test_unsupported_dtype():
    with pytest.raises(ValueError, match="decodes to one of"):
        dequantize_mxfp4(torch.zeros(1, 16, dtype=torch.uint8), torch.zeros(1, dtype=torch.uint8), torch.float64)


# ---------------------------------------------------------------------------------------- packed experts
CONFIG = GPTConfig.preset(
    "gpt-oss-tiny", vocab_size=61, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    d_ff=32, num_experts=4, experts_per_token=2, sliding_window=6, max_seq_len=64,
)


def packed_model(seed: int = 0) -> GPT:
    """A tiny gpt-oss with random weights and random MXFP4 experts (scales near 127: sane values)."""
    g = torch.Generator().manual_seed(seed)
    model = GPT(CONFIG, device="meta")
    pack_experts_on_meta(model)
    state = {}
    for name, t in model.state_dict().items():
        if t.dtype == torch.uint8:
            high = 256 if name.endswith("_blocks") else 125
            state[name] = torch.randint(0 if high == 256 else 118, high, t.shape, dtype=torch.uint8, generator=g)
        else:
            state[name] = torch.randn(t.shape, generator=g) * 0.1 + (1.0 if "ln_" in name else 0.0)
    model.load_state_dict(state, assign=True)
    return model.eval()


def test_packed_experts_decode_exactly_what_dequantize_experts_stores():
    packed = packed_model()
    plain = dequantize_experts(packed_model())
    assert all(type(block.mlp.experts).__name__ == "Experts" for block in plain.transformer.h)
    for block_p, block_d in zip(packed.transformer.h, plain.transformer.h):
        assert isinstance(block_p.mlp.experts, PackedExperts)
        for e in range(CONFIG.num_experts):
            for w_p, w_d in zip(block_p.mlp.experts.expert_weights(e), block_d.mlp.experts.expert_weights(e)):
                assert w_p.shape == w_d.shape and torch.equal(w_p, w_d)


def test_packed_model_logits_equal_dequantized_model():
    packed, plain = packed_model(), dequantize_experts(packed_model())
    idx = torch.randint(0, CONFIG.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(packed(idx), plain(idx), rtol=0, atol=1e-6)
        # generation through the KV cache, too
        assert torch.equal(packed.generate(idx[:, :5], 8, temperature=0), plain.generate(idx[:, :5], 8, temperature=0))


def test_packed_experts_in_bfloat16_decode_to_bfloat16():
    model = packed_model().to(torch.bfloat16)
    w_gate_up, _, w_down, _ = model.transformer.h[0].mlp.experts.expert_weights(1)
    assert w_gate_up.dtype == w_down.dtype == torch.bfloat16
    assert w_gate_up.shape == (CONFIG.d_model, 2 * CONFIG.d_ff) and w_down.shape == (CONFIG.d_ff, CONFIG.d_model)
    with torch.no_grad():
        assert model(torch.randint(0, CONFIG.vocab_size, (1, 7))).dtype == torch.bfloat16


def test_packing_needs_multiples_of_32():
    config = GPTConfig.preset("gpt-oss-tiny", d_model=48, head_dim=12)
    with pytest.raises(ValueError, match="multiple"):
        pack_experts_on_meta(GPT(config, device="meta"))


def test_train_model_refuses_packed_experts():
    """Packed experts are uint8 buffers no optimizer updates: training one is refused, with the fix."""
    from gptoss.train import train_model

    with pytest.raises(ValueError, match="dequantize_experts"):
        train_model(packed_model(), list(range(61)) * 3, seq_len=8, num_epochs=1, progress=False)
