"""Batches of (input, target) windows cut from token ids, and the train/validation split."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from gptoss.util.checks import check_positive_int


def split_train_val(tokens: Sequence, val_fraction: float = 0.1) -> tuple[Sequence, Sequence]:
    """(first 1 - val_fraction, last val_fraction) of `tokens` (any sliceable sequence), like nanoGPT."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = int(len(tokens) * (1 - val_fraction))
    return tokens[:split], tokens[split:]


def random_batch(
    tokens: np.ndarray | torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` windows at random starts: inputs x and targets y = x shifted by one, int64."""
    tokens = _as_array(tokens)
    _check_length(tokens, seq_len, batch_size)
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=generator).tolist()
    return _windows(tokens, starts, seq_len, device)


def epoch_batches(
    tokens: np.ndarray | torch.Tensor,
    batch_size: int,
    seq_len: int,
    shuffle: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch: every non-overlapping window exactly once (in an order fixed by `seed` when
    shuffled), as (x, y) batches; the last batch may be smaller. Pass seed + epoch for new orders."""
    tokens = _as_array(tokens)
    _check_length(tokens, seq_len, batch_size)
    count = (len(tokens) - 1) // seq_len  # windows of seq_len + 1 tokens, overlapping by one
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(count)
    for first in range(0, count, batch_size):
        starts = (order[first : first + batch_size] * seq_len).tolist()
        yield _windows(tokens, starts, seq_len, device)


def _as_array(tokens: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        return tokens.cpu().numpy()
    return np.asarray(tokens)  # a memmap stays a view of the file: nothing is read yet


def _check_length(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"only {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1} needed for one "
            "(input, target) window: use a shorter seq_len or more text"
        )


def _windows(tokens: np.ndarray, starts: list[int], seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    windows = np.stack([tokens[start : start + seq_len + 1] for start in starts]).astype(np.int64)
    x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
    return (x.to(device), y.to(device)) if device is not None else (x, y)
