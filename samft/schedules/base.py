"""The schedule base class and the helpers for step options every schedule shares (the checks of
other options are :mod:`samft.checks`)."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from samft.checks import count, fail


class Schedule(abc.ABC):
    """A pure function ``step -> float`` built from its options.

    A schedule holds nothing but its (plain Python) options: calling it never changes it, two
    schedules with equal options are equal, and it pickles. Subclasses implement :meth:`at`.
    """

    def __call__(self, step: int) -> float:
        """The value at ``step`` (an optimiser step counted from 0; any real number is accepted)."""
        if isinstance(step, bool) or not isinstance(step, Real) or not math.isfinite(step):
            raise ValueError(f"{type(self).__name__}: step must be a finite number, got {step!r}.")
        return float(self.at(step))

    @abc.abstractmethod
    def at(self, step: float) -> float:
        """The schedule's formula; ``step`` is already checked to be finite."""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


def increasing_steps(name: str, values: Any, *, strict: bool = True) -> tuple[int, ...]:
    """An increasing tuple of non-negative step counts, or a ValueError naming the option.

    ``strict=False`` also accepts equal neighbours (``[1, 1]``), for options where a repeated step
    has a meaning of its own.
    """
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise fail(name, f"Option {name} must be a list of step counts, got {values!r}.")
    steps = tuple(count(f"{name}[{i}]", v) for i, v in enumerate(values))
    if any(b < a or (strict and b == a) for a, b in zip(steps, steps[1:])):
        order = "strictly increasing" if strict else "non-decreasing"
        raise fail(name, f"Option {name} must be {order}, got {list(steps)}.")
    return steps


def progress(step: float, begin_step: int, total_steps: int) -> float:
    """Fraction of ``[begin_step, begin_step + total_steps]`` covered at ``step``, clamped to [0, 1].

    A zero-length span is a jump: 0 before ``begin_step``, 1 from it on.
    """
    if total_steps == 0:
        return 1.0 if step >= begin_step else 0.0
    return min(max((step - begin_step) / total_steps, 0.0), 1.0)
