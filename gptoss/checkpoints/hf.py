"""Hugging Face naming: configs and state dicts of `GPT2LMHeadModel` and `GptOssForCausalLM`
converted to and from this project's GPTConfig and parameter names.

Pure functions over dicts of tensors: reading and writing files is the job of gptoss.checkpoints.load and .export.
GPT-2's names are already ours; its Conv1D layers store weights (in, out), nn.Linear (out, in).
gpt-oss renames everything and keeps q, k and v apart, which we fuse into one projection.
"""

from __future__ import annotations

import torch

from gptoss.config import GPTConfig

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# ---------------------------------------------------------------------------------------- GPT-2
def config_from_hf_gpt2(hf: dict) -> GPTConfig:
    """GPTConfig from a GPT-2 `config.json` dict."""
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported GPT-2 activation {hf['activation_function']!r}: only the tanh GELU is implemented")
    # attention variants GPT-2's config can switch on, which this model does not implement
    variants = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    unsupported = {key: hf[key] for key, default in variants.items() if hf.get(key, default) != default}
    if unsupported:
        raise ValueError(f"unsupported GPT-2 attention option(s) {unsupported}: only standard GPT-2 attention is implemented")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["n_embd"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        max_seq_len=hf["n_positions"],
        dropout=0.0,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def config_to_hf_gpt2(config: GPTConfig) -> dict:
    """A GPT-2 `config.json` dict for a GPT-2 style GPTConfig."""
    gpt2_style = (
        config.norm == "layernorm" and config.position == "learned" and config.mlp == "gelu"
        and config.head_dim in (None, config.d_model // config.num_heads) and config.kv_heads == config.num_heads
        and not config.attention_sinks and config.sliding_window is None and config.attention_bias
    )  # fmt: skip
    if not gpt2_style:
        raise ValueError(
            "only GPT-2 style configs export as GPT-2: layernorm, learned positions, gelu MLP, multi-head "
            "attention with biases, no sinks, no sliding window"
        )
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.d_ff,
        "n_positions": config.max_seq_len,
        "n_ctx": config.max_seq_len,
        "layer_norm_epsilon": config.norm_eps,
        "activation_function": "gelu_new",
        "tie_word_embeddings": config.tie_embeddings,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
    }


def gpt2_state_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from a GPT2LMHeadModel (or GPT2Model) one; tensors converted one at a time."""
    state = {}
    for name, tensor in hf_state.items():
        if name.endswith("attn.masked_bias") or (name.endswith("attn.bias") and tensor.dim() > 1):
            continue  # causal-mask buffers stored by old checkpoints, not parameters
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # GPT2Model checkpoints have no "transformer." prefix
        state[name] = tensor.t() if name.endswith(GPT2_CONV1D) else tensor
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def gpt2_state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel state dict from ours."""
    return {name: tensor.t().contiguous() if name.endswith(GPT2_CONV1D) else tensor for name, tensor in state.items()}


# ---------------------------------------------------------------------------------------- gpt-oss
def config_from_hf_gpt_oss(hf: dict) -> GPTConfig:
    """GPTConfig from a gpt-oss `config.json` dict (Hugging Face's; OpenAI's original uses the same
    keys for what matters here, or its own names, both accepted)."""
    get = lambda *keys, default=None: next((hf[k] for k in keys if k in hf), default)  # noqa: E731
    required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")
    missing = [key for key in required if get(key) is None]
    if missing:
        raise ValueError(f"gpt-oss config.json lacks {missing}: it is not a complete gpt-oss config")
    num_layers = get("num_hidden_layers")
    layer_types = hf.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    sliding = [t == "sliding_attention" for t in layer_types]
    sliding_window = get("sliding_window", default=128)
    if sliding == [i % 2 == 0 for i in range(num_layers)]:
        pattern = "even"
    elif all(sliding):
        pattern = "all"
    elif not any(sliding):
        pattern, sliding_window = "even", None  # no sliding layer: full attention everywhere
    else:
        raise ValueError(f"unsupported gpt-oss layer_types {layer_types}: expected sliding on even layers, all or none")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 150000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "yarn"):
        raise ValueError(f"unsupported rope_type {rope_type!r}: gpt-oss uses yarn (or plain rope, 'default')")
    scaling = None
    if rope_type == "yarn" or "rope_scaling_factor" in hf:
        scaling = {
            "factor": float(rope.get("factor", hf.get("rope_scaling_factor", 32.0))),
            "beta_fast": float(rope.get("beta_fast", hf.get("rope_ntk_beta", 32.0))),
            "beta_slow": float(rope.get("beta_slow", hf.get("rope_ntk_alpha", 1.0))),
            "original_max_seq_len": int(rope.get("original_max_position_embeddings", hf.get("initial_context_length", 4096))),
        }
        if rope.get("truncate", False):
            raise ValueError("YaRN with truncate=True is not implemented (gpt-oss uses truncate=False)")
    return GPTConfig(
        vocab_size=get("vocab_size"),
        d_model=get("hidden_size"),
        num_layers=num_layers,
        num_heads=get("num_attention_heads"),
        num_kv_heads=get("num_key_value_heads"),
        head_dim=get("head_dim", default=64),
        d_ff=get("intermediate_size"),
        max_seq_len=get("max_position_embeddings", default=131072),
        dropout=0.0,
        norm="rmsnorm",
        norm_eps=get("rms_norm_eps", default=1e-5),
        position="rope",
        rope_theta=float(theta),
        rope_scaling=scaling,
        sliding_window=sliding_window,
        sliding_window_pattern=pattern,
        attention_sinks=True,
        attention_bias=get("attention_bias", default=True),
        mlp="moe",
        num_experts=get("num_local_experts", "num_experts"),
        experts_per_token=get("num_experts_per_tok", "experts_per_token"),
        swiglu_limit=float(get("swiglu_limit", default=7.0)),
        swiglu_alpha=float(get("swiglu_alpha", default=1.702)),
        router_aux_loss_coef=float(get("router_aux_loss_coef", default=0.0)),
        tie_embeddings=get("tie_word_embeddings", default=False),
    )


