"""Mask-quality metrics: stability score, mask IoU and boundary IoU.

Every metric takes ``(logits_or_masks, target)`` with masks in the last two dimensions
(``[..., H, W]``, usually ``[N, H, W]``) and returns one value per mask (``[...]``) in fp32.
A prediction is foreground where it is ``> 0``, which works for logits and for 0/1 or bool
masks alike; a target is foreground where it is ``> 0.5`` (``mask_iou`` ignores pixels ``< 0``).
Metrics carry no gradient.

Every metric declares which way is better where it is defined: per-mask metrics when they
register (``better="higher"``), the validation summary and the training log in the tables below.
:func:`direction` answers for any logged key; run comparison (``tools/compare_runs.py``) uses it.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F

from samft.registry import METRICS


def _check_masks(pred: torch.Tensor, target: torch.Tensor | None, name: str) -> None:
    if not torch.is_tensor(pred) or pred.dim() < 2:
        raise ValueError(f"{name}: predictions must be a tensor [..., H, W]; got {getattr(pred, 'shape', type(pred))}.")
    if target is not None and tuple(target.shape) != tuple(pred.shape):
        raise ValueError(
            f"{name}: target {tuple(target.shape)} must have the predictions' shape {tuple(pred.shape)}."
        )


def _count(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(-2).sum(-1, dtype=torch.int64)


def _ratio_or_one(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` as fp32; 1.0 where ``den == 0`` (both masks empty: perfect agreement)."""
    return torch.where(den > 0, num.float() / den.clamp(min=1).float(), 1.0)


@METRICS.register("stability_score", better="higher")
@torch.no_grad()
def stability_score(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    mask_threshold: float = 0.0,
    offset: float = 1.0,
) -> torch.Tensor:
    """SAM's stability score: IoU of the masks thresholded at ``t + offset`` and ``t - offset``.

    Equals ``segment_anything.utils.amg.calculate_stability_score(logits, t, offset)``:
    ``|x > t + offset| / |x > t - offset|`` (the high-threshold mask lies inside the low one).

    Args:
        logits: ``[..., H, W]`` mask logits.
        target: Unused; accepted so that every metric has the same call signature.
        mask_threshold: ``t`` (0.0, SAM's mask threshold).
        offset: Threshold offset (1.0, SAM's automatic mask generator).

    Returns:
        ``[...]`` fp32 scores in [0, 1]. 0/0 (no pixel above ``t - offset``, SAM gives NaN) is
        defined as 0.0: there is no mask to be stable, so stability filters (AMG keeps >= 0.95)
        drop it and averages stay finite.
    """
    _check_masks(logits, None, "stability_score")
    inter = _count(logits > mask_threshold + offset)
    union = _count(logits > mask_threshold - offset)
    return torch.where(union > 0, inter.float() / union.clamp(min=1).float(), 0.0)


