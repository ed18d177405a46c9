"""Sampling: top-k/top-p/min-p never emit a token outside the allowed set (property test over
random logits, against a float64 oracle written from the definitions and against transformers'
warpers), greedy, seeded reproducibility, the repetition penalty, and bad options."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gptoss.inference.sampling import SamplingOptions, apply_repetition_penalty, filter_logits, sample_next

TOLERANCE = 1e-5  # float32 (ours) against float64 (the oracle), on probabilities and masses


def allowed_tokens(logits: np.ndarray, options: SamplingOptions, slack: float) -> np.ndarray:
    """Which tokens the options allow, from the definitions, in float64 (bool mask over the vocab).

    Ties make top-p ambiguous (which of several equal tokens crosses the threshold is a matter of
    sort order), so slack=+TOLERANCE gives every token some tie-break could keep and
    slack=-TOLERANCE only those every tie-break must keep.
    """
    scaled = logits.astype(np.float64) / options.temperature
    keep = np.ones_like(scaled, dtype=bool)
    if options.top_k is not None:
        kth = np.sort(scaled)[::-1][min(options.top_k, len(scaled)) - 1]
        keep &= scaled >= kth
    if options.top_p is not None:
        probs = np.where(keep, np.exp(scaled - scaled[keep].max()), 0.0)
        probs /= probs.sum()
        more_likely = np.array([probs[probs > p].sum() for p in probs])
        tied = np.array([probs[probs == p].sum() - p for p in probs])
        mass_before = more_likely if slack > 0 else more_likely + tied  # best / worst place among ties
        keep &= mass_before < options.top_p + slack
    if options.min_p is not None:
        ratio = np.exp(scaled - scaled.max())  # probability relative to the most likely token
        keep &= ratio >= options.min_p * (1 - slack) - slack
    return keep


logit_rows = st.lists(st.floats(-10, 10, width=32), min_size=2, max_size=40)
sampling_options = st.builds(
    SamplingOptions,
    temperature=st.floats(0.25, 4.0),
    top_k=st.none() | st.integers(1, 45),
    top_p=st.none() | st.floats(0.01, 1.0),
    min_p=st.none() | st.floats(0.0, 1.0),
)


@settings(max_examples=300, deadline=None)
@given(row=logit_rows, options=sampling_options, seed=st.integers(0, 2**31 - 1))
@example(row=[0.0, 1.401298464324817e-45], options=SamplingOptions(temperature=2.0, top_k=1), seed=0)  # 1e-45 / 2 rounds to 0
def test_filters_never_emit_a_token_outside_the_allowed_set(row, options, seed):
    logits = torch.tensor([row], dtype=torch.float32)
    kept = torch.isfinite(filter_logits(logits, options))[0].numpy()
    may, must = allowed_tokens(np.array(row), options, +TOLERANCE), allowed_tokens(np.array(row), options, -TOLERANCE)
    assert not (kept & ~may).any(), "a filter kept a token the options forbid"
    assert not (must & ~kept).any(), "a filter dropped a token the options allow"
    draws = sample_next(logits.expand(200, -1), options, torch.Generator().manual_seed(seed))
    assert may[draws.numpy()].all()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), options=sampling_options)
@example(seed=0, options=SamplingOptions(temperature=0.5, top_p=0.9999999999999999))  # top_p rounds to 1 in float32
def test_filters_agree_with_transformers_warpers(seed, options):
    """On continuous random logits (no ties), the same tokens survive as with transformers'
    temperature -> top-k -> top-p -> min-p warpers, applied in the order `generate` applies them."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(seed)) * 3
    theirs = logits.clone()
    warpers = [TemperatureLogitsWarper(options.temperature)]
    if options.top_k is not None:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p is not None:
        warpers.append(TopPLogitsWarper(options.top_p))
    if options.min_p is not None:
        warpers.append(MinPLogitsWarper(options.min_p))
    for warper in warpers:
        theirs = warper(None, theirs)
    ours = filter_logits(logits, options)
    disagree = torch.isfinite(ours) != torch.isfinite(theirs)
    # a token can sit on a threshold to within float32 rounding; anything else is a real difference
    if disagree.any():
        probs = torch.softmax(logits.double() / options.temperature, dim=-1)
        assert disagree.sum() == 1 and options.top_p is not None, "filters disagree away from a threshold"
        row, token = disagree.nonzero()[0].tolist()
        sorted_probs = probs[row].sort(descending=True).values
        boundary = (sorted_probs.cumsum(0) - options.top_p).abs().min()
        assert boundary < 1e-5


def test_greedy_is_argmax():
    logits = torch.randn(4, 30)
    assert torch.equal(sample_next(logits, SamplingOptions(temperature=0)), logits.argmax(-1))


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = torch.randn(8, 30)
    for options in (SamplingOptions(top_k=1), SamplingOptions(top_p=1e-6), SamplingOptions(min_p=1.0)):
        assert torch.equal(sample_next(logits, options, torch.Generator().manual_seed(0)), logits.argmax(-1))


def test_a_fixed_seed_reproduces_and_the_draws_follow_the_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, -1)
    options = SamplingOptions(temperature=1.0)
    a = sample_next(logits, options, torch.Generator().manual_seed(3))
    assert torch.equal(a, sample_next(logits, options, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, sample_next(logits, options, torch.Generator().manual_seed(4)))
    frequencies = torch.bincount(a, minlength=4) / len(a)
    torch.testing.assert_close(frequencies, torch.softmax(logits[0], -1), atol=0.015, rtol=0)


@pytest.mark.parametrize("penalty", [0.7, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 40, generator=g)
    history = torch.randint(0, 40, (3, 15), generator=g)
    seen = torch.zeros(3, 40, dtype=torch.bool).scatter_(1, history, True)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(history, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, penalty), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(top_p=0.0), ValueError, "top_p must be in \\(0, 1\\]"),
        (dict(top_p=1.01), ValueError, "top_p must be in \\(0, 1\\]"),
        (dict(top_p=float("nan")), TypeError, "top_p must be a number"),
        (dict(top_k=0), ValueError, "top_k must be >= 1"),
        (dict(top_k=2.5), TypeError, "top_k must be an int"),
        (dict(min_p=1.5), ValueError, "min_p must be in \\[0, 1\\]"),
        (dict(temperature=-1), ValueError, "temperature must be 0 \\(greedy\\) or in"),
        (dict(temperature=float("inf")), ValueError, "temperature must be 0 \\(greedy\\) or in"),
        (dict(temperature=1e-38), ValueError, "overflows float32 in logits / temperature; use 0 for greedy"),
        (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty must be > 0"),
        (dict(temperature=0, top_k=5), ValueError, "conflicting options: temperature=0"),
        (dict(temperature=0, min_p=0.1), ValueError, "conflicting options: temperature=0"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamplingOptions(**kwargs)
