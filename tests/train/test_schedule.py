"""Learning-rate schedules: values at chosen steps, and their shape for any settings."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptoss.train.schedule import SCHEDULES, LRSchedule


def test_warmup_is_linear_up_to_the_peak():
    s = LRSchedule("cosine", max_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)
    assert s(0) == pytest.approx(1e-4)  # 1/10 of the peak
    assert s(4) == pytest.approx(5e-4)
    assert s(9) == pytest.approx(1e-3)


def test_cosine_values():
    s = LRSchedule("cosine", max_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)
    assert s(10) == pytest.approx(1e-3)  # decay starts at the peak
    assert s(60) == pytest.approx(5.5e-4)  # half way: the mean of peak and floor
    assert s(35) == pytest.approx(1e-4 + 0.9e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert s(110) == pytest.approx(1e-4)  # the floor from total_steps on
    assert s(10_000) == pytest.approx(1e-4)


def test_constant_values():
    s = LRSchedule("constant", max_lr=3e-4, min_lr=0.0, warmup_steps=4, total_steps=100)
    assert [s(i) for i in range(4)] == pytest.approx([7.5e-5, 1.5e-4, 2.25e-4, 3e-4])
    assert s(50) == s(99) == s(500) == 3e-4


def test_warmup_stable_decay_values():
    s = LRSchedule("wsd", max_lr=1e-3, min_lr=0.0, warmup_steps=10, total_steps=100, decay_fraction=0.2)
    assert s(10) == s(50) == s(79) == 1e-3  # stable until the last 20 steps
    assert s(80) == pytest.approx(1e-3)
    assert s(90) == pytest.approx(5e-4)  # half way down the linear decay
    assert s(99) == pytest.approx(5e-5)
    assert s(100) == 0.0


def test_no_warmup_starts_at_the_peak():
    assert LRSchedule("cosine", 1e-3, 0.0, 0, 10)(0) == 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="linear"), "unknown learning-rate schedule"),
        (dict(max_lr=-1e-3), "must be > 0"),
        (dict(min_lr=2e-3), "min_lr"),
        (dict(warmup_steps=200), "warmup_steps"),
        (dict(total_steps=0), "total_steps"),
        (dict(decay_fraction=0.0), "decay_fraction"),
    ],
)
def test_bad_values_are_rejected(kwargs, match):
    values = dict(kind="cosine", max_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100) | kwargs
    with pytest.raises(ValueError, match=match):
        LRSchedule(**values)


@given(
    kind=st.sampled_from(SCHEDULES),
    max_lr=st.floats(1e-6, 1.0),
    floor_share=st.floats(0.0, 1.0),
    total=st.integers(1, 500),
    warmup_share=st.floats(0.0, 1.0),
    decay_fraction=st.floats(0.01, 1.0),
)
def test_shape(kind, max_lr, floor_share, total, warmup_share, decay_fraction):
    """Within (0, max_lr]; rising during warmup; never rising after it; at the floor from total_steps."""
    min_lr = max_lr * floor_share
    warmup = int(warmup_share * total)
    s = LRSchedule(kind, max_lr, min_lr, warmup, total, decay_fraction)
    values = [s(i) for i in range(total + 5)]
    assert all(0 < v <= max_lr * (1 + 1e-12) or v == min_lr for v in values)
    assert all(a < b for a, b in zip(values[:warmup], values[1:warmup]))
    after = values[warmup:]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(after, after[1:]))
    if kind != "constant":
        assert values[total] == pytest.approx(min_lr)
