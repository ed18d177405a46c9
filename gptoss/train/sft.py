"""Supervised fine-tuning: the data, model and windows of a run with an [sft] table.

    data     the conversations of [sft] conversations / val_conversations, rendered in the chat format
             of the starting checkpoint's tokenizer (gptoss.data.conversations: harmony for
             o200k_harmony; for char and bpe the chat template, whose special tokens the tokenizer
             gains and the checkpoints save)
    model    the checkpoint of init_from (any loadable one, in fp32), its vocabulary grown by the new
             special tokens' rows; with lora_rank, frozen under LoRA adapters (gptoss.checkpoints.lora),
             the new tokens' rows trained with them
    windows  `ConversationSampler`: one conversation per window, padded at its end, so conversations
             never attend to each other and no mask beyond the causal one is needed. Packing several
             into a window would need a block-diagonal attention mask to keep them apart (the model's
             attention takes one, but its fast causal path would be lost); at the few hundred tokens
             of a fine-tuning conversation, padding wastes little. Targets are -1 (ignored by the
             loss) outside assistant tokens and in the padding.

Like WindowSampler, the windows of an update depend only on the generator's state (the data
position in the checkpoint), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from gptoss.checkpoints import from_pretrained, load_checkpoint_tokenizer
from gptoss.checkpoints.lora import add_lora, load_adapter
from gptoss.data.conversations import Example, renderer_for, tokenize_conversations, with_chat_tokens
from gptoss.model import GPT

IGNORE = -1  # the target id F.cross_entropy skips (GPT.forward's ignore_index)


@dataclass
class ConversationData:
    """The rendered conversations of a fine-tuning run, with their tokenizer."""

    tokenizer: object
    train: list[Example]
    val: list[Example]
    meta: dict


def starting_tokenizer(init_from: str):
    """The tokenizer of the starting checkpoint, with the chat template's tokens for char and bpe."""
    tokenizer = load_checkpoint_tokenizer(init_from)
    if tokenizer is None:
        raise ValueError(f"{init_from} holds no tokenizer: fine-tuning needs the checkpoint's own (this project's, or an exported one)")
    return tokenizer if tokenizer.kind == "o200k_harmony" else with_chat_tokens(tokenizer)


def load_conversations(sft, seq_len: int, val_fraction: float) -> ConversationData:
    """The [sft] table's conversations, rendered and checked to fit a window of seq_len."""
    tokenizer = starting_tokenizer(sft.init_from)
    renderer = renderer_for(tokenizer)
    train = tokenize_conversations(sft.conversations, renderer, seq_len)
    if sft.val_conversations:
        val = tokenize_conversations(sft.val_conversations, renderer, seq_len)
    else:
        held_out = max(1, int(len(train) * val_fraction))
        if held_out >= len(train):
            raise ValueError(f"{sft.conversations} has {len(train)} conversation(s): too few to hold some out; give val_conversations")
        train, val = train[:-held_out], train[-held_out:]
    meta = {
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        "train_tokens": sum(len(e.ids) for e in train),
        "val_tokens": sum(len(e.ids) for e in val),
        "conversations": (len(train), len(val)),
    }
    return ConversationData(tokenizer, train, val, meta)


def padded_windows(examples: list[Example], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one window per example, (len(examples), length) int64 each: inputs
    padded with 0, targets the next token where it is trained, else IGNORE."""
    x = torch.zeros(len(examples), length, dtype=torch.int64)
    y = torch.full((len(examples), length), IGNORE, dtype=torch.int64)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.ids)
        trained = torch.tensor(example.trained)
        n = len(ids) - 1
        x[row, :n] = ids[:-1]
        y[row, :n] = torch.where(trained[1:], ids[1:], IGNORE)
    return x, y


class ConversationSampler:
    """Draws the windows of a fine-tuning run: batch_size conversations per update, at random (with
    replacement) from the generator, each in its own window of seq_len."""

    def __init__(self, examples: list[Example], seq_len: int, batch_size: int, generator: torch.Generator):
        self.examples, self.seq_len, self.batch_size, self.generator = examples, seq_len, batch_size, generator
        self.chunks = len(examples)  # the data pool: all of it, always (no curriculum)

    def windows_per_update(self, step: int) -> int:
        return self.batch_size

    def pool_size(self, step: int) -> int:
        return self.chunks

    def batch(self, step: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `rows` of the global batch of `step` (every process draws the whole batch's choices)."""
        chosen = torch.randint(len(self.examples), (self.batch_size,), generator=self.generator).tolist()
        return padded_windows([self.examples[i] for i in chosen[rows]], self.seq_len)


@torch.no_grad()
def grow_vocabulary(model: GPT, vocab_size: int) -> GPT:
    """Give the model rows for ids up to `vocab_size` (a tokenizer's new special tokens): new
    embedding (and untied unembedding) rows drawn like the existing ones, N(0, their std), so each
    new token starts distinct; the old rows are kept. The model itself when it has the rows."""
    old = model.config.vocab_size
    if vocab_size <= old:
        return model
    grown = GPT(dataclasses.replace(model.config, vocab_size=vocab_size), device="meta")
    state = model.state_dict()
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        rows = state[name]
        extra = torch.randn(vocab_size - old, rows.shape[1], dtype=rows.dtype) * rows.float().std().to(rows.dtype)
        state[name] = torch.cat([rows, extra])
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    grown.load_state_dict(state, strict=False, assign=True)
    grown.tie_weights()
    return grown


def lora_targets(sft) -> tuple[str, ...]:
    return tuple(t.strip() for t in sft.lora_targets.split(",") if t.strip())


def starting_model(sft, vocab_size: int, adapter_from: Path | None = None) -> GPT:
    """The model a fine-tuning run starts from: init_from in fp32 with `vocab_size` rows, under
    fresh LoRA adapters when lora_rank (or those saved in `adapter_from`, when resuming). LoRA
    also trains the embedding (and unembedding) rows of the new tokens: frozen at their random
    start, the chat template's tokens would mean nothing to the model."""
    pretrained = from_pretrained(sft.init_from, dtype=torch.float32)
    new_tokens = range(pretrained.config.vocab_size, vocab_size)
    model = grow_vocabulary(pretrained, vocab_size)
    if sft.lora_rank:
        if adapter_from is not None:
            load_adapter(model, adapter_from)
        else:
            add_lora(model, sft.lora_rank, sft.lora_alpha, lora_targets(sft), token_indices=list(new_tokens))
    return model


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), a tied matrix counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
