"""gpt-oss, proven against two external oracles and by properties.

Oracles (never numbers computed with our own code):
- transformers' `GptOssForCausalLM` (eager attention, eager expert loop) built from a small random
  config: logits, gradients, rotary tables, the MoE block and the router.
- OpenAI's reference implementation (github.com/openai/gpt-oss, gpt_oss/torch/model.py), whose
  short functions are transcribed below (`reference_*`), run in fp32 on the Hugging Face weights:
  it pins down what HF could hide, e.g. the sliding-window boundary.

Random weights are scaled so that every component matters: logits of std ~3, attention sinks of
std 1 (comparable to the real keys' weights), experts that differ and hit the SwiGLU clamps.
"""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import GptOssConfig, GptOssForCausalLM
from transformers.models.gpt_oss.modeling_gpt_oss import (
    GptOssMLP,
    GptOssRotaryEmbedding,
    GptOssTopKRouter,
    load_balancing_loss_func,
)

from conftest import shared_data_path
from gptoss import GPT, GPTConfig
from gptoss.checkpoints.hf import config_from_hf_gpt_oss, gpt_oss_state_from_hf, gpt_oss_state_to_hf
from gptoss.model import Attention, Experts, MixtureOfExperts, RotaryEmbedding, attention_mask
from gptoss.train import Trainer, TrainConfig

# The published rotary settings of both gpt-oss models.
YARN = {
    "rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
    "truncate": False, "original_max_position_embeddings": 4096,
}
WINDOW = 8
VOCAB = 101


def small_hf_config(**overrides) -> GptOssConfig:
    """Several layers, GQA (8 query heads on 2 k/v heads, head_dim x heads != hidden as in the real
    model), 6 experts top-2, a window of 8 and the real YaRN settings."""
    values = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, num_local_experts=6, num_experts_per_tok=2, sliding_window=WINDOW,
        max_position_embeddings=131072, rope_parameters=dict(YARN),
    )
    config = GptOssConfig(**{**values, **overrides})
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"  # the plain per-expert loop, not a fused kernel
    return config


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Give every HF gpt-oss parameter a scale at which it visibly changes the logits."""
    g = torch.Generator().manual_seed(seed)

    def normal(p, std):
        p.copy_(torch.randn(p.shape, generator=g) * std)

    for name, p in module.named_parameters():
        fan_in = p.shape[-2] if "experts" in name and p.dim() == 3 else p.shape[-1]
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
        elif name.endswith("sinks"):
            normal(p, 1.0)
        elif name.endswith("embed_tokens.weight"):
            normal(p, 1.0)
        elif name.endswith("lm_head.weight"):
            normal(p, 3.0 / math.sqrt(fan_in))  # logits of std ~3
        elif name.endswith("gate_up_proj"):
            normal(p, 3.0 / math.sqrt(fan_in))  # pre-activations of std ~3: some pass the clamp at 7
        elif name.endswith("gate_up_proj_bias"):
            normal(p, 1.0)
        elif "router" in name:
            normal(p, 1.0 / math.sqrt(fan_in) if name.endswith("weight") else 0.5)
        elif name.endswith("bias"):
            normal(p, 0.3)
        else:
            normal(p, 1.0 / math.sqrt(fan_in))


def ours_from_hf(hf_model, config: GPTConfig | None = None) -> GPT:
    """Our GPT with the HF model's weights, through gptoss.checkpoints.hf."""
    config = config or config_from_hf_gpt_oss(hf_model.config.to_dict())
    model = GPT(config).eval()
    model.load_state_dict(gpt_oss_state_from_hf(hf_model.state_dict(), config), strict=True)
    return model


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = GptOssForCausalLM(small_hf_config()).eval()
    randomize_(model, seed=1)
    return model


@pytest.fixture(scope="module")
def our_model(hf_model):
    return ours_from_hf(hf_model)


