"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018).

Per step, with weights ``w`` (summing to T, the number of terms) and a shared layer W:

* ``G_i = ||grad_W (w_i L_i)||``: how hard term i pulls on W;
* ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``: its relative inverse training rate;
* ``target_i = mean_j(G_j) * r_i ** alpha``, a constant;
* ``L_grad = sum_i |G_i - target_i|``, differentiated w.r.t. ``w`` only, one optimiser step on ``w``,
  then ``w`` is clamped to ``min_weight`` and renormalised to sum to T.

The step's total is ``sum_i w_i L_i`` with the weights *before* the update (those are the weights
returned for logging); the update takes effect from the next step.

Exactness and cost: ``w_i > 0`` enters ``G_i`` only as a factor, ``G_i = w_i g_i`` with
``g_i = ||grad_W L_i||``, so ``dL_grad/dw_i = sign(G_i - target_i) g_i`` exactly. The ``g_i`` are
therefore computed with ``torch.autograd.grad(L_i, W, retain_graph=True)`` *without*
``create_graph``: no second-order graph is built, autograd runs only the part of the graph between
the losses and W, and nothing reaches the model's ``.grad`` (``L_grad`` is never back-propagated
into the model). The model's gradients are those of ``total.backward()`` alone.

Default shared layer, ``mask_decoder.transformer.norm_final_attn``: in SAM's
``MaskDecoder.predict_masks`` the two-way transformer returns the output tokens ``hs`` and the
image tokens ``src``. ``hs[:, 0]`` feeds the IoU head (IoU loss) and ``hs[:, 1:]`` feeds the
hypernetwork MLPs that, multiplied with the upscaled ``src``, give the masks (focal and dice);
``src`` does not reach the IoU head. ``hs`` leaves the transformer through ``norm_final_attn``,
the LayerNorm after the final token-to-image attention, so it is the last layer that every output
head depends on (everything after it is head-specific), as the paper prescribes. It has only
2 x 256 parameters (vit_b/l/h), which keeps the per-term backward passes short.

Distributed: when ``torch.distributed`` is initialised, ``g`` and ``L`` are averaged across ranks
before the update, so every rank makes the same update and the weights stay identical. The update
happens in ``step_end``, which the engine calls on every rank once per optimiser step; gradient
accumulation therefore updates once per step, and a skipped step (non-finite loss, fp16 overflow)
does not update.

