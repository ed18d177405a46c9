"""Autoregressive generation: prefill the prompt once into a KV cache, then one token per step."""

from __future__ import annotations

import torch


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """Raise ValueError/TypeError for sampling options that make no sense."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for no limit), got {top_k}")


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick the next token from logits (B, vocab) -> (B, 1). temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue token ids `idx` (B, T) by `max_new_tokens` tokens; returns (B, T + max_new_tokens).

    When prompt + new tokens fit in max_seq_len, the prompt is run once into a KV cache and each
    step feeds only the newest token. Otherwise (the seed's behaviour) each step re-reads the last
    max_seq_len tokens: a sliding crop, slower but unlimited in length.
    """
    check_sampling_args(max_new_tokens, temperature, top_k)
    model.check_input(idx)
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token id to start from")
    limit = model.config.max_seq_len
    if idx.shape[1] + max_new_tokens <= limit:
        cache = model.new_cache(idx.shape[0], capacity=idx.shape[1] + max_new_tokens)
        step_input = idx
        for _ in range(max_new_tokens):
            logits = model(step_input, cache=cache)[:, -1]  # (B, vocab)
            step_input = sample_next(logits, temperature, top_k, generator)
            idx = torch.cat([idx, step_input], dim=1)
        return idx
    for _ in range(max_new_tokens):
        logits = model(idx[:, -limit:])[:, -1]
        idx = torch.cat([idx, sample_next(logits, temperature, top_k, generator)], dim=1)
    return idx
