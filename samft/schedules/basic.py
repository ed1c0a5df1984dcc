"""General-purpose schedules: constant, linear, cosine, step, exponential, warmup, piecewise; and
``as_schedule``, which turns a config value (a number or a spec) into a schedule."""

from __future__ import annotations

import abc
import bisect
import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from samft.checks import count, fail, finite, positive
from samft.registry import SCHEDULES
from samft.schedules.base import Schedule, increasing_steps, progress


def as_schedule(value: Any, what: str) -> Schedule:
    """Turn a number, a schedule or a spec ``{name: ..., **options}`` into a schedule.

    Args:
        value: A number (a constant), a :class:`Schedule`, or a mapping built through ``SCHEDULES``.
        what: Where the value comes from, for error messages (``"weights.focal"``).

    Returns:
        A schedule.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, Real) and not isinstance(value, bool):
        return Constant(value)
    if isinstance(value, Mapping):
        return SCHEDULES.build(dict(value))
    raise fail(
        what, f"{what} must be a number or a schedule spec such as "
        f"{{name: linear, start: 0.0, end: 1.0, total_steps: 1000}}; got {value!r}."
    )


@SCHEDULES.register("constant")
class Constant(Schedule):
    """``value`` at every step.

    Args:
        value: The value (default 1.0: the base lr unchanged when used as the lr multiplier).
    """

    def __init__(self, value: float = 1.0) -> None:
        self.value = finite("value", value)

    def at(self, step: float) -> float:
        return self.value


class _Ramp(Schedule):
    """From ``start`` to ``end`` over ``total_steps`` steps from ``begin_step`` on, held outside;
    subclasses give the shape ``0 -> 0, 1 -> 1`` of the way between them."""

    def __init__(self, start: float, end: float, total_steps: int, begin_step: int = 0) -> None:
        self.start = finite("start", start)
        self.end = finite("end", end)
        self.total_steps = count("total_steps", total_steps)
        self.begin_step = count("begin_step", begin_step)

    def at(self, step: float) -> float:
        return self.start + (self.end - self.start) * self.shape(progress(step, self.begin_step, self.total_steps))

    @abc.abstractmethod
    def shape(self, t: float) -> float:
        """Share of the way from ``start`` to ``end`` at progress ``t`` in [0, 1]."""


@SCHEDULES.register("linear")
class Linear(_Ramp):
    """Straight line from ``start`` to ``end``, held constant outside the span.

    ``value(s) = start + (end - start) * t`` with ``t = clamp((s - begin_step) / total_steps, 0, 1)``:
    ``start`` up to ``begin_step``, ``end`` from ``begin_step + total_steps`` on. ``total_steps = 0``
    is a jump to ``end`` at ``begin_step``.

    Args:
        start: Value up to ``begin_step``.
        end: Value from ``begin_step + total_steps`` on.
        total_steps: Length of the ramp in steps (>= 0).
        begin_step: First step of the ramp (default 0).
    """

    def shape(self, t: float) -> float:
        return t


@SCHEDULES.register("cosine")
class Cosine(_Ramp):
    """Half-cosine from ``start`` to ``end`` (fvcore's ``CosineParamScheduler``, SAM 2's lr schedule).

    ``value(s) = end + (start - end) * (1 + cos(pi * t)) / 2`` with ``t`` as in :class:`Linear`;
    held at ``start`` before ``begin_step`` and at ``end`` after the span. SAM 2's fine-tuning lr
    (as a multiplier of its base lr) is ``{name: cosine, start: 1.0, end: 0.1, total_steps: N}``.

    Args:
        start: Value up to ``begin_step``.
        end: Value from ``begin_step + total_steps`` on.
        total_steps: Length of the span in steps (>= 0; 0 is a jump).
        begin_step: First step of the span (default 0).
    """

    def shape(self, t: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * t))


@SCHEDULES.register("step")
class Step(Schedule):
    """``value * gamma ** k`` where ``k`` is the number of milestones ``<= step``.

    SAM's lr decay (divide by 10 at 2/3 and ~96% of N steps) is
    ``{name: step, value: 1.0, milestones: [${frac:N,0.6667}, ${frac:N,0.96}], gamma: 0.1}``.

    Args:
        value: Value before the first milestone (default 1.0).
        milestones: Non-decreasing steps at which the value is multiplied by ``gamma``; a step
            listed twice applies ``gamma`` twice. Fractions of a short run round to equal steps
            (``train.steps=1`` puts both of SAM's drops at step 1), so equal steps are allowed.
        gamma: Factor per milestone (default 0.1).
    """

    def __init__(self, milestones: Any, gamma: float = 0.1, value: float = 1.0) -> None:
        self.milestones = increasing_steps("milestones", milestones, strict=False)
        self.gamma = finite("gamma", gamma)
        self.value = finite("value", value)

    def at(self, step: float) -> float:
        return self.value * self.gamma ** bisect.bisect_right(self.milestones, step)


@SCHEDULES.register("exponential")
class Exponential(Schedule):
    """``start * gamma ** e`` with ``e = max(step - begin_step, 0) / period`` (floored if ``staircase``).

    Args:
        start: Value up to ``begin_step``.
        gamma: Factor per ``period`` steps (> 0; < 1 decays, > 1 grows).
        period: Steps per factor of ``gamma`` (default 1).
        begin_step: Step at which the decay starts (default 0).
        staircase: True changes the value only every ``period`` steps (default False).
        min_value: Optional floor of the value (for decays); None for no floor.
    """

    def __init__(self, start: float, gamma: float, period: int = 1, begin_step: int = 0,
                 staircase: bool = False, min_value: float | None = None) -> None:
        self.start = finite("start", start)
        self.gamma = positive("gamma", gamma)
        self.period = count("period", period, minimum=1)
        self.begin_step = count("begin_step", begin_step)
        self.staircase = bool(staircase)
        self.min_value = None if min_value is None else finite("min_value", min_value)

    def at(self, step: float) -> float:
        e = max(step - self.begin_step, 0) / self.period
        if self.staircase:
            e = math.floor(e)
        v = self.start * self.gamma ** e
        return v if self.min_value is None else max(v, self.min_value)


@SCHEDULES.register("warmup")
class Warmup(Schedule):
    """Linear warmup in front of another schedule ``after``.

    For ``step < warmup_steps``:
    ``value(s) = after(warmup_steps) * (start_factor + (1 - start_factor) * max(s, 0) / warmup_steps)``,
    i.e. a straight line from ``start_factor * after(warmup_steps)`` at step 0 up to the value that
    ``after`` has where the warmup ends. From ``warmup_steps`` on, ``value(s) = after(s)``: ``after``
    sees the global step, not a step shifted by the warmup (so milestones and spans of ``after``
    are counted from step 0, and a cosine meant to start after the warmup sets ``begin_step``).
    SAM's lr (250 warmup steps, then /10 at 2/3 and ~96% of N steps)::

        {name: warmup, warmup_steps: 250,
         after: {name: step, milestones: [${frac:N,0.6667}, ${frac:N,0.96}], gamma: 0.1}}

    Args:
        warmup_steps: Length of the warmup (0 disables it).
        after: The schedule after the warmup: a spec ``{name: ..., **options}``, a number, or a
            :class:`Schedule`.
        start_factor: Fraction of ``after(warmup_steps)`` at step 0 (default 0.0).
    """

    def __init__(self, warmup_steps: int, after: Mapping[str, Any] | float | Schedule,
                 start_factor: float = 0.0) -> None:
        self.warmup_steps = count("warmup_steps", warmup_steps)
        self.after = as_schedule(after, "Option after")
        self.start_factor = finite("start_factor", start_factor)

    def at(self, step: float) -> float:
        if step >= self.warmup_steps:
            return self.after(step)
        ramp = self.start_factor + (1.0 - self.start_factor) * max(step, 0) / self.warmup_steps
        return self.after(self.warmup_steps) * ramp


@SCHEDULES.register("piecewise")
class Piecewise(Schedule):
    """A schedule through given points, in one of two forms.

    ``points: [[s0, v0], [s1, v1], ...]`` (strictly increasing steps): ``v0`` up to ``s0``, the last
    value after the last point, and in between linear interpolation (``interpolation: linear``, the
    default) or the value of the last point passed (``interpolation: constant``).

    ``boundaries: [b0, b1, ...]`` with ``values: [v0, v1, ..., vn]`` (one more value than
    boundaries): ``values[k]`` where ``k`` is the number of boundaries ``<= step`` (piecewise constant).

    Args:
        points: ``[[step, value], ...]``, or None when ``boundaries``/``values`` are given.
        boundaries: Strictly increasing steps, with ``values``.
        values: ``len(boundaries) + 1`` values.
        interpolation: ``linear`` or ``constant`` for ``points``; only ``constant`` for boundaries.
    """

    def __init__(self, points: Any = None, boundaries: Any = None, values: Any = None,
                 interpolation: str | None = None) -> None:
        if interpolation not in (None, "linear", "constant"):
            raise fail("interpolation", f"Option interpolation must be 'linear' or 'constant', got {interpolation!r}.")
        if points is not None:
            if boundaries is not None or values is not None:
                raise ValueError("Give either points or boundaries + values to piecewise, not both.")
            self.steps, self.values = _points(points)
            self.interpolation = interpolation or "linear"
            return
        if boundaries is None or values is None:
            raise ValueError("piecewise needs points: [[step, value], ...] or both boundaries and values.")
        if interpolation == "linear":
            raise ValueError("boundaries + values is piecewise constant; use points for linear interpolation.")
        self.steps = increasing_steps("boundaries", boundaries)
        self.values = tuple(finite(f"values[{i}]", v) for i, v in enumerate(values))
        if len(self.values) != len(self.steps) + 1:
            raise fail("values", f"values needs len(boundaries) + 1 = {len(self.steps) + 1} entries, "
                                 f"got {len(self.values)}.")
        self.interpolation = "boundaries"

    def at(self, step: float) -> float:
        if self.interpolation == "boundaries":
            return self.values[bisect.bisect_right(self.steps, step)]
        k = bisect.bisect_right(self.steps, step)
        if k == 0:
            return self.values[0]
        if k == len(self.steps) or self.interpolation == "constant":
            return self.values[k - 1]
        s0, s1, v0, v1 = self.steps[k - 1], self.steps[k], self.values[k - 1], self.values[k]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


def _points(points: Any) -> tuple[tuple[int, ...], tuple[float, ...]]:
    pairs = list(points)
    if not pairs:
        raise fail("points", "Option points must hold at least one [step, value] pair.")
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise fail("points", f"points[{i}] must be a [step, value] pair, got {pair!r}.")
    steps = increasing_steps("points (steps)", [p[0] for p in pairs])
    return steps, tuple(finite(f"points[{i}][1]", p[1]) for i, p in enumerate(pairs))