Mixed precision: the ``g_i`` come from the unscaled fp32 losses (a GradScaler scales only the
engine's backward). Under bf16 autocast that is fine; under fp16 autocast a very small gradient in
an fp16 region between the losses and W can underflow to 0, which leaves that term's weight to the
renormalisation: prefer bf16 with GradNorm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from samft.checks import count, fail, finite, positive
from samft.registry import WEIGHTINGS
from samft.weighting.analysis import grad_norms, resolve_params
from samft.weighting.base import WeightingStrategy, per_term

DEFAULT_SHARED = "mask_decoder.transformer.norm_final_attn"
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@WEIGHTINGS.register("gradnorm")
class GradNormWeighting(WeightingStrategy):
    """GradNorm weights, updated once per optimiser step (:meth:`step_end`) by the strategy's own
    optimiser from the ``g_i`` and ``L_i`` that :meth:`forward` observed in the step's micro-batches.

    The weights are an ``nn.Parameter`` (so ``.to()`` and ``state_dict`` carry them) that only this
    strategy's optimiser steps: :meth:`param_groups` returns nothing for the model's optimiser.
    The state dict holds the weights, the sum and count of the initial losses and (as extra state)
    the optimiser's state, so a resumed run continues exactly. On loading, the optimiser's lr is
    reset to the configured ``lr``. Updates happen only in training mode with grad enabled; losses
    or gradient norms that are not finite skip the update (the engine then skips the step).

    Args:
        terms: Loss-term names.
        alpha: Restoring-force strength (default 1.5, the paper's value for most tasks).
        shared_param: Parameter or module name of the shared layer W (default
            ``mask_decoder.transformer.norm_final_attn``, see the module docstring).
        lr: Learning rate of the weights' optimiser (default 0.025).
        optimizer: ``adam`` (default) or ``sgd``.
        initial_steps: ``L_i(0)`` is the mean loss over the first this many steps (default 1: the
            first step, as in the paper); no update happens before they are seen.
        initial_weights: Starting weights, for all terms or ``{term: w}``, renormalised to sum to T
            (default: all 1).
        min_weight: Lower clamp of a weight after each step, before renormalising (default 1e-3),
            so a weight cannot reach 0 or turn negative.
    """

    def __init__(self, terms: Sequence[str], alpha: float = 1.5, shared_param: str = DEFAULT_SHARED,
                 lr: float = 0.025, optimizer: str = "adam", initial_steps: int = 1,
                 initial_weights: Mapping[str, float] | float | None = None, min_weight: float = 1e-3) -> None:
        super().__init__(terms)
        self.alpha = finite("alpha", alpha)
        self.lr = positive("lr", lr)
        self.min_weight = positive("min_weight", min_weight)
        self.initial_steps = count("initial_steps", initial_steps, minimum=1)
        if optimizer not in OPTIMIZERS:
            raise fail("optimizer", f"Option optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}.")
        if self.min_weight >= 1:
            raise fail("min_weight", f"Option min_weight must be < 1 (the weights average 1), got {min_weight!r}.")
        if not isinstance(shared_param, str) or not shared_param:
            raise fail("shared_param", f"Option shared_param must be a parameter or module name, got {shared_param!r}.")
        self.shared_param = shared_param
        self.optimizer_name = optimizer
        init = per_term("initial_weights", initial_weights, self.terms, default=1.0)
        w0 = torch.tensor([finite(f"initial_weights.{t}", init[t]) for t in self.terms])
        if (w0 <= 0).any():
            raise fail("initial_weights", f"Option initial_weights must be > 0 for every term, got {dict(init)}.")
        self.weights = nn.Parameter(w0 * len(self.terms) / w0.sum())
        self.register_buffer("initial_loss_sum", torch.zeros(len(self.terms)))
        self.register_buffer("initial_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_grad_norm", torch.zeros(len(self.terms)), persistent=False)
        self._optimizer = OPTIMIZERS[optimizer]([self.weights], lr=self.lr)
        self._shared: list[nn.Parameter] | None = None
        self._pending: tuple[torch.Tensor, int] | None = None  # (sum of [g, L] over micro-batches, count)
        self._initial_seen = 0  # host mirror of initial_count

    # -- engine contract ----------------------------------------------------------------------
    def bind(self, model: nn.Module) -> None:
        """Resolve ``shared_param`` in ``model``; it must be trainable."""
        params = resolve_params(model, self.shared_param)
        if not all(p.requires_grad for p in params):
            raise ValueError(
                f"GradNorm's shared layer {self.shared_param!r} is frozen (requires_grad=False). Unfreeze it or "
                "choose a trainable layer that every loss term depends on with weighting.shared_param."
            )
        self._shared = params

    def forward(self, losses: Mapping[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total with the current weights; ``g`` and ``L`` are kept for :meth:`step_end`'s update.

        Args:
            losses: One scalar tensor per configured term, with the graph of this step.
            step: Optimiser step (unused: the update is driven by the losses).

        Returns:
            The fp32 scalar total ``sum_i w_i L_i`` (``w`` as constants) and ``{term: w_i}``, the
            weights of this total.
        """
        values = self.stack_losses(losses)
        used = self.weights.detach().clone()
        total = (used.to(values.device) * values).sum()
        if self.training and torch.is_grad_enabled() and values.requires_grad:
            self._observe([losses[t] for t in self.terms], values.detach())
        return total, self.as_dict(used)

    def step_end(self, stepped: bool) -> None:
        """One GradNorm update from the step's micro-batches (their mean ``g`` and ``L``, averaged
        over ranks), if the step was taken; a skipped step leaves the weights as they are.

        Nothing here reads the device (the engine's step makes one read in all): the count of
        initial steps is mirrored on the host, and an update whose ``g`` or ``L`` is not finite
        (the engine skips such steps before they get here) is discarded on the device with
        ``torch.where``, leaving the weights and the initial losses unchanged."""
        pending, self._pending = self._pending, None
        if pending is None or not stepped:
            return
        summed, micro = pending
        g, values = _mean_across_ranks(summed / micro).split(len(self.terms))
        ok = torch.isfinite(g).all() & torch.isfinite(values).all()
        if self._initial_seen < self.initial_steps:
            self.initial_loss_sum += torch.where(ok, values, torch.zeros_like(values))
            self.initial_count += ok.long()
            self._initial_seen += 1
            if self._initial_seen < self.initial_steps:
                return
        self._step_weights(g, self._relative_rates(values), ok)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initial_seen = int(self.initial_count)  # once, at load time

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self._optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state["optimizer"])
        for group in self._optimizer.param_groups:
            group["lr"] = self.lr

    @property
    def last_grad_norms(self) -> dict[str, float]:
        """``{term: G_i}`` of the last update (weighted norms before the update), for analysis."""
        return self.as_dict(self.last_grad_norm)

    # -- the update -----------------------------------------------------------------------------
    def _observe(self, term_losses: list[torch.Tensor], values: torch.Tensor) -> None:
        """Add one micro-batch's ``g_i`` and ``L_i`` to the step's pending sums (used by :meth:`step_end`)."""
        if self._shared is None:
            raise ValueError("GradNorm needs the model: call strategy.bind(model) before the first training step.")
        g, connected = grad_norms(term_losses, self._shared)
        if not any(connected):
            raise ValueError(
                f"No loss term {list(self.terms)} depends on GradNorm's shared layer {self.shared_param!r}; "
                "set weighting.shared_param to a layer that every term's gradient passes through."
            )
        observed = torch.cat([g.to(self.weights.device), values.to(self.weights.device)])
        if self._pending is None:
            self._pending = (observed, 1)
        else:
            self._pending = (self._pending[0] + observed, self._pending[1] + 1)

    def _relative_rates(self, values: torch.Tensor) -> torch.Tensor:
        """``r_i``; a term whose initial loss is 0 counts as training at the mean rate."""
        initial = self.initial_loss_sum / self.initial_count.clamp_min(1)
        ratio = torch.where(initial > 0, values / initial.clamp_min(1e-30), torch.ones_like(values))
        mean = ratio.mean()
        return torch.where(mean > 0, ratio / mean.clamp_min(1e-30), torch.ones_like(ratio))

    def _step_weights(self, g: torch.Tensor, r: torch.Tensor, ok: torch.Tensor) -> None:
        """One optimiser step on the weights; where ``ok`` is False the weights stay as they were."""
        before = self.weights.detach().clone()
        with torch.enable_grad():
            weighted = self.weights * g  # G_i; differentiable in the weights only
            target = weighted.detach().mean() * r.pow(self.alpha)
            loss_grad = (weighted - target).abs().sum()
            (grad,) = torch.autograd.grad(loss_grad, self.weights)
        self.last_grad_norm = torch.where(ok, weighted.detach(), self.last_grad_norm)
        self.weights.grad = torch.where(ok, grad, torch.zeros_like(grad))
        self._optimizer.step()
        self.weights.grad = None
        with torch.no_grad():
            self.weights.clamp_(min=self.min_weight)
            self.weights.mul_(len(self.terms) / self.weights.sum())
            self.weights.copy_(torch.where(ok, self.weights, before))

    def extra_repr(self) -> str:
        return (f"terms={list(self.terms)}, alpha={self.alpha}, shared_param={self.shared_param!r}, "
                f"lr={self.lr}, optimizer={self.optimizer_name!r}, initial_steps={self.initial_steps}")


def _mean_across_ranks(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x
