"""Attention with sinks through the fused kernel (Attention.attend_with_sinks) equals the explicit
softmax written out (Attention.attend_explicitly, on the weights gptoss.inspection records): forward and
gradients wrt q, k, v and the sinks, in fp32 within 1e-5, over shapes, grouped-query attention,
sliding windows, padding and KV-cache shaped keys (more keys than queries, empty slots)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss import GPTConfig
from gptoss.model import Attention, attention_mask


@st.composite
def attention_cases(draw):
    """An Attention with sinks and (q, k, v, sinks, mask) for it: GQA groups, head sizes, windows,
    left padding of the queries, and a cache-like key set that runs ahead of the queries."""
    kv_heads = draw(st.sampled_from([1, 2, 3]), label="kv_heads")
    group = draw(st.sampled_from([1, 2, 4]), label="query heads per k/v head")
    head_size = draw(st.sampled_from([4, 8, 16, 32]), label="head_size")
    window = draw(st.one_of(st.none(), st.integers(1, 12)), label="window")
    B, T = draw(st.integers(1, 3), label="B"), draw(st.integers(1, 20), label="T")
    past = draw(st.integers(0, 10), label="keys before the queries (a KV cache)")
    config = GPTConfig(
        vocab_size=11, d_model=8, num_layers=1, num_heads=kv_heads * group, num_kv_heads=kv_heads, head_dim=head_size,
        d_ff=8, max_seq_len=64, dropout=0.0, norm="rmsnorm", position="rope", tie_embeddings=False,
        attention_sinks=True, sliding_window=window, sliding_window_pattern="all",
    )  # fmt: skip
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    attention = Attention(config, 0)
    with torch.no_grad():
        attention.sinks.copy_(torch.randn(attention.num_heads, generator=g) * 2)
    S = past + T
    q = torch.randn(B, attention.num_heads, T, head_size, generator=g)
    k = torch.randn(B, kv_heads, S, head_size, generator=g)
    v = torch.randn(B, kv_heads, S, head_size, generator=g)
    # positions: each row left-padded by its own amount (-1: padding, never visible)
    padding = [draw(st.integers(0, S - 1), label="padding") for _ in range(B)]
    key_positions = torch.stack([torch.arange(S) - p for p in padding]).masked_fill_(torch.arange(S) < torch.tensor(padding)[:, None], -1)
    query_positions = key_positions[:, past:]
    mask = draw(st.sampled_from(["positions", "none"]), label="mask")
    mask = attention_mask(query_positions, key_positions, window) if mask == "positions" else None
    return attention, q, k, v, mask


@settings(max_examples=150, deadline=None)
@given(case=attention_cases())
def test_fused_sinks_attention_equals_explicit_softmax_forward_and_gradients(case):
    attention, q, k, v, mask = case
    grad_out = torch.randn(q.shape)
    results = []
    for attend in (attention.attend_with_sinks, attention.attend_explicitly):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        attention.sinks.grad = None
        y = attend(*leaves, mask, 0.0)
        (y * grad_out).sum().backward()
        results.append([y.detach()] + [t.grad for t in leaves] + [attention.sinks.grad.clone()])
    for name, fused, explicit in zip(["output", "dq", "dk", "dv", "dsinks"], *results):
        torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_sinks_of_minus_infinity_give_plain_softmax_through_the_fused_path():
    """A sink at -inf takes no weight: the fused path then equals softmax attention without sinks
    (and stays finite: the sink's extra feature would otherwise meet the real keys' zeros as 0 * -inf)."""
    config = GPTConfig(vocab_size=11, d_model=16, num_layers=1, num_heads=2, head_dim=8, d_ff=8, max_seq_len=16,
                       dropout=0.0, attention_sinks=True)  # fmt: skip
    attention = Attention(config, 0)
    with torch.no_grad():
        attention.sinks.fill_(float("-inf"))
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    plain = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(attention.attend_with_sinks(q, k, v, mask, 0.0), plain, rtol=0, atol=1e-6)
