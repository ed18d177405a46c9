"""The seed's training loop, `train_model`: epochs over a token list, AdamW, gradient clipping, and
per-epoch validation loss and perplexity."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from gptoss.checkpoints.mxfp4 import has_packed_experts
from gptoss.data.batches import epoch_batches
from gptoss.train.optim import adamw  # the trainer's: decay on weight matrices only
from gptoss.util.checks import check_positive_int


def as_token_tensor(data, name: str, seq_len: int, model) -> torch.Tensor:
    """Token ids (list, numpy array or tensor) as a 1-D int64 tensor, checked for length, type and
    range (once, here, where they enter: the model's forward does not read them on a GPU)."""
    if isinstance(data, torch.Tensor):
        tokens = data
    else:
        tokens = torch.as_tensor(np.asarray(data))
    if tokens.numel() < seq_len + 1:  # first: an empty list has no integer dtype to check
        raise ValueError(
            f"{name} has {tokens.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
            "supply more data or use a shorter seq_len"
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    tokens = tokens.reshape(-1).long()
    model.check_id_range(tokens, f"{name}: token id")
    return tokens


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, seq_len: int, batch_size: int, device) -> float:
    """Mean next-token cross-entropy over every non-overlapping window of `tokens`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in epoch_batches(tokens, batch_size, seq_len, shuffle=False):
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * x.numel()
        count += x.numel()
    model.train(was_training)
    return total / count


def train_model(
    model,
    train_data,
    val_data=None,
    seq_len: int = 128,
    batch_size: int = 32,
    num_epochs: int = 10,
    learning_rate: float = 3e-4,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
):
    """Train `model` on token ids for `num_epochs` epochs; returns the trained model (in eval mode).

    Each epoch visits every non-overlapping window of seq_len + 1 tokens of train_data once, in a
    shuffled order, in batches of batch_size. After each epoch it prints the mean train loss and,
    when val_data is given, the validation loss and perplexity.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("num_epochs", num_epochs)):
        check_positive_int(name, value)
    if not 0 < learning_rate < math.inf:
        raise ValueError(f"learning_rate must be > 0 and finite, got {learning_rate!r}")
    if not grad_clip >= 0 or not weight_decay >= 0:
        raise ValueError(f"grad_clip (0: none) and weight_decay must be >= 0, got {grad_clip!r} and {weight_decay!r}")
    if has_packed_experts(model):
        raise ValueError(
            "this model's experts are MXFP4-packed uint8 buffers, which training cannot update: load it with "
            "GPT.from_pretrained(path, dequantize_experts=True) or call gptoss.checkpoints.mxfp4.dequantize_experts(model) first"
        )
    if seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
    train_tokens = as_token_tensor(train_data, "train_data", seq_len, model)
    val_tokens = as_token_tensor(val_data, "val_data", seq_len, model) if val_data is not None else None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    optimizer = adamw(model, learning_rate, weight_decay)

    for epoch in range(1, num_epochs + 1):
        batches = list(epoch_batches(train_tokens, batch_size, seq_len, shuffle=True, seed=seed + epoch))
        bar = tqdm(batches, desc=f"epoch {epoch}/{num_epochs}", disable=not progress, leave=False)
        total = 0.0
        for x, y in bar:
            # an MoE model trains on cross-entropy + coef x aux loss; the cross-entropy alone is
            # reported, comparable with the validation loss
            _, cross_entropy, aux_loss = model(x.to(device), y.to(device), return_aux_loss=True)
            optimizer.zero_grad(set_to_none=True)
            model.objective(cross_entropy, aux_loss).backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total += cross_entropy.item()
            bar.set_postfix(loss=f"{cross_entropy.item():.4f}")
        line = f"epoch {epoch}/{num_epochs} | train loss {total / len(batches):.4f}"
        if val_tokens is not None:
            val_loss = evaluate(model, val_tokens, seq_len, batch_size, device)
            line += f" | val loss {val_loss:.4f} | val perplexity {math.exp(val_loss):.2f}"
        print(line, flush=True)
    return model.eval()
