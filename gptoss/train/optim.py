"""Optimizers: AdamW with weight decay on weight matrices only."""

from __future__ import annotations

import torch
import torch.nn as nn


def adamw(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    betas: tuple[float, float] = (0.9, 0.95),
    **kwargs,
) -> torch.optim.AdamW:
    """AdamW that decays only weight matrices: never biases, norm gains or sinks, and embeddings
    (with a tied unembedding) only when decay_embeddings. Decay pulls weights towards zero; a
    bias or a norm gain has no scale to regularise."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied parameter appears once
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and not name.endswith("bias")  # MoE expert biases are (E, n)
        (decay if is_matrix and (decay_embeddings or id(p) not in embeddings) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **kwargs)
