"""Checks of plugin options, shared by schedules, weighting strategies and losses.

An option comes from a config (or a direct call) and may be anything: each check returns it as the
type the option needs, or raises an :class:`OptionError` (a ValueError) that names the option and
says what it must be. The config loader reads the option from the error, not from its text, to
point at the full key the user typed (``loss.iou_loss=mae: ...``). A bool is never a number here
(``True`` is an int to Python, not a weight to a config).

This module imports nothing from samft, so every package may use it.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any


class OptionError(ValueError):
    """A plugin option with a value the plugin cannot use.

    Attributes:
        option: The option's name as the plugin's signature spells it (``"weights"``); an element
            of it may be named in the message (``weights[2]``).
        entry: For a per-term option given as ``{term: value}``, the term whose value is wrong.
    """

    def __init__(self, option: str, message: str, entry: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.entry = entry


def _option(name: str) -> str:
    """The option an element name belongs to: ``values[2]``, ``weights.iou``, ``points (steps)`` ->
    ``values``, ``weights``, ``points``."""
    return name.split("[", 1)[0].split(".", 1)[0].split(" ", 1)[0]


def fail(name: str, message: str, entry: str | None = None) -> OptionError:
    """An :class:`OptionError` for option (or option element) ``name``: ``raise fail(...)``."""
    return OptionError(_option(name), message, entry)


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, or an :class:`OptionError` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise fail(name, f"Option {name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def finite(name: str, value: Any) -> float:
    """``value`` as a float, or an OptionError when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise fail(name, f"Option {name} must be a finite number, got {value!r}.")
    return float(value)


def at_least(name: str, value: Any, low: float) -> float:
    """``value`` as a float that is finite and ``>= low``, or an OptionError."""
    number = finite(name, value)
    if number < low:
        raise fail(name, f"Option {name} must be >= {low:g}, got {value!r}.")
    return number


def positive(name: str, value: Any) -> float:
    """``value`` as a float that is finite and ``> 0``, or an OptionError."""
    number = finite(name, value)
    if number <= 0:
        raise fail(name, f"Option {name} must be > 0, got {value!r}.")
    return number


def count(name: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum`` (a number of steps, epochs, ...), or an OptionError. A float
    with a whole value (``2.0``) is accepted: configs compute counts with fractions."""
    whole = (not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
             and value == int(value))
    if not whole or value < minimum:
        what = "a non-negative whole number" if minimum == 0 else f"a whole number >= {minimum}"
        raise fail(name, f"Option {name} must be {what}, got {value!r}.")
    return int(value)
