"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from samft.checks import positive
from samft.registry import WEIGHTINGS
from samft.weighting.base import WeightingStrategy, check_terms


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(WeightingStrategy):
    """Weights from how fast each term's epoch loss fell: ``w_i = T softmax_i(r_i / temperature)``.

    ``r_i = L_i(e-1) / L_i(e-2)``, the ratio of the term's mean loss over the last two finished
    epochs (reported through :meth:`epoch_end`); a term that fell more slowly gets more weight. The
    weights sum to T. During the first two epochs (fewer than two losses reported) every weight is 1.
    A term whose ``L_i(e-2)`` is 0 gets ``r_i = 1``. The state dict holds the last two epoch
    losses and the number of epochs reported.

    Args:
        terms: Loss-term names.
        temperature: Softmax temperature (default 2.0, the paper's); larger is closer to uniform.
    """

    def __init__(self, terms: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(terms)
        self.temperature = positive("temperature", temperature)
        # row 0: epoch e-2, row 1: epoch e-1
        self.register_buffer("history", torch.zeros(2, len(self.terms), dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Record the mean unweighted loss of every term over the epoch that just ended.

        Raises:
            ValueError: the terms differ from the configured ones, or a value is not finite.
        """
        check_terms(self.terms, epoch_losses, "epoch losses")
        values = [float(epoch_losses[t]) for t in self.terms]
        bad = {t: v for t, v in zip(self.terms, values) if not math.isfinite(v)}
        if bad:
            raise ValueError(f"DWA got non-finite epoch losses {bad}; the epoch means must be finite.")
        self.history[0] = self.history[1].clone()
        self.history[1] = torch.tensor(values, dtype=self.history.dtype, device=self.history.device)
        self.epochs_seen += 1

    def current_weights(self) -> torch.Tensor:
        """The weights ``[T]`` (float64) for the current epoch (computed on the device: the engine
        calls this every step and must not wait for a read of ``epochs_seen``)."""
        before, last = self.history[0], self.history[1]
        ratio = torch.where(before > 0, last / before.clamp_min(1e-300), torch.ones_like(last))
        weights = len(self.terms) * torch.softmax(ratio / self.temperature, dim=0)
        return torch.where(self.epochs_seen < 2, torch.ones_like(weights), weights)

    def forward(self, losses: Mapping[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total with this epoch's DWA weights.

        Args:
            losses: One scalar tensor per configured term.
            step: Optimiser step (unused: the weights change per epoch).

        Returns:
            The fp32 scalar total and ``{term: w_i}``.
        """
        values = self.stack_losses(losses)
        weights = self.current_weights()
        total = (weights.to(device=values.device, dtype=values.dtype) * values).sum()
        return total, self.as_dict(weights)

    def extra_repr(self) -> str:
        return f"terms={list(self.terms)}, temperature={self.temperature}"