# ------------------------------------------------------------------ OpenAI's reference, transcribed
def reference_rope(head_dim, base, scaling_factor, initial_context_length=4096, ntk_alpha=1.0, ntk_beta=32.0):
    """RotaryEmbedding._compute_concentration_and_inv_freq of OpenAI's reference."""
    freq = base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
    if scaling_factor > 1.0:
        concentration = 0.1 * math.log(scaling_factor) + 1.0
        d_half = head_dim / 2
        low = d_half * math.log(initial_context_length / (ntk_beta * 2 * math.pi)) / math.log(base)
        high = d_half * math.log(initial_context_length / (ntk_alpha * 2 * math.pi)) / math.log(base)
        assert 0 < low < high < d_half - 1
        interpolation = 1.0 / (scaling_factor * freq)
        extrapolation = 1.0 / freq
        ramp = (torch.arange(d_half, dtype=torch.float32) - low) / (high - low)
        mask = 1 - ramp.clamp(0, 1)
        inv_freq = interpolation * (1 - mask) + extrapolation * mask
    else:
        concentration = 1.0
        inv_freq = 1.0 / freq
    return concentration, inv_freq


def reference_apply_rotary(x, cos, sin):
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def reference_sdpa(Q, K, V, S, sm_scale, sliding_window=0):
    """OpenAI's sdpa: Q (T, kv_heads, q_mult, d), K/V (T, kv_heads, d), S sinks (heads,)."""
    n_tokens, n_heads, q_mult, d_head = Q.shape
    K = K[:, :, None, :].expand(-1, -1, q_mult, -1)
    V = V[:, :, None, :].expand(-1, -1, q_mult, -1)
    S = S.reshape(n_heads, q_mult, 1, 1).expand(-1, -1, n_tokens, -1)
    mask = torch.triu(Q.new_full((n_tokens, n_tokens), -float("inf")), diagonal=1)
    if sliding_window > 0:
        mask += torch.tril(mask.new_full((n_tokens, n_tokens), -float("inf")), diagonal=-sliding_window)
    QK = torch.einsum("qhmd,khmd->hmqk", Q, K)
    QK *= sm_scale
    QK += mask[None, None, :, :]
    QK = torch.cat([QK, S], dim=-1)
    W = torch.softmax(QK, dim=-1)
    W = W[..., :-1]
    attn = torch.einsum("hmqk,khmd->qhmd", W, V)
    return attn.reshape(n_tokens, -1)


def reference_swiglu(x, alpha=1.702, limit=7.0):
    x_glu, x_linear = x[..., ::2], x[..., 1::2]
    x_glu = x_glu.clamp(min=None, max=limit)
    x_linear = x_linear.clamp(min=-limit, max=limit)
    return x_glu * torch.sigmoid(alpha * x_glu) * (x_linear + 1)


def reference_rmsnorm(x, scale, eps=1e-5):
    t = x.float()
    return (t * torch.rsqrt(torch.mean(t**2, dim=-1, keepdim=True) + eps) * scale).to(x.dtype)


