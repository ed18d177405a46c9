"""Curriculum learning and data augmentation (gptoss.train.windows): the length schedule, window bounds,
aligned and random offsets, the difficulty pool, and BPE-dropout against the `tokenizers` library."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss.data import random_batch
from gptoss.train.windows import SeqLenSchedule, WindowSampler, unigram_surprisal
from gptoss.data.tokenizers import BPETokenizer

TOKENS = np.arange(5000, dtype=np.int64)  # token i is i: a window shows where it started
NUMBERS = SimpleNamespace(kind="numbers", vocab_size=5000)  # what the sampler reads of a tokenizer


@pytest.fixture(scope="module")
def bpe_and_text():
    from conftest import shared_data_path

    text = shared_data_path("tinyshakespeare/input.txt").read_text(encoding="utf-8")
    return BPETokenizer.train(text, vocab_size=1024), text


def sampler_config(**changes) -> SimpleNamespace:
    """The [curriculum] table, plus the run's seed and batch shape (defaults: every option off but random offsets)."""
    values = dict(seed=0, seq_len=64, batch_size=4, random_offsets=True, bpe_dropout=0.0, seq_len_warmup_steps=0,
                  seq_len_start=16, seq_len_warmup_keep_tokens=True, difficulty_warmup_steps=0,
                  difficulty_start_fraction=0.25)  # fmt: skip
    return SimpleNamespace(**(values | changes))


def sampler(tokens=TOKENS, tokenizer=NUMBERS, seed=0, granularity=1, **changes) -> WindowSampler:
    config = sampler_config(**changes)
    generator = torch.Generator().manual_seed(seed)
    return WindowSampler(tokens, tokenizer, config, config.seq_len, config.batch_size, config.seed, generator, granularity)


# ---------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize(
    "step, length",
    [(0, 32), (1, 32), (50, 80), (99, 120), (100, 128), (5000, 128)],  # 32 + 96 * 99/100 = 127.04 -> 120
)
def test_seq_len_schedule_values_at_chosen_steps(step, length):
    assert SeqLenSchedule(start=32, final=128, warmup_steps=100)(step) == length


def test_seq_len_schedule_off_is_the_full_length():
    assert SeqLenSchedule(start=32, final=128, warmup_steps=0)(0) == 128


# the curriculum options a batch depends on (the length warmup's start capped at seq_len)
curricula = st.fixed_dictionaries(
    {"seq_len": st.integers(8, 96), "seq_len_start": st.integers(1, 96), "seq_len_warmup_steps": st.integers(0, 50),
     "seq_len_warmup_keep_tokens": st.booleans(), "random_offsets": st.booleans(),
     "difficulty_warmup_steps": st.integers(0, 30)}  # fmt: skip
).map(lambda options: options | {"seq_len_start": min(options["seq_len_start"], options["seq_len"])})


