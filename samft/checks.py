"""Checks of plugin options, shared by schedules, weighting strategies and losses.

An option comes from a config (or a direct call) and may be anything: each check returns it as the
type the option needs, or raises a ValueError that names the option and says what it must be. A
bool is never a number here (``True`` is an int to Python, not a weight to a config).

This module imports nothing from samft, so every package may use it.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any


def finite(name: str, value: Any) -> float:
    """``value`` as a float, or a ValueError naming the option when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"Option {name} must be a finite number, got {value!r}.")
    return float(value)


def at_least(name: str, value: Any, low: float) -> float:
    """``value`` as a float that is finite and ``>= low``, or a ValueError naming the option."""
    number = finite(name, value)
    if number < low:
        raise ValueError(f"Option {name} must be >= {low:g}, got {value!r}.")
    return number


def positive(name: str, value: Any) -> float:
    """``value`` as a float that is finite and ``> 0``, or a ValueError naming the option."""
    number = finite(name, value)
    if number <= 0:
        raise ValueError(f"Option {name} must be > 0, got {value!r}.")
    return number


def count(name: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum`` (a number of steps, epochs, ...), or a ValueError naming the
    option. A float with a whole value (``2.0``) is accepted: configs compute counts with fractions."""
    whole = (not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
             and value == int(value))
    if not whole or value < minimum:
        what = "a non-negative whole number" if minimum == 0 else f"a whole number >= {minimum}"
        raise ValueError(f"Option {name} must be {what}, got {value!r}.")
    return int(value)