@METRICS.register("mask_iou", better="higher")
@torch.no_grad()
def mask_iou(pred: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Intersection over union of the predicted and target masks.

    Args:
        pred: ``[..., H, W]`` logits or masks; foreground where ``> 0``.
        target: ``[..., H, W]`` 0/1 masks; foreground where ``> 0.5``, ignored where ``< 0``.
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        ``[...]`` fp32 IoU; 1.0 when prediction and target are both empty.
    """
    _check_masks(pred, target, "mask_iou")
    counted = target >= 0 if valid is None else (target >= 0) & valid.bool()
    p, t = (pred > 0) & counted, (target > 0.5) & counted
    return _ratio_or_one(_count(p & t), _count(p | t))


@METRICS.register("boundary_iou", better="higher")
@torch.no_grad()
def boundary_iou(pred: torch.Tensor, target: torch.Tensor, *, dilation_ratio: float = 0.02) -> torch.Tensor:
    """Boundary IoU (Cheng et al. 2021): IoU of the masks' inner boundary bands.

    The band of a mask is ``mask & ~erode(mask, d)`` with ``d = max(1, round(dilation_ratio *
    diag))`` pixels, ``diag = sqrt(H^2 + W^2)``, erosion by a (2d+1)^2 square (``d`` iterations of
    a 3x3 erosion) with the outside of the image treated as background, so mask edges on the
    image border count as boundary (as the reference ``mask_to_boundary``).

    Args:
        pred: ``[..., H, W]`` logits or masks; foreground where ``> 0``.
        target: ``[..., H, W]`` 0/1 masks; foreground where ``> 0.5``.
        dilation_ratio: Band width relative to the image diagonal (0.02, the paper's default).

    Returns:
        ``[...]`` fp32 boundary IoU; 1.0 when both masks are empty.
    """
    _check_masks(pred, target, "boundary_iou")
    if dilation_ratio <= 0:
        raise ValueError(f"dilation_ratio must be > 0; got {dilation_ratio}.")
    height, width = pred.shape[-2:]
    band = max(1, int(round(dilation_ratio * math.hypot(height, width))))
    p, t = _boundary(pred > 0, band), _boundary(target > 0.5, band)
    return _ratio_or_one(_count(p & t), _count(p | t))


def _boundary(mask: torch.Tensor, band: int) -> torch.Tensor:
    """``mask & ~eroded`` with a square erosion of radius ``band``; outside the image is background."""
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    # Erosion = 1 - dilation of the complement; the complement is 1 outside the image.
    outside = F.pad(1.0 - flat, (band, band, band, band), value=1.0)
    # A square kernel is separable: a row pass then a column pass costs O(band), not O(band^2).
    dilated = F.max_pool2d(outside, kernel_size=(1, 2 * band + 1), stride=1)
    dilated = F.max_pool2d(dilated, kernel_size=(2 * band + 1, 1), stride=1)
    eroded = (dilated < 0.5).reshape(mask.shape)
    return mask & ~eroded


HIGHER, LOWER = "higher", "lower"

# The validation summary (samft.engine.evaluate, logged as val/<key>): means of the per-mask
# metrics above under each prompt protocol. tests/test_metric_directions.py fails for a key
# evaluate() returns that is not declared here.
VALIDATION_METRICS: dict[str, str | None] = {
    "miou_point": HIGHER,  # mask_iou from the centre point
    "miou_box": HIGHER,
    "miou_click*": HIGHER,  # after k correction clicks
    "boundary_iou_point": HIGHER,
    "iou_calibration_point": LOWER,  # mean |predicted - actual IoU|: an error
    "stability_point": HIGHER,  # mean stability_score of the chosen masks
    "stable_share_point": HIGHER,  # share of masks SAM's automatic generator would keep (>= 0.95)
    "baseline_miou_*": HIGHER,  # model-free predictors on the same prompts (disk, filled box)
    "baseline_point_radius": None,  # the disk's radius in pixels: a setting
    "num_masks": None,  # a count: no better end
    # "segment everything" (samft.engine.everything), at the best threshold pair of the sweep
    "everything_ap*": HIGHER,
    "everything_ar*": HIGHER,
    "everything_msa": HIGHER,
    "everything_*_thresh": None,  # the pair itself: settings
}

# What the trainer logs per step. Every loss is minimised (the LOSSES contract), whatever its name
# ("loss/dice" is a loss, although Dice alone is a score); settings and diagnostics have no better end.
TRAINING_METRICS: dict[str, str | None] = {
    "loss/*": LOWER,
    "loss_round*/*": LOWER,
    "images_per_s": HIGHER,
    "skipped_files": LOWER,
    "nonfinite_skipped": LOWER,
    "lr/*": None,
    "weight/*": None,
    "grad_norm": None,
    "grad_norm/*": None,
    "stat/*": None,
    "masks": None,
}


def direction(key: str) -> str | None:
    """Which way is better for a logged metric key: "higher", "lower" or None (no better end, or
    not declared anywhere).

    Args:
        key: A key as logged, e.g. ``val/miou_point``, ``loss/dice``, ``val/miou_click5`` or the
            name of a registered metric (``mask_iou``); a ``val/`` prefix is ignored.
    """
    name = key.removeprefix("val/")
    for table in (TRAINING_METRICS, VALIDATION_METRICS):
        for pattern, better in table.items():
            if fnmatch.fnmatchcase(name, pattern):
                return better
    if name in METRICS.names():
        return METRICS.info(name).get("better")
    return None