def checked_batch(s: WindowSampler, step: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's batch at `step`, checked: windows_per_update(step) windows of seq_len(step) <=
    seq_len tokens, targets the inputs shifted by one."""
    count = s.windows_per_update(step)
    x, y = s.batch(step, slice(None))
    assert x.shape == y.shape == (count, s.seq_len(step))
    assert 1 <= x.shape[1] <= seq_len
    assert torch.equal(x[:, 1:], y[:, :-1])
    return x, y


@settings(max_examples=60, deadline=None)
@given(options=curricula, step=st.integers(0, 80))
def test_batches_never_exceed_the_configured_length(options, step):
    x, y = checked_batch(sampler(**options), step, options["seq_len"])
    seq_len = options["seq_len"]
    if options["seq_len_warmup_keep_tokens"]:  # batch_size x seq_len tokens, give or take less than one window
        assert 4 * seq_len <= x.numel() < 4 * seq_len + x.shape[1]
    else:
        assert x.shape[0] == 4
    assert torch.equal(x + 1, y)  # consecutive tokens of the text: a window never jumps
    assert y.max() < len(TOKENS)


def test_seq_len_warmup_keeps_tokens_per_update():
    s = sampler(seq_len=64, seq_len_start=16, seq_len_warmup_steps=10)
    assert s.batch(0, slice(None))[0].shape == (16, 16)  # 4 x 64 tokens as 16 windows of 16
    assert s.seq_len(5) == 40 and s.windows_per_update(5) == 7  # 256 / 40 = 6.4: 7 windows, 280 tokens
    # 2 processes x 2 micro-batches: the count is rounded up to a multiple of 4
    split = sampler(seq_len=64, seq_len_start=16, seq_len_warmup_steps=10, granularity=4)
    assert split.windows_per_update(5) == 8 and split.windows_per_update(0) == 16


def test_aligned_windows_start_on_a_fixed_grid():
    s = sampler(random_offsets=False, seq_len=64, seq_len_start=16, seq_len_warmup_steps=10)
    for step in (0, 5, 10):
        x, _ = s.batch(step, slice(None))
        # x[:, 0] is the window's start: k * seq_len + a multiple of the window's length
        assert (x[:, 0] % 64 % x.shape[1] == 0).all()


def test_with_every_option_off_the_windows_are_random_batch_ones():
    x, y = sampler(seed=5).batch(0, slice(None))
    expected_x, expected_y = random_batch(TOKENS, 4, 64, torch.Generator().manual_seed(5))
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)


def test_random_offsets_start_windows_at_any_token():
    s = sampler(seq_len=16)
    starts = torch.cat([s.batch(step, slice(None))[0][:, 0] for step in range(100)])
    assert set((starts % 16).tolist()) == set(range(16))


def test_rows_of_a_batch_are_the_same_in_every_process():
    whole, _ = sampler(seed=3).batch(0, slice(None))
    halves = [sampler(seed=3).batch(0, slice(i * 2, (i + 1) * 2))[0] for i in range(2)]
    assert torch.equal(torch.cat(halves), whole)


# ---------------------------------------------------------------------------------------- difficulty
def test_unigram_surprisal_of_hand_made_chunks():
    # 8 tokens: id 0 six times (p = 3/4), ids 1 and 2 once each (p = 1/8)
    tokens = np.array([0, 0, 0, 0, 0, 1, 0, 2])
    scores = unigram_surprisal(tokens, chunk_len=4, vocab_size=3)
    assert scores == pytest.approx([np.log(4 / 3), (2 * np.log(4 / 3) + 2 * np.log(8)) / 4])


def test_difficulty_curriculum_draws_only_from_the_easiest_chunks_first():
    rng = np.random.default_rng(0)
    # chunk k of 16 tokens: easy chunks repeat token 0, hard ones hold rare random ids
    chunks = [np.zeros(16, dtype=np.int64) if k % 2 == 0 else rng.integers(1, 500, 16) for k in range(100)]
    tokens = np.concatenate(chunks)
    s = sampler(tokens=tokens, tokenizer=SimpleNamespace(kind="numbers", vocab_size=500), seq_len=16, batch_size=64,
                difficulty_warmup_steps=100, difficulty_start_fraction=0.4)  # fmt: skip
    # 99 whole chunks (the 100th has no token after it); the pool is ceil(fraction x 99)
    assert s.pool_size(0) == 40 and s.pool_size(50) == 70 and s.pool_size(100) == s.chunks == 99
    x, _ = s.batch(0, slice(None))
    assert (x == 0).all()  # the 40 easiest chunks are all-zero ones, and windows stay inside them
    late, _ = s.batch(100, slice(None))
    assert (late[:, 0] != 0).any()  # after the warmup the hard chunks are drawn too


# ---------------------------------------------------------------------------------------- BPE-dropout
def test_bpe_dropout_zero_equals_the_tokenizers_library(bpe_and_text):
    bpe, text = bpe_and_text
    sample = text[:50_000] + " <|endoftext|> Ünïcödé 😀 end"
    assert bpe.encode_with_dropout(sample, 0.0, random.Random(0)) == bpe.encode(sample)


@settings(max_examples=25, deadline=None)
@given(start=st.integers(0, 1_000_000), length=st.integers(1, 400), seed=st.integers(0, 2**32))
def test_bpe_dropout_segments_differently_and_decodes_to_the_same_text(bpe_and_text, start, length, seed):
    bpe, text = bpe_and_text
    sample = text[start : start + length]
    plain = bpe.encode(sample)
    dropped = [bpe.encode_with_dropout(sample, 0.3, random.Random(seed + i)) for i in range(4)]
    for ids in dropped:
        assert bpe.decode(ids) == sample
    if len(sample) >= 40:  # enough merges that four draws cannot all be the plain segmentation
        assert any(ids != plain for ids in dropped)
        assert len({tuple(ids) for ids in dropped}) > 1


def test_bpe_dropout_is_reproducible_from_the_seed(bpe_and_text):
    bpe, text = bpe_and_text
    first = bpe.encode_with_dropout(text[:2000], 0.1, random.Random(7))
    assert first == bpe.encode_with_dropout(text[:2000], 0.1, random.Random(7))
    assert first != bpe.encode_with_dropout(text[:2000], 0.1, random.Random(8))


def test_bpe_dropout_out_of_range_is_an_error(bpe_and_text):
    with pytest.raises(ValueError, match=r"BPE dropout must be in \[0, 1\), got 1.0"):
        bpe_and_text[0].encode_with_dropout("text", 1.0, random.Random(0))


def test_training_windows_with_bpe_dropout_decode_to_corpus_text(bpe_and_text):
    bpe, text = bpe_and_text
    tokens = np.asarray(bpe.encode(text[:100_000]), dtype=np.uint16)
    plain = sampler(tokens=tokens, tokenizer=bpe, seq_len=48, batch_size=16)
    dropped = sampler(tokens=tokens, tokenizer=bpe, seq_len=48, batch_size=16, bpe_dropout=0.1)
    x, y = dropped.batch(0, slice(None))
    assert x.shape == (16, 48) and torch.equal(x[:, 1:], y[:, :-1])
    for row in y:
        assert bpe.decode(row)[1:-1] in text  # the edges may be part of a split character: trim them
    assert not torch.equal(x, plain.batch(0, slice(None))[0])
    # the same step of the same run gives the same windows, whichever process builds them
    again = sampler(tokens=tokens, tokenizer=bpe, seq_len=48, batch_size=16, bpe_dropout=0.1)
    assert torch.equal(again.batch(0, slice(8, 16))[0], x[8:])


@pytest.fixture(scope="module")
def bpe_tokens(bpe_and_text):
    bpe, text = bpe_and_text
    return np.asarray(bpe.encode(text[:60_000]), dtype=np.uint16)


@settings(max_examples=25, deadline=None)
@given(options=curricula, step=st.integers(0, 40), dropout=st.sampled_from([0.0, 0.3]), granularity=st.sampled_from([1, 2, 4]))
def test_bpe_batches_with_every_option_never_exceed_the_configured_length(
    bpe_and_text, bpe_tokens, options, step, dropout, granularity
):
    """BPE-dropout re-encodes windows into more tokens: with it (and every other option, and
    several processes x accumulation steps), a batch is still count x seq_len(step) <= seq_len."""
    bpe = bpe_and_text[0]
    s = sampler(tokens=bpe_tokens, tokenizer=bpe, granularity=granularity, bpe_dropout=dropout, **options)
    x, y = checked_batch(s, step, options["seq_len"])
    assert x.shape[0] % granularity == 0 and int(y.max()) < bpe.vocab_size


def test_bpe_dropout_needs_a_bpe_tokenizer():
    with pytest.raises(ValueError, match="bpe_dropout needs tokenizer = \"bpe\""):
        sampler(bpe_dropout=0.1)
