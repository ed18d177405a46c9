"""Recording a forward pass: per layer, the attention weights of every head (and the sinks' share),
the experts each token was routed to, and the residual stream after each block.

Recording is a context manager that puts forward hooks on the model's own modules and takes them
off again on exit, so there is no second copy of the model and, outside `with record(model)`, no
hook, buffer or branch at all. The hooks recompute, from each module's inputs, the quantities the
module does not return, with the module's own methods (Attention.queries_keys_values and
attention_weights, MixtureOfExperts.route): the forward pass itself is untouched, so its logits
are bitwise those of a pass without recording. The cost, while recording, is one more q/k
projection and router product per layer, and the (B, H, T, T) weights kept per layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from gptoss.model import CAUSAL, GPT, MixtureOfExperts


@dataclass
class Recording:
    """What one forward pass did, layer by layer (tensors on the CPU, batch first).

    attention[l]: (B, H, T, T) fp32, each query's weights over the keys (0 where it may not look);
    sink_share[l]: (B, H, T) fp32, the weight each query gave its head's sink, None without sinks;
    experts[l], expert_weights[l]: (B, T, k) the experts each token was routed to and their
    weights, None for a dense MLP; residual: num_layers + 1 tensors (B, T, d_model), the stream
    entering the first block and after each block, in the model's dtype; windows[l]: the layer's
    sliding window (None: full causal).
    """

    attention: list[torch.Tensor] = field(default_factory=list)
    sink_share: list[torch.Tensor | None] = field(default_factory=list)
    experts: list[torch.Tensor | None] = field(default_factory=list)
    expert_weights: list[torch.Tensor | None] = field(default_factory=list)
    residual: list[torch.Tensor] = field(default_factory=list)
    windows: list[int | None] = field(default_factory=list)


def explicit_mask(mask, T: int, S: int, device) -> torch.Tensor | None:
    """Attention.forward's mask as attention_weights takes it: CAUSAL becomes (1, 1, T, S) bool."""
    if mask is CAUSAL:
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)[None, None]
    return mask


@contextlib.contextmanager
def record(model: GPT):
    """`with record(model) as recording: model(idx)` fills `recording` (a Recording) with what the
    forward pass did. One pass per recording, without a KV cache; the hooks are removed on exit."""
    recording = Recording()
    blocks = model.transformer.h
    recording.windows = [block.attn.window for block in blocks]
    layers = len(blocks)
    recording.attention, recording.sink_share = [None] * layers, [None] * layers
    recording.experts, recording.expert_weights = [None] * layers, [None] * layers
    recording.residual = [None] * (layers + 1)

    @torch.no_grad()
    def on_attention(layer, attn, args, output):
        x, rope, mask, *rest = args
        if rest and rest[0] is not None:
            raise ValueError("record one forward pass without a KV cache (the whole sequence at once)")
        q, k, _ = attn.queries_keys_values(x, rope)
        weights = attn.attention_weights(q, k, explicit_mask(mask, q.shape[2], k.shape[2], q.device)).cpu()
        if attn.sinks is not None:
            weights, recording.sink_share[layer] = weights[..., :-1], weights[..., -1]
        recording.attention[layer] = weights

    @torch.no_grad()
    def on_experts(layer, moe, args, output):
        (x,) = args
        _, experts, weights = moe.route(x.reshape(-1, x.shape[-1]))
        recording.experts[layer] = experts.view(*x.shape[:2], -1).cpu()
        recording.expert_weights[layer] = weights.view(*x.shape[:2], -1).float().cpu()

    def on_block(layer, block, args, output):
        recording.residual[layer + 1] = output[0].detach().cpu()

    def on_first_block(block, args):
        recording.residual[0] = args[0].detach().cpu()

    handles = [blocks[0].register_forward_pre_hook(on_first_block)]
    for layer, block in enumerate(blocks):
        # default arguments bind this layer's index to each hook
        handles.append(block.attn.register_forward_hook(lambda m, a, o, layer=layer: on_attention(layer, m, a, o)))
        handles.append(block.register_forward_hook(lambda m, a, o, layer=layer: on_block(layer, m, a, o)))
        if isinstance(block.mlp, MixtureOfExperts):
            handles.append(block.mlp.register_forward_hook(lambda m, a, o, layer=layer: on_experts(layer, m, a, o)))
    try:
        yield recording
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def inspect(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, Recording]:
    """Run `model` on token ids (B, T) once, recording: (logits (B, T, vocab_size), Recording)."""
    with record(model) as recording:
        logits = model(idx)
    return logits, recording


@torch.no_grad()
def logit_lens(model: GPT, recording: Recording, layer: int) -> torch.Tensor:
    """The logits the unembedding reads from the residual stream after `layer` blocks (0: the
    embeddings), through the final norm as at the top of the model: (B, T, vocab_size). After the
    last block these are the model's own logits."""
    device = model.lm_head.weight.device
    return model.lm_head(model.transformer.ln_f(recording.residual[layer].to(device)))
