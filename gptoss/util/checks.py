"""Argument checks shared by every layer: one definition of "an int", so that True, 2.0 and "3"
are refused the same way everywhere."""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """Whether `value` is an integer (Python's or numpy's), and not a bool (True is an int to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, *, minimum: int | None = None, optional: bool = False) -> None:
    """Raise TypeError unless `value` is an int (or None, when optional), and ValueError when it is
    below `minimum`."""
    if optional and value is None:
        return
    if not is_int(value):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_positive_int(name: str, value, *, optional: bool = False, counting: str = "") -> None:
    """Raise ValueError unless `value` is an int >= 1 (or None, when optional): for sizes and counts,
    where a wrong type and a wrong value are the same mistake. counting: what it counts, for the
    message ("characters")."""
    if optional and value is None:
        return
    if not is_int(value) or value < 1:
        what = f"a positive number of {counting}" if counting else "a positive integer"
        raise ValueError(f"{name} must be {what}{' (or None)' if optional else ''}, got {value!r}")
