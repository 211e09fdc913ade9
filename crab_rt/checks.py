"""Value checks that every validated config and message uses: a bool is not an integer, a number is finite."""

from __future__ import annotations

import math

__all__ = ["is_int", "is_number"]


def is_int(value: object) -> bool:
    """An int and not a bool (`True` would pass `isinstance(value, int)`)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
