"""The boundary-loss weight transfer of Kervadec et al. (2019): samft's one implementation of it.

Boundary loss starts with a small weight that grows by ``rate`` per epoch while the region loss
(dice / generalised dice) it is paired with loses the same amount per epoch down to a floor
(the public boundary-loss code's ``StealWeight(0.01)`` scheduler, region weights starting at 1 and
boundary weights at 0.01). Both weights are one schedule each, used through the ``fixed``
weighting (``steps_per_epoch`` turns epochs into the steps a schedule is called with)::

    weighting:
      name: fixed
      weights:
        focal: 20.0
        dice: {name: boundary_transfer, role: region, steps_per_epoch: 500}
        boundary: {name: boundary_transfer, role: boundary, steps_per_epoch: 500}

giving, in epoch ``e = step // steps_per_epoch``: ``boundary = 0.01 + 0.01 e`` and
``dice = max(0.1, 1.0 - 0.01 e)`` (the floor is reached in epoch 90). ``per_epoch: false`` moves
the weights continuously with ``e = step / steps_per_epoch`` instead; that variant equals two
``linear`` schedules (with E the number of training epochs, S the steps per epoch)::

    boundary: {name: linear, start: 0.01, end: 0.01 + 0.01 E, total_steps: E S}
    dice:     {name: linear, start: 1.0, end: 0.1, total_steps: 90 S}

The ``region_boundary`` loss (:mod:`samft.losses.boundary`) computes its two weights with this
schedule too, called with the trainer's epoch and ``steps_per_epoch: 1``.
"""

from __future__ import annotations

import math

from samft.checks import count, fail, finite
from samft.registry import SCHEDULES
from samft.schedules.base import Schedule

ROLES = ("boundary", "region")


@SCHEDULES.register("boundary_transfer")
class BoundaryTransfer(Schedule):
    """One side of the boundary/region weight transfer.

    ``boundary``: ``min(boundary_start + rate * e, boundary_max)``; ``region``:
    ``max(region_floor, region_start - rate * e)``; ``e = step // steps_per_epoch`` (``per_epoch``) or
    ``step / steps_per_epoch``; negative steps count as epoch 0.

    Args:
        role: ``boundary`` (the growing weight) or ``region`` (the shrinking one).
        steps_per_epoch: Optimiser steps per epoch (>= 1).
        rate: Weight moved per epoch (default 0.01).
        boundary_start: Boundary weight in epoch 0 (default 0.01).
        region_start: Region weight in epoch 0 (default 1.0).
        region_floor: Lowest region weight (default 0.1).
        per_epoch: True (default) changes the weights once per epoch, as the original scheduler does.
        boundary_max: Highest boundary weight, or None (default) for no cap.
    """

    def __init__(self, role: str, steps_per_epoch: int, rate: float = 0.01, boundary_start: float = 0.01,
                 region_start: float = 1.0, region_floor: float = 0.1, per_epoch: bool = True,
                 boundary_max: float | None = None) -> None:
        if role not in ROLES:
            raise fail("role", f"Option role must be one of {', '.join(ROLES)}; got {role!r}.")
        self.role = role
        self.steps_per_epoch = count("steps_per_epoch", steps_per_epoch, minimum=1)
        self.rate = finite("rate", rate)
        self.boundary_start = finite("boundary_start", boundary_start)
        self.region_start = finite("region_start", region_start)
        self.region_floor = finite("region_floor", region_floor)
        self.per_epoch = bool(per_epoch)
        self.boundary_max = None if boundary_max is None else finite("boundary_max", boundary_max)

    def at(self, step: float) -> float:
        epoch = max(step, 0) / self.steps_per_epoch
        if self.per_epoch:
            epoch = math.floor(epoch)
        if self.role == "boundary":
            weight = self.boundary_start + self.rate * epoch
            return weight if self.boundary_max is None else min(weight, self.boundary_max)
        return max(self.region_floor, self.region_start - self.rate * epoch)
