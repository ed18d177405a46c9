"""Recording a forward pass (gptoss.inspection.record): what it records is what the model computes,
and recording changes nothing, nor leaves anything behind."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss.config import GPTConfig
from gptoss.inspection import inspect, logit_lens, record
from gptoss.model import GPT, apply_rotary


def build(preset: str, seed: int = 0, **overrides) -> GPT:
    """A small model of `preset` with random weights, sinks and biases made non-zero (they start at 0)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset(preset, vocab_size=256, max_seq_len=128, **overrides)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            if block.attn.sinks is not None:
                block.attn.sinks.normal_(0.0, 2.0)
    return model


def text_ids(text: str, length: int) -> torch.Tensor:
    """The first `length` bytes of real text as token ids (1, length): byte ids fit vocab_size 256."""
    return torch.tensor([list(text.encode("utf-8")[:length])])


MODELS = ["tiny", "gpt-oss-tiny"]


@pytest.fixture(params=MODELS)
def model(request) -> GPT:
    # gpt-oss-tiny with an 8-token window, so a 48-token prompt has keys outside it
    return build(request.param, sliding_window=8) if request.param == "gpt-oss-tiny" else build(request.param)


@pytest.fixture
def idx(shakespeare_text) -> torch.Tensor:
    return text_ids(shakespeare_text, 48)


def hooks_and_buffers(model: GPT) -> tuple[int, list[str]]:
    """How many hooks of any kind the model's modules hold, and the names of its buffers."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs")
    count = sum(len(getattr(m, kind, {})) for m in model.modules() for kind in kinds)
    return count, [name for name, _ in model.named_buffers()]


def test_recording_changes_nothing_and_leaves_nothing(model, idx):
    before = hooks_and_buffers(model)
    assert before == (0, [])
    with torch.no_grad():
        plain = model(idx)
    logits, recording = inspect(model, idx)
    assert torch.equal(logits, plain)  # bitwise
    assert hooks_and_buffers(model) == before
    assert len(recording.attention) == len(recording.residual) - 1 == model.config.num_layers


def test_recorded_attention_is_the_softmax_of_that_layer(model, idx, shakespeare_text):
    """Recomputed here by hand from the layer's input; and, times the values, it is what the layer
    fed to its output projection (the fused kernel's result, on layers without sinks)."""
    projection_inputs = {}
    handles = [
        block.attn.c_proj.register_forward_pre_hook(lambda m, a, layer=layer: projection_inputs.__setitem__(layer, a[0]))
        for layer, block in enumerate(model.transformer.h)
    ]
    _, recording = inspect(model, idx)
    for handle in handles:
        handle.remove()
    config, T = model.config, idx.shape[1]
    H, Hkv, hs = config.num_heads, config.kv_heads, config.head_size
    positions = torch.arange(T)
    for layer, block in enumerate(model.transformer.h):
        with torch.no_grad():
            x = block.ln_1(recording.residual[layer])
            qkv = x @ block.attn.c_attn.weight.T + (block.attn.c_attn.bias if block.attn.c_attn.bias is not None else 0)
            q, k, v = qkv.split([H * hs, Hkv * hs, Hkv * hs], dim=-1)
            q, k, v = (t.view(1, T, -1, hs).transpose(1, 2) for t in (q, k, v))
            if model.rotary is not None:
                cos, sin = model.rotary(positions[None])
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
            visible = positions[None, :] <= positions[:, None]
            if block.attn.window is not None:
                visible &= positions[None, :] > positions[:, None] - block.attn.window
            scores = scores.masked_fill(~visible, float("-inf"))
            if block.attn.sinks is not None:
                scores = torch.cat([scores, block.attn.sinks.view(1, H, 1, 1).expand(1, H, T, 1)], dim=-1)
            expected = torch.softmax(scores, dim=-1)
        recorded = recording.attention[layer]
        if block.attn.sinks is not None:
            recorded = torch.cat([recorded, recording.sink_share[layer][..., None]], dim=-1)
        torch.testing.assert_close(recorded, expected, rtol=1e-5, atol=1e-6)
        output = (recording.attention[layer] @ v).transpose(1, 2).reshape(1, T, H * hs)
        torch.testing.assert_close(output, projection_inputs[layer], rtol=1e-4, atol=1e-5)


def check_weights(model: GPT, recording, T: int) -> None:
    """Each query's weights plus its sink share sum to 1; nothing in the future or outside the window."""
    query = torch.arange(T)[:, None]
    key = torch.arange(T)[None, :]
    for layer, weights in enumerate(recording.attention):
        total = weights.sum(-1)
        if recording.sink_share[layer] is not None:
            assert (recording.sink_share[layer] > 0).all()
            total = total + recording.sink_share[layer]
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)
        hidden = key > query
        window = recording.windows[layer]
        if window is not None:
            hidden |= key <= query - window
        assert (weights[..., hidden] == 0).all()  # exactly
        assert (weights[..., ~hidden] > 0).all()


def test_weights_and_sinks_sum_to_one_and_the_window_is_exact(model, idx):
    _, recording = inspect(model, idx)
    if model.config.attention_sinks:
        assert recording.windows[0] == 8 and recording.windows[1] is None
    check_weights(model, recording, idx.shape[1])


@settings(max_examples=12, deadline=None)
@given(length=st.integers(1, 40), window=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_weights_invariants_hold_for_any_length_and_window(length, window, seed):
    model = build("gpt-oss-tiny", seed=seed % 4, sliding_window=window, num_layers=2)
    idx = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))
    _, recording = inspect(model, idx)
    check_weights(model, recording, length)


def test_recorded_routing_is_the_models(idx):
    model = build("gpt-oss-tiny")
    routed, router_logits = {}, {}  # what each expert was given; what each router said
    handles = []
    for layer, block in enumerate(model.transformer.h):
        moe = block.mlp
        handles.append(moe.router.register_forward_hook(lambda m, a, o, layer=layer: router_logits.__setitem__(layer, (a[0], o))))
        original = moe.experts.forward

        def spy(x, e, layer=layer, original=original):
            routed[layer, e] = x
            return original(x, e)

        moe.experts.forward = spy
    logits, recording = inspect(model, idx)
    for block in model.transformer.h:
        del block.mlp.experts.forward
    for handle in handles:
        handle.remove()
    k, T = model.config.experts_per_token, idx.shape[1]
    for layer in range(model.config.num_layers):
        tokens, scores = router_logits[layer]
        experts = recording.experts[layer][0]  # (T, k)
        assert experts.shape == (T, k)
        for e in range(model.config.num_experts):
            rows = (experts == e).any(-1).nonzero().flatten()
            if len(rows):
                assert torch.equal(routed[layer, e], tokens[rows])
            else:
                assert (layer, e) not in routed
        top = scores.topk(k, dim=-1)
        assert torch.equal(experts, top.indices)
        torch.testing.assert_close(recording.expert_weights[layer][0], torch.softmax(top.values, dim=-1))
    assert all(e is None for e in inspect(build("tiny"), idx)[1].experts)  # a dense MLP routes nothing


def test_logit_lens_at_the_last_layer_is_the_models_logits(model, idx):
    logits, recording = inspect(model, idx)
    assert torch.equal(logit_lens(model, recording, model.config.num_layers), logits)
    first = logit_lens(model, recording, 0)
    assert first.shape == logits.shape and not torch.equal(first, logits)


def test_recording_needs_the_whole_sequence(model, idx):
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="without a KV cache"), record(model), torch.no_grad():
        model(idx, cache=cache)
    assert hooks_and_buffers(model) == (0, [])
