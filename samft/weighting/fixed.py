"""Fixed weights per term, each a number or a schedule of the step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from samft.registry import WEIGHTINGS
from samft.schedules import Schedule, as_schedule
from samft.weighting.base import WeightingStrategy, per_term

#: SAM's loss weights: focal : dice = 20 : 1, IoU head (MSE) weight 1.
SAM_WEIGHTS = {"focal": 20.0, "dice": 1.0, "iou": 1.0}


@WEIGHTINGS.register("fixed")
class FixedWeighting(WeightingStrategy):
    """``total = sum_i w_i(step) * L_i`` with weights from the config.

    A term's weight is, in order: its entry in ``weights``; SAM's weight for ``focal`` (20),
    ``dice`` (1) or ``iou`` (1); ``default`` (1.0) for any other term. An entry is a number or a
    schedule spec evaluated at the step, e.g. a ramp of the IoU weight and the boundary-loss
    transfer (see :mod:`samft.schedules`)::

        weighting:
          name: fixed
          weights:
            iou: {name: warmup, warmup_steps: 1000,
                  after: {name: linear, start: 0.0, end: 1.0, total_steps: 9000, begin_step: 1000}}
            boundary: {name: boundary_transfer, role: boundary, steps_per_epoch: 500}

    Nothing is learned and nothing is stored: the state dict is empty.

    Args:
        terms: Loss-term names.
        weights: ``{term: number or schedule spec}``, or one number or schedule spec (a mapping
            with ``name``) for every term.
        default: Weight of a term that is neither in ``weights`` nor one of SAM's three (default 1.0).
    """

    def __init__(self, terms: Sequence[str], weights: Mapping[str, Any] | float | None = None,
                 default: float = 1.0) -> None:
        super().__init__(terms)
        given = per_term("weights", weights, self.terms, default=None)
        self.schedules: dict[str, Schedule] = {
            t: as_schedule(given[t] if given[t] is not None else SAM_WEIGHTS.get(t, default), f"weights.{t}")
            for t in self.terms
        }

    def weights_at(self, step: int) -> dict[str, float]:
        """The weight of every term at ``step``."""
        return {t: self.schedules[t](step) for t in self.terms}

    def forward(self, losses: Mapping[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the losses.

        Args:
            losses: One scalar tensor per configured term.
            step: Optimiser step, for scheduled weights.

        Returns:
            The fp32 scalar total and ``{term: weight}``.
        """
        values = self.stack_losses(losses)
        weights = self.weights_at(step)
        # Python-number factors: no weight tensor is copied to the device every step.
        total = sum(values[i] * float(weights[t]) for i, t in enumerate(self.terms))
        return total, weights

    def extra_repr(self) -> str:
        return f"terms={list(self.terms)}, schedules={self.schedules}"