def config_to_hf_gpt_oss(config: GPTConfig) -> dict:
    """A Hugging Face gpt-oss `config.json` dict for a gpt-oss style GPTConfig."""
    if config.norm != "rmsnorm" or config.position != "rope" or config.mlp != "moe" or not config.attention_sinks:
        raise ValueError("only gpt-oss style configs (rmsnorm, rope, moe, sinks) export as gpt_oss")
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope = {
            "rope_type": "yarn", "rope_theta": config.rope_theta, "factor": s["factor"], "beta_fast": s["beta_fast"],
            "beta_slow": s["beta_slow"], "truncate": False, "original_max_position_embeddings": s["original_max_seq_len"],
        }
    # transformers 5 reads rope_parameters, 4.x rope_theta and rope_scaling: write both
    rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if config.rope_scaling is not None else None
    return {
        "model_type": "gpt_oss",
        "architectures": ["GptOssForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "intermediate_size": config.d_ff,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        # transformers needs a window even with no sliding layer (layer_types then has none)
        "sliding_window": config.sliding_window or config.max_seq_len,
        "layer_types": [
            "sliding_attention" if config.is_sliding_layer(i) else "full_attention" for i in range(config.num_layers)
        ],
        "attention_bias": config.attention_bias,
        "num_local_experts": config.num_experts,
        "num_experts_per_tok": config.experts_per_token,
        "swiglu_limit": config.swiglu_limit,
        "swiglu_alpha": config.swiglu_alpha,
        "tie_word_embeddings": config.tie_embeddings,
        "router_aux_loss_coef": config.router_aux_loss_coef,
    }


# our name (with {i} for the layer) <-> Hugging Face gpt-oss name; q/k/v are handled apart
GPT_OSS_NAMES = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "transformer.h.{i}.ln_1.weight": "model.layers.{i}.input_layernorm.weight",
    "transformer.h.{i}.ln_2.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "transformer.h.{i}.attn.c_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "transformer.h.{i}.attn.c_proj.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "transformer.h.{i}.attn.sinks": "model.layers.{i}.self_attn.sinks",
    "transformer.h.{i}.mlp.router.weight": "model.layers.{i}.mlp.router.weight",
    "transformer.h.{i}.mlp.router.bias": "model.layers.{i}.mlp.router.bias",
    "transformer.h.{i}.mlp.experts.gate_up_proj": "model.layers.{i}.mlp.experts.gate_up_proj",
    "transformer.h.{i}.mlp.experts.gate_up_proj_bias": "model.layers.{i}.mlp.experts.gate_up_proj_bias",
    "transformer.h.{i}.mlp.experts.down_proj": "model.layers.{i}.mlp.experts.down_proj",
    "transformer.h.{i}.mlp.experts.down_proj_bias": "model.layers.{i}.mlp.experts.down_proj_bias",
    # MXFP4-packed experts (gptoss.checkpoints.mxfp4.PackedExperts), present instead of the plain matrices
    "transformer.h.{i}.mlp.experts.gate_up_proj_blocks": "model.layers.{i}.mlp.experts.gate_up_proj_blocks",
    "transformer.h.{i}.mlp.experts.gate_up_proj_scales": "model.layers.{i}.mlp.experts.gate_up_proj_scales",
    "transformer.h.{i}.mlp.experts.down_proj_blocks": "model.layers.{i}.mlp.experts.down_proj_blocks",
    "transformer.h.{i}.mlp.experts.down_proj_scales": "model.layers.{i}.mlp.experts.down_proj_scales",
}
QKV = ("q_proj", "k_proj", "v_proj")


