"""Schedules: pure functions ``step -> float`` built from a config spec ``{name: ..., **options}``.

The engine uses a schedule in two places:

* the learning rate, as a multiplier of the base lr: ``lr = base_lr * schedule(step)``;
* per-term loss weights of the ``fixed`` weighting, as absolute values.

Built-in schedules (see each class for the exact formula):

=====================  ============================================================================
``constant``           ``value``
``linear``             ``start -> end`` over ``[begin_step, begin_step + total_steps]``, clamped outside
``cosine``             half-cosine ``start -> end`` over the same span (SAM 2)
``step``               ``value * gamma ** (number of milestones <= step)`` (SAM)
``exponential``        ``start * gamma ** ((step - begin_step) / period)``
``warmup``             linear warmup towards ``after(warmup_steps)``, then ``after(step)``
``piecewise``          through ``points`` (linear or constant) or ``boundaries`` + ``values``
``boundary_transfer``  the boundary/region weight transfer of boundary loss (see below)
=====================  ============================================================================

SAM's lr recipe for N steps (250 warmup steps, lr / 10 at 2/3 and ~96% of training)::

    schedule:
      name: warmup
      warmup_steps: 250
      after: {name: step, milestones: ["${frac:${train.steps},0.6667}", "${frac:${train.steps},0.96}"],
              gamma: 0.1}

SAM 2's fine-tuning lr: ``{name: cosine, start: 1.0, end: 0.1, total_steps: N}``.

The boundary-loss weight transfer (boundary weight 0.01 + 0.01 per epoch, region weight falling by
0.01 per epoch to a floor of 0.1), as loss weights of the ``fixed`` weighting::

    weighting:
      name: fixed
      weights:
        dice: {name: boundary_transfer, role: region, steps_per_epoch: 500}
        boundary: {name: boundary_transfer, role: boundary, steps_per_epoch: 500}

(:mod:`samft.schedules.boundary` gives the equivalent pair of ``linear`` schedules; the
``region_boundary`` loss uses the same schedule, counted in epochs.)
"""

from samft.schedules.base import Schedule
from samft.schedules.basic import Constant, Cosine, Exponential, Linear, Piecewise, Step, Warmup, as_schedule
from samft.schedules.boundary import BoundaryTransfer

__all__ = [
    "BoundaryTransfer", "Constant", "Cosine", "Exponential", "Linear", "Piecewise", "Schedule", "Step",
    "Warmup", "as_schedule",
]
