"""Region-overlap losses: dice, generalised dice, soft IoU (Jaccard) and Lovasz hinge.

Each is computed per mask (the first dimension indexes masks) in fp32 over the pixels that
are not ignored (target < 0 or ``valid`` False). ``reduction="none"`` returns one value per
mask ``[N]``; ``"mean"`` averages and ``"sum"`` sums those.
"""

from __future__ import annotations

import torch

from samft.checks import at_least
from samft.losses._common import (
    broadcast_valid,
    check_pair,
    check_reduction,
    compute_dtype,
    fp32_compute,
    non_negative,
    option_checks,
    reduce,
    safe_ratio,
    split_ignore,
)
from samft.registry import LOSSES


def _soft_sums(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, squared: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-mask ``sum(p t)``, ``sum(p)`` and ``sum(t)`` (squares if ``squared``) over counted pixels."""
    dtype = compute_dtype(logits)
    clean, weight = split_ignore(target, valid, dtype)
    probs = torch.sigmoid(logits.to(dtype)) * weight
    inter = (probs * clean).flatten(1).sum(1)
    if squared:
        return inter, probs.square().flatten(1).sum(1), clean.square().flatten(1).sum(1)
    return inter, probs.flatten(1).sum(1), clean.flatten(1).sum(1)


@LOSSES.register("dice", checks=option_checks(smooth=non_negative))
def dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    squared: bool = False,
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft dice loss per mask: ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``, ``p = sigmoid(x)``.

    Args:
        logits: ``[N, ...]`` logits, one mask per row.
        target: ``[N, ...]`` targets in [0, 1]; values < 0 are ignored.
        smooth: ``s`` (1.0, as SAM 2; MONAI uses 1e-5), >= 0.
        squared: Use ``sum(p^2) + sum(t^2)`` in the denominator (V-Net / MONAI ``squared_pred``).
        reduction: ``"mean"``/``"sum"`` over masks, or ``"none"`` for ``[N]``.
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        fp32 scalar, or ``[N]`` for ``"none"``. Empty target: the loss is ``1 - s / (sum(p) + s)``,
        which pushes the prediction towards empty; with ``s = 0`` it is 1 (constant) unless the
        prediction is empty too, and a mask with nothing in numerator or denominator
        (``s = 0``, all probabilities 0 or no counted pixel) counts as a perfect match, loss 0.
    """
    check_pair(logits, target, min_dim=2)
    check_reduction(reduction)
    at_least("smooth", smooth, 0)
    with fp32_compute(logits.device):
        inter, pred_sum, target_sum = _soft_sums(logits, target, valid, squared)
        loss = 1.0 - safe_ratio(2.0 * inter + smooth, pred_sum + target_sum + smooth, empty=1.0)
        return reduce(loss, reduction)


@LOSSES.register("soft_iou", checks=option_checks(smooth=non_negative))
def soft_iou(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Jaccard loss per mask: ``1 - (I + s) / (sum(p) + sum(t) - I + s)``, ``I = sum(p t)``.

    Args:
        logits: ``[N, ...]`` logits, one mask per row.
        target: ``[N, ...]`` targets in [0, 1]; values < 0 are ignored.
        smooth: ``s`` (1.0), >= 0.
        reduction: ``"mean"``/``"sum"`` over masks, or ``"none"`` for ``[N]``.
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        fp32 scalar, or ``[N]`` for ``"none"``. Empty target: ``1 - s / (sum(p) + s)`` (pushes the
        prediction to empty); a zero denominator (``s = 0`` and nothing predicted) gives loss 0.
    """
    check_pair(logits, target, min_dim=2)
    check_reduction(reduction)
    at_least("smooth", smooth, 0)
    with fp32_compute(logits.device):
        inter, pred_sum, target_sum = _soft_sums(logits, target, valid)
        loss = 1.0 - safe_ratio(inter + smooth, pred_sum + target_sum - inter + smooth, empty=1.0)
        return reduce(loss, reduction)


@LOSSES.register("generalized_dice", checks=option_checks(smooth=non_negative))
def generalized_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str = "sigmoid",
    smooth: float = 1e-5,
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised dice loss (Sudre et al. 2017) with MONAI's weighting.

    Per sample: ``1 - (2 sum_c w_c I_c + s) / (sum_c w_c (P_c + T_c) + s)`` with sums over pixels,
    ``w_c = 1 / T_c^2``; the infinite weight of a class absent from the sample's target is
    replaced by the largest finite weight of that sample (MONAI ``GeneralizedDiceLoss``).

    Args:
        logits: ``[N, C, ...]`` logits for C classes (at least one pixel dimension).
        target: ``[N, C, ...]`` one-hot / multi-label targets in [0, 1]; values < 0 are ignored
            (per element for ``"sigmoid"``; for ``"softmax"`` a pixel is ignored in every class
            when any class marks it < 0, because the probabilities couple the classes).
        activation: ``"sigmoid"`` (independent labels) or ``"softmax"`` (over dimension 1).
        smooth: Added to numerator and denominator (1e-5, MONAI's default), >= 0.
        reduction: ``"mean"``/``"sum"`` over samples, or ``"none"`` for ``[N]``.
        valid: Optional bool ``[N, ...]`` / ``[N, 1, ...]`` mask; False pixels are ignored.

    Returns:
        fp32 scalar, or ``[N]`` for ``"none"``. A sample whose classes are all empty has only
        zero weights: its loss is ``1 - s / s = 0`` (0 as well when ``s = 0``).
    """
    check_pair(logits, target, min_dim=3)
    check_reduction(reduction)
    if activation not in ("sigmoid", "softmax"):
        raise ValueError(f"activation must be 'sigmoid' or 'softmax'; got {activation!r}.")
    at_least("smooth", smooth, 0)
    with fp32_compute(logits.device):
        dtype = compute_dtype(logits)
        if activation == "softmax":
            keep = (target >= 0).all(dim=1, keepdim=True).expand(target.shape)
            valid = keep if valid is None else keep & broadcast_valid(valid, target.shape)
        clean, weight = split_ignore(target, valid, dtype)
        x = logits.to(dtype)
        probs = (torch.softmax(x, dim=1) if activation == "softmax" else torch.sigmoid(x)) * weight
        dims = tuple(range(2, x.dim()))
        inter, pred_sum, target_sum = (probs * clean).sum(dims), probs.sum(dims), clean.sum(dims)
        class_weight = _class_weights(target_sum.detach())
        num = 2.0 * (inter * class_weight).sum(1) + smooth
        den = ((pred_sum + target_sum) * class_weight).sum(1) + smooth
        return reduce(1.0 - safe_ratio(num, den, empty=1.0), reduction)


def _class_weights(target_sum: torch.Tensor) -> torch.Tensor:
    """``1 / T_c^2`` per ``[N, C]``; infinite entries take the sample's largest finite weight."""
    weights = 1.0 / target_sum.square()
    finite = torch.isfinite(weights)
    weights = torch.where(finite, weights, 0.0)
    largest = weights.max(dim=1, keepdim=True).values
    return torch.where(finite, weights, largest)


@LOSSES.register("lovasz_hinge", checks=option_checks())
def lovasz_hinge(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    per_image: bool = True,
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lovasz hinge loss (Berman et al. 2018), a convex surrogate of ``1 - IoU``.

    Hinge errors ``e = 1 - x (2y - 1)`` are sorted in descending order and weighted with the
    Lovasz extension gradient of the Jaccard loss: ``loss = sum(relu(e_sorted) * lovasz_grad)``.

    Args:
        logits: ``[N, ...]`` logits.
        target: ``[N, ...]`` binary targets (foreground: ``> 0.5``); values < 0 are ignored.
        per_image: One loss per image (True) or one over all pixels of the batch (False).
        reduction: ``"mean"``/``"sum"`` over images, or ``"none"`` for ``[N]``. With
            ``per_image=False`` the batch value is returned as a 0-dim tensor for any reduction.
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        fp32 scalar (or ``[N]``). An image without counted pixels gives 0. An empty target gives
        ``relu(largest error)``: the most confident false-positive pixel is penalised.
    """
    check_pair(logits, target, min_dim=2 if per_image else 1)
    check_reduction(reduction)
    dtype = compute_dtype(logits)
    with fp32_compute(logits.device):
        clean, weight = split_ignore(target, valid, dtype)
        rows = logits.shape[0] if per_image else 1
        x, fg, counted = (v.reshape(rows, -1) for v in (logits.to(dtype), clean > 0.5, weight > 0))
        errors = 1.0 - x * (2.0 * fg.to(dtype) - 1.0)
        # Ignored pixels sort last with a zero hinge, so they shift no ground-truth count.
        errors = torch.where(counted, errors, float("-inf"))
        errors_sorted, order = errors.sort(dim=1, descending=True)
        grad = lovasz_grad(fg.gather(1, order) & counted.gather(1, order)).to(dtype)
        loss = (torch.relu(errors_sorted) * grad).sum(1)
        return reduce(loss, reduction) if per_image else loss[0]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    Args:
        gt_sorted: ``[B, P]`` bool ground truth in the order of decreasing error.

    Returns:
        ``[B, P]`` fp64 weights: ``J_i - J_{i-1}`` with ``J = 1 - I / U``,
        ``I = gts - cumsum(gt)``, ``U = gts + cumsum(1 - gt)`` (``U >= 1`` everywhere).
    """
    gt = gt_sorted.to(torch.float64)  # exact counts beyond 2**24 pixels
    gts = gt.sum(1, keepdim=True)
    intersection = gts - gt.cumsum(1)
    union = gts + (1.0 - gt).cumsum(1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
