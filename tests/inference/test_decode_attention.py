"""The decoding step's attention kernel (cpu_kernel.attend_one_query, installed by
prepare_for_inference as InferenceAttention): equal to the model's explicit attention in float64
for any heads, grouping, cache length, mask and sinks, read straight from a KV cache's strided
view; and a model decodes the same tokens with it as without."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss import GPT, GPTConfig
from gptoss.inference import cpu_kernel, generate, prepare_for_inference
from gptoss.inference.prepare import InferenceAttention
from gptoss.model import Attention

needs_compiler = pytest.mark.skipif(cpu_kernel.compiler() is None, reason="no C compiler on this machine")


def explicit_attention(q, k, v, mask, sinks):
    """The reference, written out in float64: softmax over the visible keys (and the sink)."""
    B, H, _, hs = q.shape
    group = H // k.shape[1]
    k, v = k.double().repeat_interleave(group, dim=1), v.double().repeat_interleave(group, dim=1)
    scores = q.double() @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, H, 1, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        scores = torch.cat([scores, sinks.double().view(1, H, 1, 1).expand(B, H, 1, 1)], dim=-1)
    weights = torch.softmax(scores, dim=-1)[..., : k.shape[2]]
    return weights @ v


@needs_compiler
@settings(max_examples=80, deadline=None)
@given(
    batch=st.integers(1, 3), kv_heads=st.integers(1, 4), group=st.sampled_from([1, 2, 8]), length=st.integers(1, 70),
    head_size=st.sampled_from([8, 32, 64, 65]), spare=st.integers(0, 5), masked=st.booleans(), sinks=st.booleans(),
    bf16=st.booleans(), threads=st.integers(1, 3), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_attention_kernel_equals_the_explicit_form(batch, kv_heads, group, length, head_size, spare, masked, sinks,
                                                   bf16, threads, seed):  # fmt: skip
    """k and v are views of a longer cache (spare slots past `length`), as a KV cache hands them out.
    fp32: within 1e-5 of float64. bf16: inputs rounded alike, the sums in fp32, the output rounded to
    bf16 once: within 2^-8 relative of the largest value plus 1e-5."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    H = kv_heads * group
    q = (2 * torch.randn(batch, H, 1, head_size, generator=g)).to(dtype)
    cache_k = (2 * torch.randn(batch, kv_heads, length + spare, head_size, generator=g)).to(dtype)
    cache_v = torch.randn(batch, kv_heads, length + spare, head_size, generator=g).to(dtype)
    k, v = cache_k[:, :, :length], cache_v[:, :, :length]
    mask = None
    if masked:
        mask = torch.rand(batch, 1, 1, length, generator=g) < 0.6
        mask[..., -1] = True  # the new token always sees itself
    sink = 3 * torch.randn(H, generator=g) if sinks else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu_kernel.attend_one_query(q, k, v, mask, sink, 1 / math.sqrt(head_size))
    finally:
        torch.set_num_threads(previous)
    expected = explicit_attention(q, k, v, mask, sink)
    assert out.shape == q.shape and out.dtype == dtype
    tolerance = 2.0**-8 * expected.abs().max() + 1e-5 if bf16 else 1e-5
    assert (out.double() - expected).abs().max() <= tolerance


@needs_compiler
def test_attention_kernel_refuses_what_it_cannot_read():
    q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="q \\(B, H, 1, hs\\)"):
        cpu_kernel.attend_one_query(torch.randn(1, 4, 2, 8), k, k, None, None, 1.0)
    with pytest.raises(ValueError, match="alike"):
        cpu_kernel.attend_one_query(q, k.bfloat16(), k, None, None, 1.0)
    with pytest.raises(ValueError, match="equal strides"):
        cpu_kernel.attend_one_query(q, k, k.transpose(2, 3).contiguous().transpose(2, 3), None, None, 1.0)
    with pytest.raises(ValueError, match="mask"):
        cpu_kernel.attend_one_query(q, k, k, torch.ones(1, 5, dtype=torch.bool), None, 1.0)


@needs_compiler
@pytest.mark.parametrize("preset", ["gpt-oss-tiny", "tiny"])
def test_a_prepared_model_decodes_the_same_tokens(preset):
    """gpt-oss-tiny (sinks, sliding window: a ring-buffer cache, GQA) and a GPT-2-style tiny model, in
    fp32: the same 48 greedy tokens with the kernel as with the model's own attention."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(preset, dropout=0.0)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    expected = generate(model, prompt, 48, temperature=0)
    prepare_for_inference(model)
    assert all(type(m) is InferenceAttention for m in model.modules() if isinstance(m, Attention))
    assert torch.equal(generate(model, prompt, 48, temperature=0), expected)


@needs_compiler
def test_cases_the_kernel_does_not_take_go_to_the_models_own_attention():
    """A mask that broadcasts over the batch, and dropout (a prepared model put back in training
    mode): InferenceAttention hands them to Attention.attend rather than failing or dropping them."""
    config = GPTConfig.preset("gpt-oss-tiny", dropout=0.0)
    attention = Attention(config, 0)
    attention.__class__ = InferenceAttention
    H, Hkv, hs = config.num_heads, config.kv_heads, config.head_size
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, length, hs, generator=g) for heads, length in [(H, 1), (Hkv, 5), (Hkv, 5)])
    mask = torch.tensor([True, False, True, True, True]).view(1, 1, 1, 5)  # (1, 1, 1, S): every row alike
    with torch.no_grad():
        torch.testing.assert_close(attention.attend(q, k, v, mask, 0.0), Attention.attend(attention, q, k, v, mask, 0.0))
        torch.manual_seed(1)
        dropped = attention.attend(q, k, v, None, 0.5)
        torch.manual_seed(1)
        torch.testing.assert_close(dropped, Attention.attend(attention, q, k, v, None, 0.5))
