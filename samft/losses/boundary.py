"""Boundary (surface) loss of Kervadec et al. 2019 and its dice pairing with a weight schedule.

The loss integrates the predicted foreground probability against a signed distance map of
the ground truth: probability mass far outside the object costs its distance, mass inside
earns it. Distance maps are computed once per mask on the CPU with scipy (``signed_distance_map``)
and reach the loss through the batch as ``dist_map``. Distances scale with resolution: compute
them on the mask *after* the geometric augmentations and resizing applied to the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from samft.losses._common import check_pair, check_reduction, compute_dtype, fp32_compute, per_mask, split_ignore
from samft.losses.overlap import dice
from samft.registry import LOSSES


def _as_numpy(mask: Any) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask)


def _sampling(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(values) != ndim or min(values) <= 0:
        raise ValueError(f"spacing must be a positive number or {ndim} positive numbers, got {spacing!r}.")
    return values


def signed_distance_map(mask: Any, *, spacing: float | Sequence[float] | None = None) -> np.ndarray:
    """Kervadec's signed distance map of one binary mask.

    Formula: with ``m = mask > 0.5`` and ``edt`` the Euclidean distance transform (distance of a
    non-zero element to the nearest zero element), ``edt(~m) * ~m - (edt(m) - s) * m`` with
    ``s = min(spacing)`` (1 for unit pixels): positive outside (distance to the object), <= 0
    inside, 0 on the inner boundary (for isotropic spacing).

    Special cases: an empty mask gives a zero map (no object to be near). A mask without
    background also gives a zero map: scipy's transform of an all-foreground array measures the
    distance to a phantom zero outside the array, which is meaningless, and any other finite
    choice (e.g. the image frame as boundary) would depend on the crop. Such masks carry no
    boundary; the region term (dice) supervises them.

    Args:
        mask: ``[H, W]`` (or any N-d) array or tensor; ``> 0.5`` is foreground, so bool masks
            work and ignore values (< 0) count as background.
        spacing: Pixel size per axis (a number or one per axis); default 1.

    Returns:
        float32 array of ``mask``'s shape.
    """
    m = _as_numpy(mask) > 0.5
    if m.ndim == 0:
        raise ValueError("signed_distance_map: mask must have at least 1 dimension, got a scalar.")
    sampling = _sampling(spacing, m.ndim)
    if not m.any() or m.all():
        return np.zeros(m.shape, dtype=np.float32)
    outside = distance_transform_edt(~m, sampling=sampling)
    inside = distance_transform_edt(m, sampling=sampling) - min(sampling)
    # 0.0 - inside, not -inside: the inner boundary reads 0, not -0
    return np.where(m, 0.0 - inside, outside).astype(np.float32)


def signed_distance_maps(masks: Any, *, spacing: float | Sequence[float] | None = None) -> np.ndarray:
    """``signed_distance_map`` of every mask of a batch.

    Args:
        masks: ``[N, H, W]`` (any ``[N, ...]``) array or tensor.
        spacing: As in ``signed_distance_map``.

    Returns:
        float32 array ``[N, H, W]``; ``torch.from_numpy`` it for the ``dist_map`` batch extra.
    """
    arr = _as_numpy(masks)
    if arr.ndim < 2:
        raise ValueError(f"signed_distance_maps: expected [N, H, W], got shape {arr.shape}.")
    if arr.shape[0] == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.stack([signed_distance_map(m, spacing=spacing) for m in arr])


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, dist_map: torch.Tensor | None, loss: str) -> None:
    check_pair(logits, target, min_dim=2)
    if dist_map is None:
        raise ValueError(
            f"{loss} needs the batch's signed distance maps as keyword dist_map (same shape as logits); "
            "compute them with samft.losses.boundary.signed_distance_maps(target > 0.5)."
        )
    if not torch.is_tensor(dist_map) or tuple(dist_map.shape) != tuple(logits.shape):
        shape = tuple(dist_map.shape) if torch.is_tensor(dist_map) else type(dist_map).__name__
        raise ValueError(f"{loss}: dist_map {shape} must be a tensor of the logits' shape {tuple(logits.shape)}.")


@LOSSES.register("boundary")
def boundary(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    dist_map: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Kervadec surface loss ``mean(sigmoid(x) * dist)`` over the valid pixels of each mask.

    Formula, per mask ``i`` with valid pixels ``V_i``: ``B_i = sum_{V_i} sigmoid(x) d / |V_i|``
    with ``d`` the signed distance map (``signed_distance_map``). The loss can be negative (its
    minimum is reached by predicting exactly the object); it is not meant to be used alone.
    Empty or full masks have a zero map and give 0. sigmoid is taken in fp32, so logits of
    +-1e4 and bf16/fp16 inputs are fine.

    Args:
        logits: ``[N, H, W]`` (any ``[N, ...]``) mask logits.
        target: Same shape; only used for ignore (``< 0``).
        dist_map: Same shape signed distance maps (batch extra, required).
        valid: Optional bool mask broadcastable to ``target`` (False = padding, ignored).
        reduction: ``"mean"`` over masks with at least one valid pixel (default), ``"sum"``,
            or ``"none"`` (``[N]``, 0 for masks without valid pixels).

    Returns:
        Scalar, or ``[N]`` for ``"none"``.
    """
    _check_inputs(logits, target, dist_map, "boundary")
    check_reduction(reduction)
    dtype = compute_dtype(logits)
    with fp32_compute(logits.device):
        _, weight = split_ignore(target, valid, dtype)
        keep = weight > 0
        # zeroed, not just masked: a non-finite distance at an ignored pixel would poison the gradient
        dist = torch.where(keep, dist_map.to(device=logits.device, dtype=dtype), 0.0)
        surface = torch.sigmoid(logits.to(dtype)) * dist
        per = per_mask(surface, keep)
        if reduction == "none":
            return per
        if reduction == "sum":
            return per.sum()
        counted = keep.flatten(1).any(1).sum()
        return per.sum() / counted.clamp_min(1)


