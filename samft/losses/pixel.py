"""Per-pixel classification losses: sigmoid focal, BCE and class-weighted BCE.

All take logits (not probabilities), compute in fp32 in log space, ignore pixels whose target
is < 0 or whose ``valid`` entry is False, and support ``reduction`` ``"mean"`` (over counted
pixels), ``"sum"`` and ``"none"`` (per-pixel values, 0 on ignored pixels).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from samft.checks import at_least
from samft.losses._common import (
    check_pair,
    check_reduction,
    compute_dtype,
    fp32_compute,
    non_negative,
    option_checks,
    reduce_pixels,
    split_ignore,
)
from samft.registry import LOSSES


def focal_terms(x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Per-pixel sigmoid focal loss ``alpha_t (1 - p_t)^gamma BCE(x, t)`` (no ignore handling).

    ``1 - p_t = t sigmoid(-x) + (1 - t) sigmoid(x)`` is exact for hard targets even where
    ``sigmoid(x)`` rounds to 1, and the cross-entropy comes from the log-space BCE-with-logits.
    """
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_pt = t * torch.sigmoid(-x) + (1.0 - t) * torch.sigmoid(x)
    # The clamp keeps d/dq q^gamma finite at q == 0 for 0 < gamma < 1; it changes nothing visible.
    loss = one_minus_pt.clamp(min=torch.finfo(x.dtype).tiny).pow(gamma) * ce
    if alpha >= 0:
        loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
    return loss


@LOSSES.register("sigmoid_focal", checks=option_checks(gamma=non_negative))
def sigmoid_focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), as ``torchvision.ops.sigmoid_focal_loss``.

    ``FL = alpha_t (1 - p_t)^gamma BCE(x, t)`` with ``p = sigmoid(x)``,
    ``p_t = p t + (1 - p)(1 - t)`` and ``alpha_t = alpha t + (1 - alpha)(1 - t)``.

    Args:
        logits: ``[N, ...]`` logits.
        target: ``[N, ...]`` targets in [0, 1]; values < 0 are ignored.
        alpha: Weight of the foreground class (0.25); ``alpha < 0`` disables the alpha factor.
        gamma: Focusing exponent (2.0), >= 0; 0 gives (alpha-weighted) BCE.
        reduction: ``"mean"`` over counted pixels (0 if none), ``"sum"``, or ``"none"``
            (``[N, ...]`` with 0 on ignored pixels).
        valid: Optional bool ``[N, ...]``-broadcastable mask; False pixels are ignored.

    Returns:
        fp32 scalar, or per-pixel values for ``reduction="none"``. An empty target (no
        foreground) is an ordinary target: every pixel is a background pixel.
    """
    check_pair(logits, target)
    check_reduction(reduction)
    at_least("gamma", gamma, 0)
    dtype = compute_dtype(logits)
    with fp32_compute(logits.device):
        clean, weight = split_ignore(target, valid, dtype)
        values = focal_terms(logits.to(dtype), clean, alpha, gamma) * weight
        return reduce_pixels(values, weight, reduction)


@LOSSES.register("bce", checks=option_checks())
def bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy on logits: ``-(t log sigmoid(x) + (1 - t) log sigmoid(-x))``.

    Args:
        logits: ``[N, ...]`` logits.
        target: ``[N, ...]`` targets in [0, 1]; values < 0 are ignored.
        reduction: ``"mean"`` over counted pixels (0 if none), ``"sum"``, or ``"none"``.
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        fp32 scalar, or ``[N, ...]`` per-pixel values (0 on ignored pixels) for ``"none"``.
        Empty targets need no special case.
    """
    check_pair(logits, target)
    check_reduction(reduction)
    dtype = compute_dtype(logits)
    with fp32_compute(logits.device):
        clean, weight = split_ignore(target, valid, dtype)
        values = F.binary_cross_entropy_with_logits(logits.to(dtype), clean, reduction="none") * weight
        return reduce_pixels(values, weight, reduction)


@LOSSES.register("weighted_bce", checks=option_checks(max_pos_weight=functools.partial(at_least, low=1)))
def weighted_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    pos_weight: float | torch.Tensor | None = None,
    max_pos_weight: float = 100.0,
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE with the foreground term weighted: ``-(w_pos t log sigmoid(x) + (1 - t) log sigmoid(-x))``.

    Args:
        logits: ``[N, ...]`` logits.
        target: ``[N, ...]`` targets in [0, 1]; values < 0 are ignored.
        pos_weight: Foreground weight: a float, or a tensor broadcastable to the trailing
            dimensions (as ``BCEWithLogitsLoss``). None computes it from the batch as
            ``sum(1 - t) / sum(t)`` over counted pixels (negatives per positive), without gradient,
            clamped to ``[1 / max_pos_weight, max_pos_weight]`` so that a batch without foreground
            (ratio inf) or without background (ratio 0) still gives a finite, non-zero weight.
        max_pos_weight: Clamp bound for the batch-derived weight (100.0); ignored when
            ``pos_weight`` is given.
        reduction: ``"mean"`` over counted pixels (0 if none), ``"sum"``, or ``"none"``.
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        fp32 scalar, or ``[N, ...]`` per-pixel values (0 on ignored pixels) for ``"none"``.
    """
    check_pair(logits, target)
    check_reduction(reduction)
    at_least("max_pos_weight", max_pos_weight, 1)
    dtype = compute_dtype(logits)
    with fp32_compute(logits.device):
        clean, weight = split_ignore(target, valid, dtype)
        if pos_weight is None:
            pos_weight = batch_pos_weight(clean, weight, max_pos_weight)
        elif not torch.is_tensor(pos_weight):
            pos_weight = torch.tensor(float(pos_weight), dtype=dtype, device=logits.device)
        values = F.binary_cross_entropy_with_logits(
            logits.to(dtype), clean, pos_weight=pos_weight.to(dtype), reduction="none"
        )
        return reduce_pixels(values * weight, weight, reduction)


def batch_pos_weight(clean: torch.Tensor, weight: torch.Tensor, max_pos_weight: float) -> torch.Tensor:
    """Negatives per positive over counted pixels, clamped to ``[1/max, max]``; 0-dim, no grad."""
    with torch.no_grad():
        positives = (clean * weight).sum()
        negatives = ((1.0 - clean) * weight).sum()
        ratio = negatives / positives.clamp(min=torch.finfo(clean.dtype).tiny)
        return ratio.clamp(1.0 / max_pos_weight, max_pos_weight)
