"""How the trainer draws its training windows: curriculum learning and data augmentation.

Every update draws windows of the training tokens with one seeded generator (its state is the
data position saved in checkpoints). Four options shape them, each a key of the run config's
[curriculum] table (gptoss.train.config.CurriculumConfig):

    random_offsets         augmentation: a window may start at any token. Off, windows start only
                           at k * seq_len + j * length (j = 0 at the full length), so the model
                           always sees the text cut the same way.
    bpe_dropout            augmentation: each training window is re-encoded from its text with
                           BPE-dropout (`BPETokenizer.encode_with_dropout`), so the same text comes
                           in other segmentations. Validation data is never touched.
    seq_len_warmup_steps   curriculum: windows grow linearly from seq_len_start to seq_len over the
                           first updates, with proportionally more of them per update so the
                           tokens per update stay the same, give or take one window per process
                           and micro-batch (seq_len_warmup_keep_tokens).
    difficulty_warmup_steps  curriculum: the training text is cut into seq_len chunks scored by how
                           surprising their tokens are to a unigram model of the corpus (mean
                           -log p(token)); windows first come only from the easiest fraction of
                           chunks, the pool growing linearly to all of them; until it holds all
                           of them, a window stays inside one chunk (the text that was scored).

The schedules depend only on the step, the draws only on the generator's state and (for the
dropout) on (seed, step, window), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from gptoss.data.tokenizers import BPETokenizer

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
    down to a multiple of SEQ_LEN_MULTIPLE (never below `start`); `final` from then on.
    The run config checks that 1 <= start <= final."""

    start: int
    final: int
    warmup_steps: int

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

    def __init__(
        self, tokens: np.ndarray, tokenizer, curriculum, seq_len: int, batch_size: int, seed: int,
        generator: torch.Generator, granularity: int = 1,
    ):  # fmt: skip
        """`tokens`: the training split (at least seq_len + 1 of them); `curriculum`: the
        [curriculum] table; seq_len, batch_size: the full window length and windows per update;
        seed: the run's (BPE-dropout draws depend on it); `generator`: the data position;
        `granularity`: the window count of an update must be a multiple of it (processes x
        gradient accumulation steps, so that it splits evenly)."""
        if curriculum.bpe_dropout and not isinstance(tokenizer, BPETokenizer):
            raise ValueError(f"bpe_dropout needs tokenizer = \"bpe\", this run's tokenizer is {tokenizer.kind!r}")
        self.tokens, self.tokenizer, self.curriculum, self.generator = tokens, tokenizer, curriculum, generator
        self.full_length, self.batch_size, self.seed, self.granularity = seq_len, batch_size, seed, granularity
        self.seq_len = SeqLenSchedule(curriculum.seq_len_start, seq_len, curriculum.seq_len_warmup_steps)
        # chunk c is tokens [c * seq_len, (c + 1) * seq_len]: a window inside it, and its last
        # target, fit in the split
        self.chunks = (len(tokens) - 1) // seq_len
        self.order = None  # chunk indices, easiest first, when the difficulty curriculum is on
        if curriculum.difficulty_warmup_steps:
            scores = unigram_surprisal(tokens[: self.chunks * seq_len], seq_len, tokenizer.vocab_size)
            self.order = torch.from_numpy(np.argsort(scores, kind="stable"))
        self.pool = LinearWarmup(curriculum.difficulty_start_fraction, 1.0, curriculum.difficulty_warmup_steps)

    def windows_per_update(self, step: int) -> int:
        """Windows in the global batch at `step`: batch_size; during the length warmup (with
        seq_len_warmup_keep_tokens) enough windows of the current length for batch_size x seq_len
        tokens, rounded up to a multiple of the granularity (so fewer than `granularity` windows more)."""
        length = self.seq_len(step)
        if length == self.full_length or not self.curriculum.seq_len_warmup_keep_tokens:
            return self.batch_size
        return math.ceil(self.batch_size * self.full_length / length / self.granularity) * self.granularity

    def pool_size(self, step: int) -> int:
        """How many chunks (easiest first) windows are drawn from at `step`."""
        if self.order is None:
            return self.chunks
        return max(1, math.ceil(self.pool(step) * self.chunks))

    def batch(self, step: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `rows` of the global batch of `step`: inputs and targets, (rows, length) int64 each.

        Every process draws the whole batch's starts (the generator stays the same in all of
        them) and builds only its own rows."""
        length, count = self.seq_len(step), self.windows_per_update(step)
        starts = self.starts(step, length, count)
        windows = [self.window(starts[index], length, step, index) for index in range(count)[rows]]
        windows = torch.from_numpy(np.stack(windows).astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def starts(self, step: int, length: int, count: int) -> list[int]:
        """Where the `count` windows of `step` start in the training split."""
        full, generator, pool = self.full_length, self.generator, self.pool_size(step)
        if pool < self.chunks:
            # the difficulty warmup: windows stay inside chunks of the easiest pool, so that they
            # hold the text that was scored (at the full length, exactly one chunk each)
            chunk = self.order[torch.randint(pool, (count,), generator=generator)]
        elif self.curriculum.random_offsets:  # any start whose window fits in the split
            return torch.randint(len(self.tokens) - length, (count,), generator=generator).tolist()
        else:
            chunk = torch.randint(self.chunks, (count,), generator=generator)
        if self.curriculum.random_offsets:
            offset = torch.randint(full - length + 1, (count,), generator=generator)
        else:  # the fixed cut: the chunk's start plus a multiple of the window length
            offset = torch.randint(full // length, (count,), generator=generator) * length
        return (chunk * full + offset).tolist()

    def window(self, start: int, length: int, step: int, index: int) -> np.ndarray:
        """length + 1 tokens from `start`, re-encoded with BPE-dropout when configured."""
        dropout = self.curriculum.bpe_dropout
        if not dropout:
            return self.tokens[start : start + length + 1]
        # the dropout draws depend only on (seed, step, window): the same in a resumed run and in
        # every process, whatever the process count
        rng = random.Random(f"{self.seed}/{step}/{index}")
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
