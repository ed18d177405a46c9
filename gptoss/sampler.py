"""How the trainer draws its training windows: curriculum learning and data augmentation.

Every update draws windows of the training tokens with one seeded generator (its state is the
data position saved in checkpoints). Four options shape them, each a TrainConfig key:

    random_offsets         augmentation: a window may start at any token. Off, windows start only
                           at multiples of seq_len (during a length warmup, also at multiples of
                           the window length after those), so the model always sees the text
                           cut the same way.
    bpe_dropout            augmentation: each training window is re-encoded from its text with
                           BPE-dropout (`BPETokenizer.encode_with_dropout`), so the same text comes
                           in other segmentations. Validation data is never touched.
    seq_len_warmup_steps   curriculum: windows grow linearly from seq_len_start to seq_len over the
                           first updates, with proportionally more of them per update so the
                           tokens per update stay (about) the same (seq_len_warmup_keep_tokens).
    difficulty_warmup_steps  curriculum: the training text is cut into seq_len chunks scored by how
                           surprising their tokens are to a unigram model of the corpus (mean
                           -log p(token)); windows first come only from the easiest fraction of
                           chunks, the pool growing linearly to all of them.

The schedules depend only on the step, the draws only on the generator's state and (for the
dropout) on (seed, step, window), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from gptoss.tokenizers import BPETokenizer

SEQ_LEN_MULTIPLE = 8  # window lengths during the warmup are multiples of this (fewer distinct shapes)


@dataclass(frozen=True)
class LinearWarmup:
    """A value growing linearly from `start` to `end` over the first `steps` updates."""

    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.steps


@dataclass(frozen=True)
class SeqLenSchedule:
    """Window length at each update: from `start` to `final` over `warmup_steps` updates, rounded
    down to a multiple of SEQ_LEN_MULTIPLE (never below `start`); `final` from then on."""

    start: int
    final: int
    warmup_steps: int

    def __post_init__(self) -> None:
        if self.warmup_steps and not 1 <= self.start <= self.final:
            raise ValueError(f"seq_len_start must be in [1, seq_len = {self.final}], got {self.start}")

    def __call__(self, step: int) -> int:
        if step >= self.warmup_steps:
            return self.final
        length = LinearWarmup(self.start, self.final, self.warmup_steps)(step)
        return max(self.start, int(length) // SEQ_LEN_MULTIPLE * SEQ_LEN_MULTIPLE)


def unigram_surprisal(tokens: np.ndarray, chunk_len: int, vocab_size: int) -> np.ndarray:
    """Mean -log p(token) of each consecutive `chunk_len` chunk of `tokens` under the corpus's own
    token frequencies: (len(tokens) // chunk_len,) floats, low = common tokens = easy."""
    tokens = np.asarray(tokens[: len(tokens) // chunk_len * chunk_len], dtype=np.int64)
    counts = np.bincount(tokens, minlength=vocab_size)
    surprisal = -np.log(np.maximum(counts, 1) / len(tokens))  # (vocab_size,)
    return surprisal[tokens].reshape(-1, chunk_len).mean(axis=1)


class WindowSampler:
    """Draws the training batches of a run (see the module docstring for the options)."""

    def __init__(self, tokens: np.ndarray, tokenizer, config, generator: torch.Generator):
        """`tokens`: the training split; `config`: a TrainConfig; `generator`: the data position."""
        if config.bpe_dropout and not isinstance(tokenizer, BPETokenizer):
            raise ValueError(f"bpe_dropout needs tokenizer = \"bpe\", this run's tokenizer is {tokenizer.kind!r}")
        self.tokens, self.tokenizer, self.config, self.generator = tokens, tokenizer, config, generator
        self.seq_len = SeqLenSchedule(config.seq_len_start, config.seq_len, config.seq_len_warmup_steps)
        # chunks of the full length: the last one is dropped, so a window of any offset in a chunk fits
        self.chunks = (len(tokens) - 1) // config.seq_len - 1
        if self.chunks < 1:
            raise ValueError(f"the training split has {len(tokens):,} tokens, too few for windows of "
                             f"{config.seq_len} at every offset: use a shorter seq_len or more text")  # fmt: skip
        self.order = None  # chunk indices, easiest first, when the difficulty curriculum is on
        if config.difficulty_warmup_steps:
            scores = unigram_surprisal(tokens[: self.chunks * config.seq_len], config.seq_len, tokenizer.vocab_size)
            self.order = torch.from_numpy(np.argsort(scores, kind="stable"))
        self.pool = LinearWarmup(config.difficulty_start_fraction, 1.0, config.difficulty_warmup_steps)

    def windows_per_update(self, step: int) -> int:
        """Windows in the global batch at `step`: batch_size, times seq_len // length during the
        length warmup when seq_len_warmup_keep_tokens (so an update holds about as many tokens as
        at the full length)."""
        if not self.config.seq_len_warmup_keep_tokens:
            return self.config.batch_size
        return self.config.batch_size * (self.config.seq_len // self.seq_len(step))

    def pool_size(self, step: int) -> int:
        """How many chunks (easiest first) windows are drawn from at `step`."""
        if self.order is None:
            return self.chunks
        return max(1, math.ceil(self.pool(step) * self.chunks))

    def batch(self, step: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `rows` of the global batch of `step`: inputs and targets, (rows, length) int64 each.

        Every process draws the whole batch's starts (the generator stays the same in all of
        them) and builds only its own rows."""
        length, count, full = self.seq_len(step), self.windows_per_update(step), self.config.seq_len
        chunk = torch.randint(self.pool_size(step), (count,), generator=self.generator)
        if self.order is not None:
            chunk = self.order[chunk]
        if self.config.random_offsets:  # any token of the chunk
            offset = torch.randint(full, (count,), generator=self.generator)
        else:  # the chunk's start plus a multiple of the window length
            offset = torch.randint(full // length, (count,), generator=self.generator) * length
        starts = (chunk * full + offset).tolist()
        mine = range(count)[rows]
        windows = np.stack([self.window(starts[index], length, step, index) for index in mine]).astype(np.int64)
        windows = torch.from_numpy(windows)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def window(self, start: int, length: int, step: int, index: int) -> np.ndarray:
        """length + 1 tokens from `start`, re-encoded with BPE-dropout when configured."""
        dropout = self.config.bpe_dropout
        if not dropout:
            return self.tokens[start : start + length + 1]
        # the dropout draws depend only on (seed, step, window): the same in a resumed run and in
        # every process, whatever the process count
        rng = random.Random(f"{self.config.seed}/{step}/{index}")
        span = length + 1
        while True:  # a dropout segmentation is almost always longer: span tokens of text suffice
            # a character split by the window's edges decodes as U+FFFD: leave it out
            text = self.tokenizer.decode(self.tokens[start : start + span]).strip("\ufffd")
            ids = self.tokenizer.encode_with_dropout(text, dropout, rng)
            if len(ids) > length:
                return np.asarray(ids[: length + 1])
            if start + span >= len(self.tokens):  # the end of the split: no more text to add
                return self.tokens[start : start + length + 1]
            span *= 2