def reference_forward(hf_state: dict, hf_config: GptOssConfig, tokens: torch.Tensor) -> torch.Tensor:
    """OpenAI's Transformer.forward on one sequence (T,) -> logits (T, vocab), weights taken from a
    Hugging Face state dict (the reference stores expert matrices (out, in), HF (in, out))."""
    c = hf_config
    heads, kv_heads, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    r = c.rope_parameters
    concentration, inv_freq = reference_rope(
        hd, r["rope_theta"], r["factor"], r["original_max_position_embeddings"], r["beta_slow"], r["beta_fast"]
    )
    freqs = torch.einsum("i,j->ij", torch.arange(len(tokens), dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos() * concentration, freqs.sin() * concentration
    w = lambda name: hf_state[name]  # noqa: E731
    x = w("model.embed_tokens.weight")[tokens]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        # attention block; OpenAI: "Only apply sliding window to every other layer"
        sliding_window = c.sliding_window if i % 2 == 0 else 0
        t = reference_rmsnorm(x, w(p + "input_layernorm.weight"), c.rms_norm_eps)
        q = F.linear(t, w(p + "self_attn.q_proj.weight"), w(p + "self_attn.q_proj.bias"))
        k = F.linear(t, w(p + "self_attn.k_proj.weight"), w(p + "self_attn.k_proj.bias"))
        v = F.linear(t, w(p + "self_attn.v_proj.weight"), w(p + "self_attn.v_proj.bias"))
        q = reference_apply_rotary(q.view(-1, heads, hd), cos, sin).view(-1, kv_heads, heads // kv_heads, hd)
        k = reference_apply_rotary(k.view(-1, kv_heads, hd), cos, sin)
        v = v.view(-1, kv_heads, hd)
        t = reference_sdpa(q, k, v, w(p + "self_attn.sinks"), 1 / math.sqrt(hd), sliding_window)
        x = x + F.linear(t, w(p + "self_attn.o_proj.weight"), w(p + "self_attn.o_proj.bias"))
        # MLP block
        t = reference_rmsnorm(x, w(p + "post_attention_layernorm.weight"), c.rms_norm_eps)
        g = F.linear(t, w(p + "mlp.router.weight"), w(p + "mlp.router.bias"))
        experts = torch.topk(g, k=c.num_experts_per_tok, dim=-1, sorted=True)
        expert_weights = torch.nn.functional.softmax(experts.values, dim=1)
        idx = experts.indices
        mlp1_weight = w(p + "mlp.experts.gate_up_proj").transpose(1, 2)[idx]
        mlp1_bias = w(p + "mlp.experts.gate_up_proj_bias")[idx]
        t = torch.einsum("beck,bk->bec", mlp1_weight, t) + mlp1_bias
        t = reference_swiglu(t, limit=c.swiglu_limit)
        mlp2_weight = w(p + "mlp.experts.down_proj").transpose(1, 2)[idx]
        t = torch.einsum("beck,bek->bec", mlp2_weight, t) + w(p + "mlp.experts.down_proj_bias")[idx]
        x = x + torch.einsum("bec,be->bc", t, expert_weights)
    x = reference_rmsnorm(x, w("model.norm.weight"), c.rms_norm_eps)
    return F.linear(x, w("lm_head.weight"))


# ------------------------------------------------------------------ presets
def test_parameter_counts_on_meta():
    assert GPT(GPTConfig.preset("gpt-oss-20b"), device="meta").num_parameters() == 20_914_757_184
    assert GPT(GPTConfig.preset("gpt-oss-120b"), device="meta").num_parameters() == 116_829_156_672


# OpenAI's original config.json of each model (its own key names)
OPENAI_CONFIG = dict(
    vocab_size=201088, hidden_size=2880, intermediate_size=2880, swiglu_limit=7.0, head_dim=64,
    num_attention_heads=64, num_key_value_heads=8, sliding_window=128, initial_context_length=4096,
    rope_theta=150000, rope_scaling_factor=32.0, rope_ntk_alpha=1, rope_ntk_beta=32, experts_per_token=4,
)


@pytest.mark.parametrize("preset, layers, experts", [("gpt-oss-20b", 24, 32), ("gpt-oss-120b", 36, 128)])
def test_presets_are_the_published_configs(preset, layers, experts):
    ours = GPTConfig.preset(preset)
    published = dict(
        d_model=2880, num_layers=layers, num_heads=64, num_kv_heads=8, head_dim=64, d_ff=2880, vocab_size=201088,
        num_experts=experts, experts_per_token=4, sliding_window=128, sliding_window_pattern="even",
        rope_theta=150000.0, max_seq_len=131072, swiglu_limit=7.0, swiglu_alpha=1.702, norm_eps=1e-5,
        rope_scaling={"factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "original_max_seq_len": 4096},
        norm="rmsnorm", position="rope", mlp="moe", attention_sinks=True, attention_bias=True, tie_embeddings=False,
    )
    assert {name: getattr(ours, name) for name in published} == published
    # the same through both config formats: transformers' defaults (the 120b) and OpenAI's files
    hf = GptOssConfig(num_hidden_layers=layers, num_local_experts=experts).to_dict()
    openai = dict(OPENAI_CONFIG, num_hidden_layers=layers, num_experts=experts)
    for source in (hf, openai):
        converted = config_from_hf_gpt_oss(source)
        assert {name: getattr(converted, name) for name in published} == published


# ------------------------------------------------------------------ rotary tables
@pytest.mark.parametrize(
    "preset, rope_parameters",
    [("gpt-oss-20b", YARN), ("gpt-oss-tiny", {"rope_type": "default", "rope_theta": 10000.0})],
)
def test_rotary_tables_match_transformers_and_openai(preset, rope_parameters):
    config = GPTConfig.preset(preset)
    hf_config = GptOssConfig(
        head_dim=config.head_size, num_attention_heads=config.num_heads, rope_parameters=dict(rope_parameters)
    )
    theirs = GptOssRotaryEmbedding(hf_config)
    ours = RotaryEmbedding(config)
    positions = torch.cat([torch.arange(4096), torch.arange(4096, 131072, 997)])[None]  # (1, T)
    cos, sin = ours(positions)  # (1, 1, T, hs/2)
    their_cos, their_sin = theirs(torch.zeros((), dtype=torch.float32), positions)  # (1, T, hs/2)
    torch.testing.assert_close(cos[:, 0], their_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin[:, 0], their_sin, rtol=0, atol=1e-6)
    s = config.rope_scaling or {"factor": 1.0, "original_max_seq_len": 4096, "beta_slow": 1.0, "beta_fast": 32.0}
    concentration, inv_freq = reference_rope(
        config.head_size, config.rope_theta, s["factor"], s["original_max_seq_len"], s["beta_slow"], s["beta_fast"]
    )
    assert ours.scale == pytest.approx(concentration, rel=1e-12)
    torch.testing.assert_close(ours.inv_freq, inv_freq, rtol=1e-6, atol=0)
    if config.rope_scaling:
        assert concentration == pytest.approx(0.1 * math.log(32) + 1)


# ------------------------------------------------------------------ whole-model parity
@pytest.mark.parametrize("T", [5, WINDOW, WINDOW + 1, 40])
def test_logits_match_transformers_and_openai_reference(hf_model, our_model, T):
    """Sequences shorter than, equal to and longer than the window, batch of 2, fp32."""
    tokens = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        theirs = hf_model(tokens).logits
        ours = our_model(tokens)
        reference = torch.stack([reference_forward(hf_model.state_dict(), hf_model.config, row) for row in tokens])
    assert theirs.std() > 1.0  # the weights are at a scale where a mismatch would show
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - reference).abs().max() < 1e-4


@pytest.mark.parametrize(
    "change",
    [
        dict(sliding_window=WINDOW + 1),  # the boundary off by one either way
        dict(sliding_window=WINDOW - 1),
        dict(sliding_window_pattern="all"),
        dict(rope_scaling=None),
        dict(swiglu_limit=1e9),
        dict(swiglu_alpha=1.0),
        dict(experts_per_token=3),
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_parity_test_would_catch_a_wrong_component(hf_model, change):
    """Each of these mistakes moves the logits far beyond the 1e-4 tolerance of the parity test."""
    config = config_from_hf_gpt_oss(hf_model.config.to_dict())
    wrong = ours_from_hf(hf_model, GPTConfig.from_dict({**config.to_dict(), **change}))
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (wrong(tokens) - hf_model(tokens).logits).abs().max() > 1e-2


def test_gradients_match_transformers(hf_model, our_model):
    """Training sees the same function: the loss gradient of every parameter agrees."""
    tokens = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(7))
    targets = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(8))
    grads = {}
    for name, model, logits_of in (
        ("hf", hf_model, lambda m: m(tokens).logits),
        ("ours", our_model, lambda m: m(tokens)),
    ):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(logits_of(model).reshape(-1, VOCAB), targets.reshape(-1)).backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
    expected = gpt_oss_state_from_hf(grads["hf"], our_model.config)
    assert expected.keys() == grads["ours"].keys()
    for name, grad in grads["ours"].items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-3, atol=1e-5, msg=name)
    assert grads["ours"]["transformer.h.0.mlp.router.weight"].abs().sum() > 0


def test_export_to_transformers_round_trips(hf_model, our_model):
    """gpt_oss_state_to_hf gives back exactly the HF state, which HF loads strictly."""
    exported = gpt_oss_state_to_hf(our_model.state_dict(), our_model.config)
    original = hf_model.state_dict()
    assert exported.keys() == original.keys()
    for name in original:
        assert torch.equal(exported[name], original[name]), name


def test_cached_decoding_past_the_window_matches_transformers(hf_model, our_model):
    """Token by token through our KV cache, far past the window, vs HF on the whole sequence."""
    tokens = torch.randint(0, VOCAB, (2, 3 * WINDOW), generator=torch.Generator().manual_seed(3))
    cache = our_model.new_cache(2, capacity=3 * WINDOW)
    with torch.no_grad():
        expected = hf_model(tokens).logits
        steps = [our_model(tokens[:, :11], cache=cache)]  # a prefill longer than the window
        steps += [our_model(tokens[:, t : t + 1], cache=cache) for t in range(11, tokens.shape[1])]
    assert (torch.cat(steps, dim=1) - expected).abs().max() < 1e-4


# ------------------------------------------------------------------ the sliding-window boundary
def probe_config(window: int, T: int) -> GPTConfig:
    """One head as wide as the sequence, so a one-hot per position can pass through attention."""
    return GPTConfig(
        vocab_size=2, d_model=T, num_layers=2, num_heads=1, head_dim=T, d_ff=4, max_seq_len=T, dropout=0.0,
        norm="rmsnorm", position="rope", sliding_window=window, attention_sinks=True, tie_embeddings=False,
    )


@pytest.mark.parametrize("layer", [0, 1])
def test_window_boundary_by_explicit_construction(layer):
    """Query i on a sliding layer sees keys i-127..i (window 128), on a full layer 0..i; with a sink
    logit s the weights over the n visible keys are 1/(n + e^s) each, summing to n/(n + e^s) < 1.

    Construction: q = k = 0 (all scores equal), v = identity on a one-hot of each position, output
    projection = identity. Then output row i is the attention weight of query i on every key.
    """
    T, window, sink = 300, 128, 0.5
    attention = Attention(probe_config(window, T), layer).eval()
    with torch.no_grad():
        attention.c_attn.weight.zero_()
        attention.c_attn.bias.zero_()
        attention.c_attn.weight[2 * T :] = torch.eye(T)  # rows of v
        attention.c_proj.weight.copy_(torch.eye(T))
        attention.c_proj.bias.zero_()
        attention.sinks.fill_(sink)
        positions = torch.arange(T)[None]
        weights = attention(torch.eye(T)[None], None, attention_mask(positions, positions, attention.window))[0]  # (query, key)
    for i in range(T):
        first = max(0, i - 127) if layer % 2 == 0 else 0
        visible = torch.nonzero(weights[i]).flatten().tolist()
        assert visible == list(range(first, i + 1)), i
        n = i + 1 - first
        torch.testing.assert_close(weights[i, first : i + 1], torch.full((n,), 1 / (n + math.exp(sink))))


def test_attention_layers_match_openai_sdpa():
    """Our attention (GQA, RoPE/YaRN, sinks, window) on a sliding and a full layer equals OpenAI's
    sdpa, whose window mask is built by triu/tril, for a sequence three windows long."""
    config = GPTConfig.preset(
        "gpt-oss-tiny", d_model=48, num_heads=6, num_kv_heads=2, head_dim=16, sliding_window=5,
        rope_theta=150000.0, rope_scaling=GPTConfig.preset("gpt-oss-20b").rope_scaling,
    )
    torch.manual_seed(0)
    T, heads, kv_heads, hd = 15, config.num_heads, config.kv_heads, config.head_size
    x = torch.randn(1, T, config.d_model)
    positions = torch.arange(T)[None]
    concentration, inv_freq = reference_rope(hd, 150000.0, 32.0)
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos() * concentration, freqs.sin() * concentration
    for layer in (0, 1):
        attention = Attention(config, layer).eval()
        with torch.no_grad():
            for p in attention.parameters():
                p.normal_(0, 0.5)
            ours = attention(x, RotaryEmbedding(config)(positions), attention_mask(positions, positions, attention.window))[0]
            qkv = F.linear(x[0], attention.c_attn.weight, attention.c_attn.bias)  # OpenAI's fused [q | k | v]
            q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
            q = reference_apply_rotary(q.view(T, heads, hd), cos, sin).view(T, kv_heads, heads // kv_heads, hd)
            k = reference_apply_rotary(k.view(T, kv_heads, hd), cos, sin)
            window = config.sliding_window if layer % 2 == 0 else 0
            t = reference_sdpa(q, k, v.view(T, kv_heads, hd), attention.sinks, 1 / math.sqrt(hd), window)
            reference = F.linear(t, attention.c_proj.weight, attention.c_proj.bias)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ properties
def one_layer_config(kind: str, window: int = 4) -> GPTConfig:
    """A one-layer gpt-oss-style model whose only layer is of the given kind."""
    common = dict(
        vocab_size=53, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=16,
        max_seq_len=64, dropout=0.0, norm="rmsnorm", position="rope", tie_embeddings=False,
    )
    kinds = {
        "full": dict(),
        "full+sinks": dict(attention_sinks=True),
        "sliding": dict(sliding_window=window, sliding_window_pattern="all"),
        "sliding+sinks": dict(sliding_window=window, sliding_window_pattern="all", attention_sinks=True),
        "moe": dict(mlp="moe", num_experts=4, experts_per_token=2, attention_sinks=True),
    }
    return GPTConfig(**common, **kinds[kind])


def randomized_model(config: GPTConfig, seed: int) -> GPT:
    """A model with every parameter (biases and sinks included) random at std 0.5."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


LAYER_KINDS = ["full", "full+sinks", "sliding", "sliding+sinks", "moe"]


@pytest.mark.parametrize("kind", LAYER_KINDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_causality_of_every_layer_kind(kind, data):
    """Changing tokens after position t never changes the logits at or before t."""
    model = randomized_model(one_layer_config(kind), seed=data.draw(st.integers(0, 99), label="weights"))
    T = data.draw(st.integers(2, 24), label="T")
    t = data.draw(st.integers(0, T - 2), label="t")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    a = torch.randint(0, 53, (2, T), generator=g)
    b = a.clone()
    b[:, t + 1 :] = torch.randint(0, 53, (2, T - t - 1), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, : t + 1], model(b)[:, : t + 1], rtol=0, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(window=st.integers(1, 8), T=st.integers(2, 30), seed=st.integers(0, 2**31 - 1))
@example(window=8, T=14, seed=10121)  # the edge key's weight is ~1e-7: the output moves by ~1e-6
def test_sliding_layer_output_ignores_inputs_outside_the_window(window, T, seed):
    """A single sliding-window attention layer: its output at i is unchanged when every input
    before i - window + 1 changes, and does change when input i - window + 1 changes."""
    config = one_layer_config("sliding+sinks", window)
    g = torch.Generator().manual_seed(seed)
    attention = Attention(config, 0).eval()
    with torch.no_grad():
        for p in attention.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        i = int(torch.randint(0, T, (), generator=g))
        first = i - window + 1
        x = torch.randn(1, T, config.d_model, generator=g)
        positions = torch.arange(T)[None]
        rope = RotaryEmbedding(config)(positions)
        mask = attention_mask(positions, positions, attention.window)
        y = attention(x, rope, mask)[0, i]
        if first > 0:
            outside = x.clone()
            outside[:, :first] = torch.randn(1, first, config.d_model, generator=g)
            torch.testing.assert_close(attention(outside, rope, mask)[0, i], y, rtol=0, atol=0)
        if first >= 0:
            edge = x.clone()
            edge[:, first] += 1.0
            # any change at all: the edge key's attention weight can be ~1e-7 (a change of ~1e-6
            # in outputs of ~10, inside allclose's tolerance), where outside the window it is 0
            assert not torch.equal(attention(edge, rope, mask)[0, i], y)


@pytest.mark.parametrize("num_layers", [1, 3])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_stacked_sliding_layers_have_receptive_field_layers_times_window_minus_one(num_layers, data):
    """A whole model whose L layers all slide over window w: logits at i are unchanged when tokens
    before i - L(w-1) change (each layer reaches w-1 positions further back). For L=1 this is the
    window itself: i - w + 1 .. i."""
    window = data.draw(st.integers(1, 6), label="window")
    config = GPTConfig.from_dict({**one_layer_config("sliding+sinks", window).to_dict(), "num_layers": num_layers})
    model = randomized_model(config, seed=data.draw(st.integers(0, 99), label="weights"))
    reach = num_layers * (window - 1)
    T = data.draw(st.integers(reach + 2, reach + 20), label="T")
    i = data.draw(st.integers(reach + 1, T - 1), label="i")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    a = torch.randint(0, 53, (1, T), generator=g)
    b = a.clone()
    b[0, : i - reach] = torch.randint(0, 53, (i - reach,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(a)[0, i], model(b)[0, i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "sliding"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 30))
def test_sinks_of_minus_infinity_are_plain_softmax_attention(kind, seed, T):
    """With every sink at -inf the sink column gets weight 0: the model equals the same weights
    without sinks, whose attention is PyTorch's scaled_dot_product_attention."""
    config = one_layer_config(kind + "+sinks")
    with_sinks = randomized_model(config, seed % 1000)
    without = GPT(GPTConfig.from_dict({**config.to_dict(), "attention_sinks": False})).eval()
    state = {name: p for name, p in with_sinks.state_dict().items() if not name.endswith("sinks")}
    without.load_state_dict(state, strict=True)
    with torch.no_grad():
        with_sinks.transformer.h[0].attn.sinks.fill_(float("-inf"))
        tokens = torch.randint(0, 53, (2, T), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(with_sinks(tokens), without(tokens), rtol=0, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(
    num_experts=st.integers(2, 8), data=st.data(), tokens=st.integers(1, 40), seed=st.integers(0, 2**31 - 1)
)
def test_routing_weights_sum_to_one_over_exactly_k_distinct_experts(num_experts, data, tokens, seed):
    """Every expert made constant (zero weights) with output = one-hot of its index: the MoE output
    of a token is then its routing weight on every expert. It must have exactly k positive
    entries summing to 1, the same as transformers' GptOssTopKRouter gives."""
    k = data.draw(st.integers(1, num_experts), label="k")
    d_model = 16
    config = GPTConfig.preset("gpt-oss-tiny", d_model=d_model, num_experts=num_experts, experts_per_token=k)
    moe = MixtureOfExperts(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        moe.router.weight.copy_(torch.randn(num_experts, d_model, generator=g))
        moe.router.bias.copy_(torch.randn(num_experts, generator=g))
        moe.experts.gate_up_proj.zero_()
        moe.experts.gate_up_proj_bias.zero_()
        moe.experts.down_proj.zero_()
        moe.experts.down_proj_bias.copy_(torch.eye(num_experts, d_model))
        x = torch.randn(1, tokens, d_model, generator=g)
        weights = moe(x)[0][0, :, :num_experts]  # (tokens, E)

        assert ((weights > 0).sum(-1) == k).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(tokens), rtol=0, atol=1e-6)
        router = GptOssTopKRouter(small_hf_config(hidden_size=d_model, num_local_experts=num_experts, num_experts_per_tok=k))
        router.load_state_dict(moe.router.state_dict())
        _, scores, indices = router(x[0])
        expected = torch.zeros(tokens, num_experts).scatter(1, indices, scores)
        torch.testing.assert_close(weights, expected, rtol=0, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(tokens=st.sampled_from([1, 2, 7, 64]), seed=st.integers(0, 2**31 - 1))
def test_moe_block_matches_transformers(tokens, seed):
    """Our grouped-by-expert MoE equals transformers' GptOssMLP (router + per-expert loop)."""
    hf_config = small_hf_config(num_local_experts=8, num_experts_per_tok=3)
    theirs = GptOssMLP(hf_config).eval()
    randomize_(theirs, seed % 10_000)
    ours = MixtureOfExperts(config_from_hf_gpt_oss(hf_config.to_dict())).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same names inside the block
    x = torch.randn(2, tokens, hf_config.hidden_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    num_experts=st.integers(1, 8), data=st.data(), tokens=st.integers(1, 24), seed=st.integers(0, 2**31 - 1),
    skew=st.sampled_from([0.0, 1.0, 4.0]),
)
def test_padded_batch_and_per_expert_loop_match_a_per_token_reference(num_experts, data, tokens, seed, skew):
    """Experts.mix both ways (the padded batch and the per-expert loop), forward and gradients,
    against the definition: each token, alone, through each of its k experts (Experts.forward),
    summed with its weights. Skewed routing leaves experts empty and pads others heavily."""
    k = data.draw(st.integers(1, num_experts), label="k")
    config = GPTConfig.preset("gpt-oss-tiny", d_model=8, d_ff=6, num_experts=num_experts, experts_per_token=k)
    experts = Experts(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(tokens, 8, generator=g)
    logits = torch.randn(tokens, num_experts, generator=g) + skew * torch.arange(num_experts)
    top_experts = logits.topk(k, dim=-1).indices
    top_weights = torch.softmax(torch.randn(tokens, k, generator=g), -1)

    results = {}
    for padded in (True, False):
        experts.use_padded_batch = lambda sizes, tokens, padded=padded: padded
        xs, ws = x.clone().requires_grad_(), top_weights.clone().requires_grad_()
        out = experts.mix(xs, top_experts, ws)
        out.backward(torch.ones_like(out))
        results[padded] = (out.detach(), xs.grad, ws.grad, *(p.grad.clone() for p in experts.parameters()))
        experts.zero_grad(set_to_none=True)
    del experts.use_padded_batch
    with torch.no_grad():
        expected = torch.stack([sum(top_weights[i, j] * experts(x[i : i + 1], int(top_experts[i, j]))[0]
                                    for j in range(k)) for i in range(tokens)])  # fmt: skip
    torch.testing.assert_close(results[True][0], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results[False][0], expected, rtol=1e-5, atol=1e-4)
    for padded_grad, loop_grad in zip(results[True][1:], results[False][1:]):
        torch.testing.assert_close(padded_grad, loop_grad, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ training
def test_gradients_reach_router_and_experts_and_aux_loss_is_added():
    config = GPTConfig.preset("gpt-oss-tiny", vocab_size=53, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                              head_dim=8, d_ff=16, router_aux_loss_coef=0.05)
    torch.manual_seed(0)
    model = GPT(config).train()
    router_logits, layer_aux = [], []  # per layer: the router's logits, and the aux loss its MoE returned
    hooks = [block.mlp.router.register_forward_hook(lambda m, i, out: router_logits.append(out)) for block in model.transformer.h]
    hooks += [block.mlp.register_forward_hook(lambda m, i, out: layer_aux.append(out[1])) for block in model.transformer.h]
    tokens = torch.randint(0, 53, (4, 32))
    targets = torch.randint(0, 53, (4, 32))
    logits, loss = model(tokens, targets)
    for hook in hooks:
        hook.remove()

    _, _, aux = model(tokens, targets, return_aux_loss=True)  # the same forward pass, its terms apart
    cross_entropy = F.cross_entropy(logits.reshape(-1, 53), targets.reshape(-1))
    torch.testing.assert_close(loss, cross_entropy + 0.05 * aux)
    # ours averages per-layer Switch losses; transformers pools layers, so compare layer by layer
    torch.testing.assert_close(aux, sum(layer_aux) / 2)
    for aux_of_layer, logits_of_layer in zip(layer_aux, router_logits):
        expected = load_balancing_loss_func((logits_of_layer.detach(),), config.num_experts, config.experts_per_token)
        torch.testing.assert_close(aux_of_layer.detach(), expected)

    loss.backward()
    for block, logits_of_layer in zip(model.transformer.h, router_logits):
        assert block.mlp.router.weight.grad.abs().sum() > 0
        assert block.mlp.router.bias.grad.abs().sum() > 0
        # exactly the experts some token was routed to receive a gradient
        routed = torch.isin(torch.arange(config.num_experts), logits_of_layer.topk(config.experts_per_token).indices)
        for grad in (block.mlp.experts.gate_up_proj.grad, block.mlp.experts.down_proj.grad):
            assert ((grad.abs().sum(dim=(1, 2)) > 0) == routed).all()

    # the aux loss alone trains every router; the last layer's experts (downstream of all routers)
    # get nothing from it, the earlier ones do through the next layers' router inputs
    model.zero_grad(set_to_none=True)
    _, _, aux = model(tokens, targets, return_aux_loss=True)
    aux.backward()
    assert all(block.mlp.router.weight.grad.abs().sum() > 0 for block in model.transformer.h)
    assert model.transformer.h[-1].mlp.experts.gate_up_proj.grad is None

    # evaluation: no aux loss, the loss is the plain cross-entropy
    model.eval()
    with torch.no_grad():
        logits, loss = model(tokens, targets)
        assert model(tokens, targets, return_aux_loss=True)[2] is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 53), targets.reshape(-1)))


def test_trainer_trains_gpt_oss_tiny_and_logs_the_aux_loss(tmp_path):
    """gpt-oss-tiny (2 layers) through the project's trainer on Tiny Shakespeare: the loss falls
    well below its start and metrics.csv logs the load-balancing loss at every row."""
    corpus = shared_data_path("tinyshakespeare/input.txt")
    config = TrainConfig.from_dict(dict(
        run_dir=str(tmp_path / "run"), corpus=str(corpus), data_dir=str(tmp_path / "data"), max_chars=100_000,
        model={"preset": "gpt-oss-tiny", "num_layers": 2}, seq_len=64, batch_size=8, max_steps=40, warmup_steps=5,
        learning_rate=3e-3, eval_every=40, eval_sequences=8, checkpoint_every=0, log_every=5, progress=False,
        tensorboard=False, device="cpu",
    ))  # fmt: skip
    summary = Trainer(config).fit()
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["train_loss"]]
    losses = [float(row["train_loss"]) for row in rows]
    assert losses[0] > 3.0 and losses[-1] < losses[0] - 0.8, losses
    assert summary["last_eval"]["val_loss"] < losses[0] - 0.8
    # uniform routing gives k; a router that collapsed onto few experts would give up to E
    assert all(0 < float(row["aux_loss"]) < 3 * 2 * 2 for row in rows)  # 2 layers, k = 2
