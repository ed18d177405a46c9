"""Key/value cache for incremental decoding: attend to the past without recomputing it.

Each layer keeps the keys and values it has computed, with the absolute position of each slot, in
buffers preallocated once. A full-attention layer appends (up to the cache's capacity). A
sliding-window layer keeps only its last `window` positions in a ring buffer, so its memory stays
constant however long the text grows. Positions travel with the keys, so the attention mask is
derived from them alone (see gptoss.model.attention_mask); empty slots have position -1.
"""

from __future__ import annotations

import torch

from gptoss.config import GPTConfig


class LayerKVCache:
    """Keys, values and positions of one layer: (B, kv_heads, capacity, head_size) and (B, capacity)."""

    def __init__(self, batch_size: int, kv_heads: int, head_size: int, capacity: int, ring: bool, dtype, device):
        self.capacity, self.ring = capacity, ring
        self.k = torch.zeros(batch_size, kv_heads, capacity, head_size, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch_size, capacity), -1, dtype=torch.long, device=device)
        self.seen = 0  # tokens written so far (for a ring, more than it holds)

    @property
    def has_empty_slots(self) -> bool:
        """Whether, after a one-token update, the keys it returned include empty slots (a ring not
        yet full). A full-attention layer returns only the slots written."""
        return self.ring and self.seen < self.capacity

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Store k, v (B, kv_heads, T, head_size) at `positions` (B, T); return what to attend to.

        Returns keys, values (B, kv_heads, S, head_size) and their positions (B, S).
        """
        T = k.shape[2]
        if not self.ring:  # KVCache.check_chunk has made sure the chunk fits
            self._write(slice(self.seen, self.seen + T), k, v, positions)
            self.seen += T
            return self.k[:, :, : self.seen], self.v[:, :, : self.seen], self.pos[:, : self.seen]
        if T == 1:
            # decoding: the slot we overwrite holds position p - window, which query p never sees
            self._write(slice(self.seen % self.capacity, self.seen % self.capacity + 1), k, v, positions)
            self.seen += 1
            return self.k, self.v, self.pos
        # a chunk of several tokens: its early queries still need the slots its late tokens would
        # overwrite, so attend to [ring | chunk] first, then keep the chunk's last `window` tokens
        keys, values = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        key_positions = torch.cat([self.pos, positions], dim=1)
        keep = min(T, self.capacity)
        slots = (self.seen + torch.arange(T - keep, T, device=k.device)) % self.capacity
        self._write(slots, k[:, :, T - keep :], v[:, :, T - keep :], positions[:, T - keep :])
        self.seen += T
        return keys, values, key_positions

    def _write(self, slots, k, v, positions) -> None:
        self.k[:, :, slots] = k
        self.v[:, :, slots] = v
        self.pos[:, slots] = positions


class KVCache:
    """The per-layer caches of a model, plus how far each sequence has got."""

    def __init__(self, config: GPTConfig, batch_size: int, capacity: int | None = None, *, dtype, device):
        capacity = config.max_seq_len if capacity is None else capacity
        if not 1 <= capacity <= config.max_seq_len:
            raise ValueError(f"KV cache capacity must be in [1, max_seq_len={config.max_seq_len}], got {capacity}")
        self.batch_size, self.capacity = batch_size, capacity
        self.layers = []
        for layer in range(config.num_layers):
            ring = config.is_sliding_layer(layer) and config.sliding_window < capacity
            size = config.sliding_window if ring else capacity
            self.layers.append(
                LayerKVCache(batch_size, config.kv_heads, config.head_size, size, ring, dtype, device)
            )
        self.length = 0  # tokens (columns) processed, padding included
        self.has_padding = False  # set by GPT.forward when a chunk came with a padding mask
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)

    def check_chunk(self, batch_size: int, T: int, padding_mask: torch.Tensor | None) -> None:
        """Raise ValueError, before any layer writes, unless a chunk of T tokens for batch_size
        sequences (with this padding mask) can go into this cache."""
        if batch_size != self.batch_size:
            raise ValueError(
                f"this KV cache holds {self.batch_size} sequences, not {batch_size}: make one with "
                f"model.new_cache({batch_size})"
            )
        if self.length + T > self.capacity:
            raise ValueError(
                f"KV cache is full: {self.length} + {T} tokens exceed its capacity of {self.capacity}; "
                "create it with a larger capacity (at most the model's max_seq_len)"
            )
        # a row's padding must come before its tokens, in the first chunk: a ring buffer keeps a
        # chunk's last `window` columns, which must be the row's latest positions
        if padding_mask is None or bool(padding_mask.all()):
            return
        if self.length > 0 or not bool((padding_mask.long().diff(dim=1) >= 0).all()):
            raise ValueError(
                "with a KV cache, padding must be left padding in the first chunk (each row: padding, "
                "then its tokens); later chunks take no padding_mask"
            )

    def advance(self, positions: torch.Tensor) -> None:
        """Record that a chunk with `positions` (B, T) (-1 = padding) has been processed."""
        self.length += positions.shape[1]
        self.next_position = torch.maximum(self.next_position, positions.max(dim=1).values + 1)