def boundary_schedule(
    epoch: int,
    *,
    boundary_start: float = 0.01,
    boundary_step: float = 0.01,
    boundary_max: float | None = None,
    region_start: float = 1.0,
    region_step: float = 0.01,
    region_floor: float = 0.1,
) -> tuple[float, float]:
    """Kervadec's weight schedule: ``(region_weight, boundary_weight)`` at ``epoch`` (0-based).

    ``boundary = boundary_start + boundary_step * epoch`` (capped at ``boundary_max`` if given),
    ``region = max(region_floor, region_start - region_step * epoch)``: the boundary weight rises
    by 0.01 per epoch from 0.01 while the region weight falls from 1 to a floor of 0.1.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}.")
    boundary_weight = boundary_start + boundary_step * epoch
    if boundary_max is not None:
        boundary_weight = min(boundary_weight, boundary_max)
    return max(region_floor, region_start - region_step * epoch), boundary_weight


@LOSSES.register("region_boundary")
def region_boundary(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    dist_map: torch.Tensor | None = None,
    epoch: int | None = None,
    valid: torch.Tensor | None = None,
    smooth: float = 1.0,
    boundary_start: float = 0.01,
    boundary_step: float = 0.01,
    boundary_max: float | None = None,
    region_start: float = 1.0,
    region_step: float = 0.01,
    region_floor: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Dice (region) + boundary loss with Kervadec's epoch schedule (``boundary_schedule``).

    Formula: ``loss = region_weight(epoch) * dice + boundary_weight(epoch) * boundary`` where
    ``dice`` is ``samft.losses.overlap.dice`` (per mask, mean over masks; an empty target gives
    ``1 - s / (sum(p) + s)``, pushing towards an empty prediction) and ``boundary`` the loss
    above. Both ignore ``target < 0`` and ``valid == False``. (To schedule the two weights in the
    trainer's weighting instead, use ``combined`` with ``dice`` and ``boundary`` terms and the
    ``boundary_transfer`` schedule.)

    Args:
        logits: ``[N, H, W]`` mask logits.
        target: Same shape, {0, 1} with ``< 0`` ignored.
        dist_map: Signed distance maps, same shape (batch extra, required).
        epoch: Current epoch, 0-based (batch extra, required).
        valid: Optional validity mask broadcastable to ``target``.
        smooth: Dice smoothing (default 1.0).
        boundary_start, boundary_step, boundary_max, region_start, region_step, region_floor:
            Schedule constants (defaults 0.01, 0.01, None, 1.0, 0.01, 0.1).

    Returns:
        ``{"loss", "dice", "boundary", "boundary_weight", "region_weight"}``, scalar tensors. Only
        ``loss`` carries the gradient: the components are for logging, so that a trainer that
        recombines grad-carrying terms cannot bypass the schedule.
    """
    _check_inputs(logits, target, dist_map, "region_boundary")
    if epoch is None:
        raise ValueError("region_boundary needs the current epoch (0-based) as keyword epoch.")
    region_w, boundary_w = boundary_schedule(
        int(epoch), boundary_start=boundary_start, boundary_step=boundary_step, boundary_max=boundary_max,
        region_start=region_start, region_step=region_step, region_floor=region_floor,
    )
    region = dice(logits, target, smooth=smooth, valid=valid)
    surface = boundary(logits, target, dist_map=dist_map, valid=valid)
    return {
        "loss": region_w * region + boundary_w * surface,
        "dice": region.detach(),
        "boundary": surface.detach(),
        "boundary_weight": torch.tensor(float(boundary_w), device=logits.device),
        "region_weight": torch.tensor(float(region_w), device=logits.device),
    }
