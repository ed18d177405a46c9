"""Key/value cache for incremental decoding: attend to the past without recomputing it.

Each layer keeps the keys and values it has computed in buffers preallocated once. A full-attention
layer appends (up to the cache's capacity). A sliding-window layer keeps only its last `window`
positions in a ring buffer, so its memory stays constant however long the text grows.

Every layer of one kind (appending, or ring) writes the same slots and attends to keys at the same
positions, so the slots are planned once per chunk and per kind (`CacheSlots.plan`), before the
layers run: the positions of the keys, and from them the attention mask (gptoss.model.attention_mask),
are computed once per kind, not once per layer. Empty slots have position -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptoss.config import GPTConfig


@dataclass
class ChunkPlan:
    """What one chunk of T tokens does to the caches of one kind of layer.

    write: the slots the chunk's last `kept` tokens go to (all T of them, unless a ring keeps
    fewer). concat: the keys attended to are [the cache as it was | the chunk] (a ring taking several
    tokens: its early queries still need the slots its late tokens overwrite); otherwise the first
    `attended` slots of the cache once written. key_positions (B, S): the positions of those keys.
    empty_slots: whether some of those keys are empty slots (position -1).
    """

    write: slice | torch.Tensor
    kept: int
    concat: bool
    attended: int
    key_positions: torch.Tensor
    empty_slots: bool


class CacheSlots:
    """The slots of one kind of layer: their positions (B, capacity), shared by every layer of the
    kind, and how many tokens have been written (for a ring, more than it holds)."""

    def __init__(self, batch_size: int, capacity: int, ring: bool, device):
        self.capacity, self.ring = capacity, ring
        self.pos = torch.full((batch_size, capacity), -1, dtype=torch.long, device=device)
        self.seen = 0

    def plan(self, positions: torch.Tensor) -> ChunkPlan:
        """Plan the chunk with `positions` (B, T) and record its positions in the slots."""
        T = positions.shape[1]
        if not self.ring:  # KVCache.check_chunk has made sure the chunk fits
            write = slice(self.seen, self.seen + T)
            self.pos[:, write] = positions
            self.seen += T
            return ChunkPlan(write, T, False, self.seen, self.pos[:, : self.seen], False)
        if T == 1:
            # decoding: the slot we overwrite holds position p - window, which query p never sees
            slot = self.seen % self.capacity
            write = slice(slot, slot + 1)
            self.pos[:, write] = positions
            self.seen += 1
            return ChunkPlan(write, 1, False, self.capacity, self.pos, self.seen < self.capacity)
        kept = min(T, self.capacity)
        key_positions = torch.cat([self.pos, positions], dim=1)  # before the chunk overwrites slots
        write = (self.seen + torch.arange(T - kept, T, device=positions.device)) % self.capacity
        self.pos[:, write] = positions[:, T - kept :]
        self.seen += T
        return ChunkPlan(write, kept, True, self.capacity + T, key_positions, True)


class LayerKVCache:
    """Keys and values of one layer: (B, kv_heads, capacity, head_size) each, in the slots of its kind."""

    def __init__(self, batch_size: int, kv_heads: int, head_size: int, slots: CacheSlots, dtype, device):
        self.slots = slots
        self.k = torch.zeros(batch_size, kv_heads, slots.capacity, head_size, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, k: torch.Tensor, v: torch.Tensor, plan: ChunkPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, kv_heads, T, head_size) as `plan` says; return the keys and values to
        attend to, (B, kv_heads, S, head_size) each, S = plan.key_positions.shape[1]."""
        if plan.concat:
            keys, values = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        T = k.shape[2]
        self.k[:, :, plan.write] = k[:, :, T - plan.kept :]
        self.v[:, :, plan.write] = v[:, :, T - plan.kept :]
        if plan.concat:
            return keys, values
        return self.k[:, :, : plan.attended], self.v[:, :, : plan.attended]


class KVCache:
    """The per-layer caches of a model, plus how far each sequence has got."""

    def __init__(self, config: GPTConfig, batch_size: int, capacity: int | None = None, *, dtype, device):
        capacity = config.max_seq_len if capacity is None else capacity
        if not 1 <= capacity <= config.max_seq_len:
            raise ValueError(f"KV cache capacity must be in [1, max_seq_len={config.max_seq_len}], got {capacity}")
        self.batch_size, self.capacity = batch_size, capacity
        self.kinds: dict[str, CacheSlots] = {}  # "append" and, with sliding layers shorter than the cache, "ring"
        self.layers: list[LayerKVCache] = []
        self.layer_kinds: list[str] = []
        for layer in range(config.num_layers):
            ring = config.is_sliding_layer(layer) and config.sliding_window < capacity
            kind = "ring" if ring else "append"
            if kind not in self.kinds:
                self.kinds[kind] = CacheSlots(batch_size, config.sliding_window if ring else capacity, ring, device)
            self.layer_kinds.append(kind)
            self.layers.append(LayerKVCache(batch_size, config.kv_heads, config.head_size, self.kinds[kind], dtype, device))
        self.length = 0  # tokens (columns) processed, padding included
        self.has_padding = False  # whether a chunk came with a padding mask: its padding stays hidden
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)

    def check_chunk(self, batch_size: int, T: int, padding_mask: torch.Tensor | None) -> None:
        """Raise ValueError, before anything is written, unless a chunk of T tokens for batch_size
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

    def begin_chunk(self, positions: torch.Tensor, padded: bool) -> dict[str, ChunkPlan]:
        """Plan a chunk with `positions` (B, T) (-1 = padding; `padded`: it came with a padding
        mask) for every kind of layer, and advance the sequences past it."""
        self.has_padding |= padded
        plans = {kind: slots.plan(positions) for kind, slots in self.kinds.items()}
        self.length += positions.shape[1]
        self.next_position = torch.maximum(self.next_position, positions.max(dim=1).values + 1)
        return plans
