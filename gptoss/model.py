"""The model: one decoder-only transformer that is GPT-2 or gpt-oss depending on its GPTConfig.

    token ids (B, T)
        -> token embedding (+ learned position embedding, GPT-2 only)
        -> num_layers x Block:  x = x + Attention(Norm(x));  x = x + MLP(Norm(x))
        -> final Norm -> unembedding (tied to the token embedding in GPT-2)
        -> logits (B, T, vocab_size)

Every gpt-oss idea is one component here, switched on by the config:
  Norm:       LayerNorm (GPT-2) | RMSNorm in fp32 (gpt-oss)
  positions:  learned embedding (GPT-2) | rotary embedding with YaRN scaling (gpt-oss)
  Attention:  multi-head | grouped-query (fewer k/v heads); full causal | sliding window on even
              layers; plain softmax | softmax with one learned "sink" logit per head
  MLP:        GELU feed-forward (GPT-2) | mixture of clamped-SwiGLU experts, top-k routed (gpt-oss)

Parameter names follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn.weight`, ...), so GPT-2
checkpoints map one to one (their Conv1D weights are transposed nn.Linear weights).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptoss.config import GPTConfig, yarn_concentration
from gptoss.kv_cache import ChunkPlan, KVCache, LayerKVCache


# ---------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias), computed in fp32 as gpt-oss does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # weight * x / sqrt(mean(x^2) + eps) over the last dimension, in fp32: PyTorch's fused
        # F.rms_norm computes exactly that in one kernel (the written-out form is ~6 kernels)
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    """The normalisation layer the config asks for."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


