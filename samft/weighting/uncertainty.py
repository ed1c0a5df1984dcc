"""Homoscedastic-uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from samft.checks import fail, finite, positive
from samft.registry import WEIGHTINGS
from samft.weighting.base import WeightingStrategy, per_term

#: Coefficient c of exp(-s) L per likelihood kind.
KINDS = {"regression": 0.5, "classification": 1.0}
REGULARISERS = ("log", "softplus")


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(WeightingStrategy):
    """Learned weights ``c_i exp(-s_i)`` with one log-variance ``s_i = log sigma_i^2`` per term.

    ``total = sum_i [c_i exp(-s_i) L_i + 0.5 r(s_i)]``, where

    * ``c_i = 0.5`` for a ``regression`` term and ``1`` for a ``classification`` term (the paper's
      Gaussian and softmax likelihoods). Default: ``regression`` for every term, whose optimum is
      ``s = log L`` (weight ``0.5 / L``); a classification term's optimum is ``s = log(2 L)``
      (weight ``0.5 / L`` as well).
    * ``r(s) = s`` (``regulariser: log``, the paper's ``0.5 log sigma^2``, default) or
      ``r(s) = softplus(s) = log(1 + sigma^2)`` (``regulariser: softplus``, Liebel and Koerner 2018),
      which is positive, so the total cannot go below 0 (the optimum then solves
      ``c L exp(-s) = 0.5 sigmoid(s)``).

    The floor: with ``r(s) = s`` and a loss going to 0, ``s -> -inf`` and the total runs to
    ``-inf``. ``min_log_var: m`` replaces ``s`` everywhere in the formula by the smooth floor
    ``s' = m + softplus(s - m)`` (> m; within ``exp(-(s - m))`` of ``s`` above the floor). Every
    weight then stays below ``c exp(-m)`` and each term's total above ``0.5 m``; unlike a hard clamp,
    ``s`` keeps a gradient below the floor, so it comes back up when a loss grows again. Default:
    no floor. Reported weights are ``c_i exp(-s'_i)``.

    The log-variances are trained by the model's optimiser: :meth:`param_groups` returns them with
    their own ``lr`` (default: the base lr) and no weight decay (decay would pull every ``s`` to 0).

    Args:
        terms: Loss-term names.
        kinds: ``regression`` / ``classification``, for all terms or as ``{term: kind}``.
        init_log_var: Initial ``s`` (default 0.0, i.e. weight ``c``), for all terms or per term.
        min_log_var: Floor ``m`` of ``s`` as described above, or None.
        regulariser: ``log`` or ``softplus``.
        lr: Learning rate of the log-variances, or None for the base lr.
    """

    def __init__(self, terms: Sequence[str], kinds: Mapping[str, str] | str | None = None,
                 init_log_var: Mapping[str, float] | float = 0.0, min_log_var: float | None = None,
                 regulariser: str = "log", lr: float | None = None) -> None:
        super().__init__(terms)
        kind_of = per_term("kinds", kinds, self.terms, default="regression")
        for term, kind in kind_of.items():
            if kind not in KINDS:
                raise fail("kinds", f"kinds.{term} must be one of {', '.join(KINDS)}, got {kind!r}.", entry=term)
        if regulariser not in REGULARISERS:
            raise fail("regulariser",
                       f"Option regulariser must be one of {', '.join(REGULARISERS)}, got {regulariser!r}.")
        inits = per_term("init_log_var", init_log_var, self.terms, default=0.0)
        self.kinds = dict(kind_of)
        self.regulariser = regulariser
        self.min_log_var = None if min_log_var is None else finite("min_log_var", min_log_var)
        self.lr = None if lr is None else positive("lr", lr)
        self.log_vars = nn.Parameter(torch.tensor([finite(f"init_log_var.{t}", inits[t]) for t in self.terms]))
        self.register_buffer("coef", torch.tensor([KINDS[kind_of[t]] for t in self.terms]), persistent=False)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """One group with the log-variances, ``lr`` = the own lr or ``base_lr``, no weight decay."""
        return [{"params": [self.log_vars], "lr": self.lr if self.lr is not None else base_lr,
                 "weight_decay": 0.0, "name": "weighting"}]

    def effective_log_vars(self) -> torch.Tensor:
        """``s'`` ``[T]``: the log-variances after the optional floor."""
        s = self.log_vars.float()
        if self.min_log_var is None:
            return s
        return self.min_log_var + F.softplus(s - self.min_log_var)

    def forward(self, losses: Mapping[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Uncertainty-weighted total.

        Args:
            losses: One scalar tensor per configured term.
            step: Optimiser step (unused: the weights are learned).

        Returns:
            The fp32 scalar total (differentiable in the losses and in ``log_vars``) and
            ``{term: c_i exp(-s'_i)}``.
        """
        values = self.stack_losses(losses)
        s = self.effective_log_vars().to(values.device)
        weights = self.coef.to(values.device) * torch.exp(-s)
        reg = s if self.regulariser == "log" else F.softplus(s)
        total = (weights * values + 0.5 * reg).sum()
        return total, self.as_dict(weights)

    def extra_repr(self) -> str:
        return (f"terms={list(self.terms)}, kinds={self.kinds}, regulariser={self.regulariser!r}, "
                f"min_log_var={self.min_log_var}, lr={self.lr}")