def gpt_oss_name_pairs(num_layers: int, names: dict[str, str] = GPT_OSS_NAMES) -> list[tuple[str, str]]:
    """(our name, their name) for every gpt-oss tensor of `names` (HF's by default; no q/k/v there)."""
    pairs = []
    for ours, theirs in names.items():
        layers = range(num_layers) if "{i}" in ours else [None]
        pairs += [(ours.format(i=i), theirs.format(i=i)) for i in layers]
    return pairs


def gpt_oss_state_from_hf(hf_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict from a GptOssForCausalLM one (experts plain, or MXFP4 `_blocks`/`_scales` kept packed)."""
    state = {ours: hf_state[theirs] for ours, theirs in gpt_oss_name_pairs(config.num_layers) if theirs in hf_state}
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [hf_state.get(f"{prefix}{proj}.{kind}") for proj in QKV]
            if all(p is not None for p in parts):
                state[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(parts, dim=0)  # [q | k | v]
    return state


def gpt_oss_state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A GptOssForCausalLM state dict from ours."""
    hf = {theirs: state[ours] for ours, theirs in gpt_oss_name_pairs(config.num_layers) if ours in state}
    sizes = [config.num_heads * config.head_size] + [config.kv_heads * config.head_size] * 2
    for i in range(config.num_layers):
        for kind in ("weight", "bias"):
            fused = state.get(f"transformer.h.{i}.attn.c_attn.{kind}")
            if fused is not None:
                for proj, part in zip(QKV, fused.split(sizes, dim=0)):
                    hf[f"model.layers.{i}.self_attn.{proj}.{kind}"] = part.contiguous()
    return hf


# ---------------------------------------------------------------------------------------- OpenAI's layout
# our name <-> the name in OpenAI's original gpt-oss checkpoint (`original/` in their repositories;
# gpt_oss/torch/model.py). Its q, k and v are fused [q | k | v] as ours are, and its mlp1 rows
# interleave gate and linear as ours do; its expert matrices are stored (E, out, in), ours (E, in, out).
# Packed experts: `mlp1_weight.blocks` holds the very bytes Hugging Face calls `gate_up_proj_blocks`.
OPENAI_GPT_OSS_NAMES = {
    "transformer.wte.weight": "embedding.weight",
    "transformer.ln_f.weight": "norm.scale",
    "lm_head.weight": "unembedding.weight",
    "transformer.h.{i}.ln_1.weight": "block.{i}.attn.norm.scale",
    "transformer.h.{i}.attn.c_attn.weight": "block.{i}.attn.qkv.weight",
    "transformer.h.{i}.attn.c_attn.bias": "block.{i}.attn.qkv.bias",
    "transformer.h.{i}.attn.sinks": "block.{i}.attn.sinks",
    "transformer.h.{i}.attn.c_proj.weight": "block.{i}.attn.out.weight",
    "transformer.h.{i}.attn.c_proj.bias": "block.{i}.attn.out.bias",
    "transformer.h.{i}.ln_2.weight": "block.{i}.mlp.norm.scale",
    "transformer.h.{i}.mlp.router.weight": "block.{i}.mlp.gate.weight",
    "transformer.h.{i}.mlp.router.bias": "block.{i}.mlp.gate.bias",
    "transformer.h.{i}.mlp.experts.gate_up_proj": "block.{i}.mlp.mlp1_weight",
    "transformer.h.{i}.mlp.experts.gate_up_proj_bias": "block.{i}.mlp.mlp1_bias",
    "transformer.h.{i}.mlp.experts.down_proj": "block.{i}.mlp.mlp2_weight",
    "transformer.h.{i}.mlp.experts.down_proj_bias": "block.{i}.mlp.mlp2_bias",
    "transformer.h.{i}.mlp.experts.gate_up_proj_blocks": "block.{i}.mlp.mlp1_weight.blocks",
    "transformer.h.{i}.mlp.experts.gate_up_proj_scales": "block.{i}.mlp.mlp1_weight.scales",
    "transformer.h.{i}.mlp.experts.down_proj_blocks": "block.{i}.mlp.mlp2_weight.blocks",
    "transformer.h.{i}.mlp.experts.down_proj_scales": "block.{i}.mlp.mlp2_weight.scales",
}
OPENAI_TRANSPOSED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")  # plain expert matrices


def gpt_oss_state_from_openai(openai_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict from one in OpenAI's original gpt-oss layout."""
    pairs = gpt_oss_name_pairs(config.num_layers, OPENAI_GPT_OSS_NAMES)
    return {
        ours: openai_state[theirs].transpose(-1, -2) if ours.endswith(OPENAI_TRANSPOSED) else openai_state[theirs]
        for ours, theirs in pairs
        if theirs in openai_state
    }


def gpt_oss_state_to_openai(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A state dict in OpenAI's original gpt-oss layout from ours."""
    pairs = gpt_oss_name_pairs(config.num_layers, OPENAI_GPT_OSS_NAMES)
    return {
        theirs: state[ours].transpose(-1, -2).contiguous() if ours.endswith(OPENAI_TRANSPOSED) else state[ours]
        for ours, theirs in pairs
        if ours in state
    }