# ---------------------------------------------------------------------------------------- RoPE
def rope_inverse_frequencies(config: GPTConfig) -> tuple[torch.Tensor, float]:
    """Per-pair rotation speeds (head_size/2,) and the factor that multiplies cos and sin.

    Plain RoPE rotates pair i at speed theta^(-2i/d). YaRN (when config.rope_scaling is set) keeps
    the fast pairs (many turns within the original context) as they are, slows the slow pairs
    down by `factor` (interpolation), blends linearly in between, and scales cos/sin by a
    "concentration" 0.1 ln(factor) + 1 to keep attention logits sharp at long range.
    """
    dim, base = config.head_size, config.rope_theta
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    if config.rope_scaling is None:
        return inv_freq, 1.0
    s = config.rope_scaling
    factor, original_len = float(s["factor"]), s["original_max_seq_len"]

    def pair_index_with_rotations(num_rotations: float) -> float:
        # the pair index i at which position `original_len` has turned `num_rotations` times
        return dim * math.log(original_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(pair_index_with_rotations(s["beta_fast"]), 0.0)
    high = min(pair_index_with_rotations(s["beta_slow"]), dim - 1.0)
    if low == high:
        high += 0.001  # avoid a division by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 for fast pairs (kept), 0 for slow pairs (interpolated)
    inv_freq = inv_freq / factor * (1 - keep) + inv_freq * keep
    return inv_freq, yarn_concentration(factor)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embeddings, computed for the positions asked for."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        # a plain attribute, not a buffer: derived from the config, never saved, and always real
        # (a model built on the meta device and loaded from a checkpoint needs no recomputation)
        self.inv_freq, self.scale = rope_inverse_frequencies(config)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) int -> cos, sin each (B, 1, T, head_size/2) in fp32."""
        angles = positions.float()[..., None] * self.inv_freq.to(positions.device)  # (B, T, head_size/2)
        return (angles.cos() * self.scale)[:, None], (angles.sin() * self.scale)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, head_size) by the position angles, rotate-half convention.

    Pair i is (x[i], x[i + head_size/2]): the first and the second half of the head.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return rotated.to(x.dtype)


# ---------------------------------------------------------------------------------------- attention
CAUSAL = "causal"  # an attention "mask" meaning plain causal attention, which the fused kernel builds itself


def attention_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Which keys each query may see: (B, 1, T, S) bool from positions (B, T) and (B, S).

    A key is visible when it is not in the future and, for sliding-window layers, when it is among
    the last `window` positions (query i sees keys j with i - window < j <= i). Keys with a negative
    position are empty cache slots or padding and are never visible.
    """
    q = query_positions[:, None, :, None]  # (B, 1, T, 1)
    k = key_positions[:, None, None, :]  # (B, 1, 1, S)
    visible = (k >= 0) & (k <= q)
    if window is not None:
        visible &= k > q - window
    # A padding query sees nothing; let it see everything so its softmax stays finite. Its output
    # is never used.
    return visible | ~visible.any(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Causal self-attention: multi-head or grouped-query, optional sliding window and sinks."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.num_heads, self.kv_heads, self.head_size = config.num_heads, config.kv_heads, config.head_size
        self.window = config.sliding_window if config.is_sliding_layer(layer) else None
        self.dropout = config.dropout
        # one fused projection to [q | k | v]: num_heads + 2 * kv_heads heads of head_size
        qkv_size = (self.num_heads + 2 * self.kv_heads) * self.head_size
        self.c_attn = nn.Linear(config.d_model, qkv_size, bias=config.attention_bias)
        self.c_proj = nn.Linear(self.num_heads * self.head_size, config.d_model, bias=config.attention_bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # sinks: one logit per head that competes in the softmax but carries no value, so a head
        # can put weight "nowhere" instead of being forced to attend to some token
        self.sinks = nn.Parameter(torch.zeros(self.num_heads)) if config.attention_sinks else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | str | None,
        cache: LayerKVCache | None = None,
        plan: ChunkPlan | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        mask: which keys each query sees, (B, 1, T, S) bool (GPT.layer_mask builds it once per kind
        of layer), None (every key), or CAUSAL (plain causal, no sinks). cache, plan: this layer's
        KV cache and the chunk's plan for its kind of layer (gptoss.kv_cache).
        """
        B, T, _ = x.shape
        q, k, v = self.queries_keys_values(x, rope)
        if cache is not None:
            k, v = cache.update(k, v, plan)  # (B, Hkv, S, hs)

        y = self.attend(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, H, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_size)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, mask, dropout: float) -> torch.Tensor:
        """Softmax attention, by the way suited to the case: q (B, H, T, hs), k/v (B, Hkv, S,
        hs), mask as in forward -> (B, H, T, hs). (A faster implementation can replace it:
        gptoss.inference's kernel for decoding steps, installed by prepare_for_inference.)"""
        if mask is CAUSAL:  # the common training case: the fused kernel builds the causal mask itself
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=True)
        if self.sinks is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=True)
        if q.shape[2] == 1:  # decoding one token: too little work for the fused kernel's fixed cost (docs/training.md)
            return self.attend_explicitly(q, k, v, mask, dropout)
        return self.attend_with_sinks(q, k, v, mask, dropout)

    def queries_keys_values(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, d_model) -> q (B, H, T, hs), k and v (B, Hkv, T, hs); q and k rotated by `rope`."""
        B, T, _ = x.shape
        heads = self.c_attn(x).view(B, T, self.num_heads + 2 * self.kv_heads, self.head_size).transpose(1, 2)
        qk, v = heads.split([self.num_heads + self.kv_heads, self.kv_heads], dim=1)  # (B, H + Hkv, T, hs), (B, Hkv, T, hs)
        if rope is not None:  # the query and key heads side by side: one rotation for both
            qk = apply_rotary(qk, *rope)
        q, k = qk.split([self.num_heads, self.kv_heads], dim=1)  # (B, H, T, hs), (B, Hkv, T, hs)
        return q, k, v

    def attention_weights(self, q, k, mask) -> torch.Tensor:
        """The softmax weights of each query over the keys, in fp32, written out: what
        gptoss.inspection records for every layer, and attend_explicitly's.

        q (B, H, T, hs), k (B, Hkv, S, hs), mask (B, 1, T, S) bool or None (every key visible) ->
        (B, H, T, S), or with sinks (B, H, T, S + 1): the last column is the sink's share.
        """
        B, H, T, hs = q.shape
        # query heads j*group .. j*group + group-1 share k/v head j: fold them into its query rows
        # (B, Hkv, group*T, hs) rather than repeat each k/v head `group` times
        grouped = q.reshape(B, self.kv_heads, -1, hs)
        scores = (grouped @ k.transpose(-2, -1)).view(B, H, T, -1) / math.sqrt(hs)  # (B, H, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if self.sinks is not None:
            sink = self.sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)  # (B, H, T, 1)
            scores = torch.cat([scores, sink], dim=-1)
        return torch.softmax(scores, dim=-1, dtype=torch.float32)

    def attend_explicitly(self, q, k, v, mask, dropout: float) -> torch.Tensor:
        """Softmax attention with sinks, written out: the weights of attention_weights over the real
        keys (the sink's column dropped) times the values. The reference the fused attend_with_sinks
        is tested against, and the decoding path (one query).

        q (B, H, T, hs), k/v (B, Hkv, S, hs), mask (B, 1, T, S) or None (every key visible) -> (B, H, T, hs).
        """
        B, H, T, hs = q.shape
        weights = self.attention_weights(q, k, mask)[..., :-1].to(v.dtype)  # (B, H, T, S)
        weights = F.dropout(weights, dropout, self.training)
        # as in attention_weights, the query heads sharing k/v head j are its rows: (B, Hkv, group*T, S)
        # @ (B, Hkv, S, hs), so no k/v head is repeated (a copy of the cache at every decoding step)
        return (weights.reshape(B, self.kv_heads, -1, weights.shape[-1]) @ v).view(B, H, T, hs)

    def attend_with_sinks(self, q, k, v, mask, dropout: float) -> torch.Tensor:
        """Softmax attention with a sink logit per head, through the fused attention kernel.

        The sink is one more key, after the real ones: every query sees it, its value is zero, and
        its score is the head's sink. The score comes from one extra feature: the queries of head h
        carry sink_h * sqrt(hs) there, the real keys 0 and the sink key 1, so q.k / sqrt(hs) is
        unchanged for real keys and is sink_h for the sink key (and the sinks' gradient flows back
        through the queries). Values get the extra feature too (the kernel wants one head size);
        it is zero and dropped from the output. Same result as the softmax of attention_weights.

        q (B, H, T, hs), k/v (B, Hkv, S, hs), mask (B, 1, T, S) or None (every key visible) ->
        (B, H, T, hs). The weights over real keys sum to 1 - p(sink) < 1.
        """
        B, H, T, hs = q.shape
        # a sink of -inf (no sink) would make the real keys' scores 0 * -inf = NaN; exp(-1e4) is 0 already
        sink = self.sinks.clamp(min=-1e4)
        sink_feature = (sink * math.sqrt(hs)).to(q.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
        q = torch.cat([q, sink_feature], dim=-1)  # (B, H, T, hs + 1)
        k = F.pad(k, (0, 1, 0, 1))  # (B, Hkv, S + 1, hs + 1): zero extra feature, zero sink key ...
        k[..., -1, -1] = 1.0  # ... but for the sink key's extra feature
        v = F.pad(v, (0, 1, 0, 1))  # (B, Hkv, S + 1, hs + 1): all zero for the sink key
        if mask is not None:
            mask = F.pad(mask, (0, 1), value=True)  # (B, 1, T, S + 1): every query sees the sink
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, scale=1 / math.sqrt(hs), enable_gqa=True
        )
        return y[..., :hs]


# ---------------------------------------------------------------------------------------- MLPs
class FeedForward(nn.Module):
    """GPT-2's position-wise feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, config.d_ff)
        self.c_proj = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU; so do we, so its checkpoints match exactly
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Experts(nn.Module):
    """E independent SwiGLU MLPs, stored as stacked weights laid out (in, out) for `x @ W`.

    gate_up_proj (E, d_model, 2*d_ff): the gate and linear halves interleaved (gate = even columns,
    linear = odd), as in gpt-oss. down_proj (E, d_ff, d_model).
    """

    CAPACITY_MULTIPLE = 64  # mix's padded batch rounds its capacity up to a multiple of this

    def __init__(self, config: GPTConfig):
        super().__init__()
        E, D, F_ = config.num_experts, config.d_model, config.d_ff
        self.num_experts, self.limit, self.alpha = E, config.swiglu_limit, config.swiglu_alpha
        self.gate_up_proj = nn.Parameter(torch.empty(E, D, 2 * F_))
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(E, 2 * F_))
        self.down_proj = nn.Parameter(torch.empty(E, F_, D))
        self.down_proj_bias = nn.Parameter(torch.zeros(E, D))

    def stacked_weights(self) -> tuple[torch.Tensor, ...] | None:
        """Every expert's weights at once, (E, ...) as stored, for mix's padded batch; None in a
        subclass that decodes its experts one at a time (then mix loops over the experts)."""
        return self.gate_up_proj, self.gate_up_proj_bias, self.down_proj, self.down_proj_bias

    def expert_weights(self, e: int) -> tuple[torch.Tensor, ...]:
        """Weights of expert e; a quantised subclass can decode them here, one expert at a time."""
        return self.gate_up_proj[e], self.gate_up_proj_bias[e], self.down_proj[e], self.down_proj_bias[e]

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gpt-oss's clamped SwiGLU: gate_up (..., 2*d_ff), gate and linear interleaved -> (..., d_ff)."""
        gate = gate_up[..., 0::2].clamp(max=self.limit)
        linear = gate_up[..., 1::2].clamp(-self.limit, self.limit)
        return gate * torch.sigmoid(self.alpha * gate) * (linear + 1)

    def forward(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Run expert e on the tokens routed to it: x (N, d_model) -> (N, d_model)."""
        w_gate_up, b_gate_up, w_down, b_down = self.expert_weights(e)
        hidden = self.swiglu(x @ w_gate_up.to(x.dtype) + b_gate_up.to(x.dtype))  # (N, d_ff)
        return hidden @ w_down.to(x.dtype) + b_down.to(x.dtype)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert at once, each on its own rows: x (E, capacity, d_model) -> (E, capacity, d_model)."""
        w_gate_up, b_gate_up, w_down, b_down = self.stacked_weights()
        gate_up = torch.bmm(x, w_gate_up.to(x.dtype)) + b_gate_up.to(x.dtype)[:, None]  # (E, capacity, 2*d_ff)
        return torch.bmm(self.swiglu(gate_up), w_down.to(x.dtype)) + b_down.to(x.dtype)[:, None]

    def mix(self, tokens: torch.Tensor, top_experts: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        """Every token through its k experts, their outputs summed with the router's weights:
        tokens (N, d_model), top_experts and top_weights (N, k) -> (N, d_model).

        Tokens are grouped by expert (one sort), so no expert is computed for tokens it does not
        own. Then either of two ways, the same result to fp32 rounding:
          padded batch: each expert's tokens fill one row block of an (E, capacity, d_model) tensor,
            capacity = the largest expert's count rounded up to a multiple of CAPACITY_MULTIPLE,
            and two batched matrix products run every expert at once; the padding rows (zeros)
            are dropped from the output, so they get no gradient.
          per expert: one matrix product per expert over exactly its tokens.
        See use_padded_batch for which. (This method is the layer's whole use of its experts, so
        a faster implementation can replace it: gptoss.inference's MXFP4 kernel, installed by
        prepare_for_inference.)
        """
        k = top_experts.shape[1]
        # sort the N*k (token, expert) assignments by expert: each expert's tokens become contiguous
        flat_experts = top_experts.flatten()  # (N*k,)
        order = flat_experts.argsort(stable=True)
        token_index = order // k  # token of each sorted assignment
        weight = top_weights.flatten()[order, None]  # (N*k, 1)
        counts = torch.bincount(flat_experts, minlength=self.num_experts)  # (E,)
        # the one host read of a forward pass: the per-expert token counts size the products
        sizes = counts.tolist()

        out = torch.zeros_like(tokens)
        if self.use_padded_batch(sizes, tokens):
            y = self.padded_batch(tokens, flat_experts[order], token_index, counts, self.capacity(sizes))  # (N*k, D)
            return out.index_add_(0, token_index, y * weight)
        start = 0
        for e, count in enumerate(sizes):
            if count:
                rows = token_index[start : start + count]
                out.index_add_(0, rows, self(tokens.index_select(0, rows), e) * weight[start : start + count])
                start += count
        return out

    def padded_batch(self, tokens, sorted_experts, token_index, counts, capacity: int) -> torch.Tensor:
        """The outputs of the N*k assignments sorted by expert, (N*k, d_model), from one padded batch:
        tokens (N, d_model); sorted_experts, token_index (N*k,): each sorted assignment's expert and
        token; counts (E,): assignments per expert; capacity: rows per expert (capacity())."""
        E, D = self.num_experts, tokens.shape[1]
        # each sorted assignment's row in the batch: its expert's block, then its rank there
        first = counts.cumsum(0) - counts  # (E,) each expert's first sorted assignment
        rank = torch.arange(sorted_experts.shape[0], device=tokens.device) - first[sorted_experts]
        rows = sorted_experts * capacity + rank  # (N*k,) into E*capacity rows
        # (index_select, not x[index]: its gradient is an index_add, faster than index_put's on CPU)
        grouped = tokens.index_select(0, token_index)  # (N*k, D) sorted by expert
        padded = tokens.new_zeros(E * capacity, D).index_copy(0, rows, grouped).view(E, capacity, D)
        return self.forward_padded(padded).view(E * capacity, D).index_select(0, rows)

    def use_padded_batch(self, sizes: list[int], tokens: torch.Tensor) -> bool:
        """Whether mix runs the padded batch (else one product per expert), given the experts'
        token counts `sizes` (E,) and the tokens. The padded batch only if
          - the weights are stacked (not in a subclass that decodes one expert at a time),
          - autograd is on (training): the backward pass keeps every expert's activations either
            way, while without autograd the loop holds one expert's at a time (long prompts need
            that) and was faster,
          - and the padding is small: E * capacity at most 4x the N*k assignments when the
            products run in bf16/fp16 (autocast or half weights), at most 1.25x in fp32. The
            batch's cost grows with E * capacity, the loop's with N*k plus a fixed cost per expert
            and product, which in bf16 on CPU is large (oneDNN builds a kernel per new shape).
        (The measurements behind the rule: docs/training.md.)
        """
        if self.stacked_weights() is None or not torch.is_grad_enabled():
            return False
        half = torch.is_autocast_enabled(tokens.device.type) or tokens.dtype != torch.float32
        return self.num_experts * self.capacity(sizes) <= (4 if half else 1.25) * sum(sizes)

    def capacity(self, sizes: list[int]) -> int:
        """Rows per expert in mix's padded batch: the largest expert's count, rounded up to a multiple
        of CAPACITY_MULTIPLE so that the batch's shapes repeat from step to step (oneDNN, bf16 on
        CPU, builds a kernel per new shape, which costs more than a small product itself)."""
        return -(-max(sizes, default=0) // self.CAPACITY_MULTIPLE) * self.CAPACITY_MULTIPLE


class MixtureOfExperts(nn.Module):
    """Top-k routed experts: each token goes to the k experts its router scores highest."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.experts_per_token
        self.router = nn.Linear(config.d_model, config.num_experts)
        self.experts = Experts(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, d_model) -> (B, T, d_model), and in training the load-balancing loss (else None)."""
        B, T, D = x.shape
        tokens = x.reshape(-1, D)  # (N, D)
        router_logits, top_experts, top_weights = self.route(tokens)
        out = self.experts.mix(tokens, top_experts, top_weights)
        aux_loss = self.load_balancing_loss(router_logits, top_experts) if self.training else None
        return out.view(B, T, D), aux_loss

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (N, d_model) -> router logits (N, E), each token's top-k experts (N, k) and their
        weights (N, k): a softmax over the k chosen logits, so each row sums to 1."""
        router_logits = self.router(tokens)  # (N, E)
        top_logits, top_experts = router_logits.topk(self.top_k, dim=-1)  # (N, k)
        return router_logits, top_experts, torch.softmax(top_logits.float(), dim=-1).to(tokens.dtype)

    def load_balancing_loss(self, router_logits: torch.Tensor, top_experts: torch.Tensor) -> torch.Tensor:
        """Switch-Transformer balance loss: E * sum_e (fraction of tokens routed to e) * (mean
        router probability of e). The fractions sum to k, so the loss is k when routing is uniform
        and grows as a few experts take most tokens.
        """
        counts = torch.bincount(top_experts.flatten(), minlength=self.num_experts)
        fraction = counts.float() / router_logits.shape[0]
        mean_prob = torch.softmax(router_logits.float(), dim=-1).mean(0)
        return self.num_experts * (fraction * mean_prob).sum()


# ---------------------------------------------------------------------------------------- model
class Block(nn.Module):
    """One pre-norm transformer block: x + Attention(Norm(x)), then x + MLP(Norm(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MixtureOfExperts(config) if config.mlp == "moe" else FeedForward(config)

    def forward(self, x, rope, mask, cache=None, plan=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, d_model) -> (B, T, d_model), and the MoE load-balancing loss (None without one)."""
        x = x + self.attn(self.ln_1(x), rope, mask, cache, plan)
        if isinstance(self.mlp, MixtureOfExperts):
            out, aux_loss = self.mlp(self.ln_2(x))
            return x + out, aux_loss
        return x + self.mlp(self.ln_2(x)), None


class GPT(nn.Module):
    """A decoder-only transformer, GPT-2 or gpt-oss by configuration (see the module doc)."""

    def __init__(self, config: GPTConfig, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        # build directly on `device`; "meta" allocates nothing (for counting huge models)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(config.vocab_size, config.d_model),
                    wpe=nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None,
                    drop=nn.Dropout(config.dropout),
                    h=nn.ModuleList(Block(config, layer) for layer in range(config.num_layers)),
                    ln_f=make_norm(config),
                )
            )
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
            self.rotary = RotaryEmbedding(config) if config.position == "rope" else None
        self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """Make the unembedding share the token embedding's matrix, when the config ties them (GPT-2).
        Called again by whoever assigns new tensors to the model (loading, gathering shards)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, unit norms; projections that write into the
        residual stream get std 0.02/sqrt(2 * num_layers) so its variance does not grow with depth."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "down_proj")):
                nn.init.normal_(p, 0.0, residual_std)
            elif "ln_" in name and name.endswith("weight"):
                nn.init.ones_(p)
            elif p.dim() >= 2 and not name.endswith("_bias"):
                nn.init.normal_(p, 0.0, std)
            else:  # biases (the experts' stacked (E, n) ones too) and sinks
                nn.init.zeros_(p)

    # ------------------------------------------------------------------ helpers
    def num_parameters(self) -> int:
        """Number of parameters, counting tied weights once."""
        return sum(p.numel() for p in self.parameters())

    def check_input(self, idx: torch.Tensor) -> None:
        """Raise a clear TypeError/ValueError for ids that are not a valid (B, T) integer batch.

        The ids' range is checked here only for CPU tensors outside torch.compile: reading an
        accelerator tensor's values would make every forward pass wait for the device, and reading
        any inside a compiled forward would split its graph in three (this check, the targets' and
        the model between). There, ids are checked where they enter (tokenizers only make valid
        ids; generate's prompts and train_model's data go through check_id_range), and a bad one
        fails inside the embedding lookup."""
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"token ids must be a torch.Tensor of shape (batch, time), got {type(idx).__name__}")
        if idx.dtype not in (torch.long, torch.int32):
            raise TypeError(f"token ids must be torch.long or torch.int32, got dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"token ids must have shape (batch, time), got shape {tuple(idx.shape)}")
        if idx.numel() == 0:
            raise ValueError(f"token ids are empty (shape {tuple(idx.shape)}): give at least one token per sequence")
        if idx.is_cpu and not torch.compiler.is_compiling():
            self.check_id_range(idx)

    def check_targets(self, targets: torch.Tensor, shape) -> None:
        """Raise a clear TypeError/ValueError unless targets are (B, T) integer ids or -1 (ignored)."""
        if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.long, torch.int32):
            raise TypeError("targets must be a torch.long (or torch.int32) tensor of next-token ids")
        if tuple(targets.shape) != tuple(shape):
            raise ValueError(f"targets must have the logits' shape {tuple(shape)} (batch, kept positions), got {tuple(targets.shape)}")
        if targets.is_cpu and not torch.compiler.is_compiling():  # (see check_input)
            self.check_id_range(targets, "target id", -1, "-1 marks a position to ignore (not -100 as in transformers)")

    def check_id_range(
        self, ids: torch.Tensor, what: str = "token id", lowest: int = 0,
        hint: str = "the tokenizer does not match this model's vocab_size",
    ) -> None:  # fmt: skip
        """Raise ValueError naming the first id outside [lowest, vocab_size), with `hint`. Reads the
        ids' values: on an accelerator, a wait for the device."""
        if ids.device.type == "meta" or ids.numel() == 0:
            return
        low, high = int(ids.min()), int(ids.max())
        if low < lowest or high >= self.config.vocab_size:
            raise ValueError(f"{what} {low if low < lowest else high} is outside [0, {self.config.vocab_size}): {hint}")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        padding_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        return_aux_loss: bool = False,
    ):
        """Logits (B, T, vocab_size) for token ids (B, T).

        targets (B, T): also return the loss, as (logits, loss): the mean next-token cross-entropy
        (ids of -1 are ignored), plus, for a mixture of experts in training, router_aux_loss_coef
        times its load-balancing loss (`objective`). return_aux_loss: return the two terms apart
        instead, (logits, cross_entropy, aux_loss), aux_loss None when there is none (a trainer
        logs them apart). cache: continue from (and extend) a KVCache. padding_mask (B, T) bool: False
        marks padding, which no token attends to; with a cache, only left padding of the first chunk
        (batched prompts of different lengths), since ring buffers drop their oldest columns.
        logits_to_keep: compute logits for the last n positions only, (B, n, vocab_size) (0: all);
        generation needs only the last one, which spares the unembedding of the whole prompt.
        """
        self.check_input(idx)
        B, T = idx.shape
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0 (0: every position), got {logits_to_keep}")
        if padding_mask is not None and tuple(padding_mask.shape) != (B, T):
            raise ValueError(f"padding_mask must have the token ids' shape {(B, T)}, got {tuple(padding_mask.shape)}")
        if cache is not None:
            cache.check_chunk(B, T, padding_mask)
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}; "
                "crop the input or build the model with a larger max_seq_len"
            )
        positions = self.positions(B, T, cache, padding_mask, idx.device)  # (B, T), -1 = padding
        x = self.transformer.wte(idx)  # (B, T, d_model)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(positions.clamp(min=0))
        x = self.transformer.drop(x)
        rope = self.rotary(positions.clamp(min=0)) if self.rotary is not None else None
        plans = cache.begin_chunk(positions, padding_mask is not None) if cache is not None else {}
        # no padding, now or in the cache: every row's positions run on from the same start
        plain_causal = padding_mask is None and (cache is None or not cache.has_padding)
        masks = {}  # one per kind of layer: (its window, its kind of cache)
        aux_losses = []
        for layer, block in enumerate(self.transformer.h):
            kind = cache.layer_kinds[layer] if cache is not None else None
            if (block.attn.window, kind) not in masks:
                masks[block.attn.window, kind] = self.layer_mask(positions, plans.get(kind), block.attn.window, plain_causal)
            layer_cache = cache.layers[layer] if cache is not None else None
            x, aux_loss = block(x, rope, masks[block.attn.window, kind], layer_cache, plans.get(kind))
            if aux_loss is not None:
                aux_losses.append(aux_loss)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T or logits_to_keep, vocab_size)
        if targets is None:
            return logits
        self.check_targets(targets, logits.shape[:2])
        cross_entropy = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1).long(), ignore_index=-1)
        # the mean over layers: k when routing is uniform, the scale of transformers' loss (which
        # pools the layers' router statistics into one), so router_aux_loss_coef means the same here
        aux_loss = sum(aux_losses) / len(aux_losses) if aux_losses and self.config.router_aux_loss_coef else None
        if return_aux_loss:
            return logits, cross_entropy, aux_loss
        return logits, self.objective(cross_entropy, aux_loss)

    def objective(self, cross_entropy: torch.Tensor, aux_loss: torch.Tensor | None) -> torch.Tensor:
        """The training loss: cross_entropy + router_aux_loss_coef x aux_loss (when there is one)."""
        return cross_entropy if aux_loss is None else cross_entropy + self.config.router_aux_loss_coef * aux_loss

    def layer_mask(self, positions: torch.Tensor, plan: ChunkPlan | None, window: int | None, plain_causal: bool):
        """The attention mask of one kind of layer for this forward pass (see Attention.forward).

        positions (B, T) of the queries; plan: the KV cache's plan for this kind of layer (None
        without a cache: the keys are the queries); plain_causal: no padding, now or in the cache.
        """
        if plan is None:
            if plain_causal and window is None and not self.config.attention_sinks:
                return CAUSAL
            return attention_mask(positions, positions, window)  # (B, 1, T, T)
        if plain_causal and positions.shape[1] == 1 and not plan.empty_slots:
            return None  # decoding one token, no padding or empty slot: every key kept is visible
        return attention_mask(positions, plan.key_positions, window)  # (B, 1, T, S)

    def positions(self, B, T, cache, padding_mask, device) -> torch.Tensor:
        """Absolute position of each new token (B, T); padding gets -1.

        Without padding this is start..start+T-1. With padding, each row counts only its real
        tokens, so a left-padded prompt starts at position 0 like the same prompt alone.
        """
        offset = cache.next_position if cache is not None else torch.zeros(B, dtype=torch.long, device=device)
        if padding_mask is None:
            return offset[:, None] + torch.arange(T, device=device)
        real = padding_mask.to(device=device, dtype=torch.long)
        positions = offset[:, None] + real.cumsum(dim=1) - 1
        return positions.masked_fill(real == 0, -1)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "GPT":
        """Load a checkpoint directory: this project's, Hugging Face GPT-2 / gpt-oss (MXFP4 included)
        or OpenAI's original gpt-oss layout. See gptoss.checkpoints.load.from_pretrained for the options."""
        from gptoss.checkpoints.load import from_pretrained  # a facade: the loader lives above the model

        return from_pretrained(path, **kwargs)

    def save_pretrained(self, directory, format: str = "hf", tokenizer=None):
        """Write this model as a Hugging Face (format="hf") or gptoss checkpoint directory; see
        gptoss.checkpoints.export.save_pretrained."""
        from gptoss.checkpoints.export import save_pretrained  # a facade, as from_pretrained

        return save_pretrained(self, directory, format=format, tokenizer=tokenizer)

    # ------------------------------------------------------------------ generation
    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `capacity` tokens (default max_seq_len),
        in the model's dtype and on its device."""
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, capacity, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, **kwargs):
        """Continue `idx` (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens).

        temperature=0 is greedy; top_k keeps only the k most likely tokens. See
        gptoss.inference.generation.generate for the other options (top_p, seeds...); stop tokens,
        streaming and batches of prompts of any lengths are gptoss.inference's stream and
        generate_batch. On a CPU, call gptoss.inference.prepare_for_inference(model) once first:
        the linear layers then read their weights through C kernels at about the memory's speed
        (`weights="bf16"` or `"int8"` also halves or quarters the bytes read per token; `gptoss
        generate` does this by default, its --weights flag choosing the format).
        """
        from gptoss.inference.generation import generate  # a facade: generation lives above the model

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, **kwargs)


def create_gpt_oss_20b(
    vocab_size: int | None = None,
    max_seq_len: int | None = None,
    preset: str = "gpt2-small",
    device: torch.device | str | None = None,
    **overrides,
) -> GPT:
    """The seed's model factory: by default the seed's configuration, GPT-2 small (vocab 50257,
    context 1024: 124,439,808 parameters). `preset` picks another configuration (see
    GPTConfig.preset), keyword arguments override its fields (vocab_size and max_seq_len: the
    preset's own when not given), and device="meta" builds it without allocating memory."""
    sizes = {k: v for k, v in (("vocab_size", vocab_size), ("max_seq_len", max_seq_len)) if v is not None}
    config = GPTConfig.preset(preset, **sizes, **overrides)
    return GPT(config, device=device)
