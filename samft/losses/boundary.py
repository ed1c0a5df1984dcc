"""Boundary (surface) loss of Kervadec et al. 2019 and its dice pairing with a weight schedule.

The loss integrates the predicted foreground probability against a signed distance map of
the ground truth: probability mass far outside the object costs its distance, mass inside
earns it. Distance maps are computed once per mask on the CPU (the formula:
``signed_distance_map``, from :mod:`samft.signed_distance`; the dataset serves the same maps,
computed fast and cached, through :mod:`samft.data.distance_maps`) and reach the loss through the
batch as ``dist_map``. Distances scale with resolution: compute them on the mask *after* the
geometric augmentations and resizing applied to the batch.

The region/boundary weights of ``region_boundary`` are the ``boundary_transfer`` schedule
(:class:`samft.schedules.boundary.BoundaryTransfer`) counted in epochs.
"""

from __future__ import annotations

import torch

from samft.checks import count
from samft.losses._common import (
    check_pair,
    check_reduction,
    compute_dtype,
    fp32_compute,
    option_checks,
    per_mask,
    split_ignore,
)
from samft.losses.overlap import dice
from samft.registry import LOSSES
from samft.schedules.boundary import BoundaryTransfer
from samft.signed_distance import signed_distance_map, signed_distance_maps

# signed_distance_map(s) live in samft.signed_distance (data uses them too); re-exported here, the path
# the boundary losses' errors name.
__all__ = ["boundary", "region_boundary", "signed_distance_map", "signed_distance_maps"]


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


@LOSSES.register("boundary", checks=option_checks())
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


@LOSSES.register("region_boundary", checks=option_checks())
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
    """Dice (region) + boundary loss with Kervadec's weight transfer, epoch by epoch.

    Formula: ``loss = region_weight(epoch) * dice + boundary_weight(epoch) * boundary`` with
    ``boundary_weight = min(boundary_start + boundary_step * epoch, boundary_max)`` (no cap when
    ``boundary_max`` is None) and ``region_weight = max(region_floor, region_start - region_step * epoch)``:
    the ``boundary_transfer`` schedule (:class:`samft.schedules.boundary.BoundaryTransfer`) at
    ``epoch`` with one step per epoch, each side with its own rate. ``dice`` is
    ``samft.losses.overlap.dice`` (per mask, mean over masks; an empty target gives
    ``1 - s / (sum(p) + s)``, pushing towards an empty prediction) and ``boundary`` the loss
    above. Both ignore ``target < 0`` and ``valid == False``. (To schedule the two weights in the
    trainer's weighting instead, per optimiser step, use ``combined`` with ``dice`` and ``boundary``
    terms and the ``boundary_transfer`` schedule as their ``fixed`` weights.)

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
    epoch = count("epoch", int(epoch))
    region_w = BoundaryTransfer("region", steps_per_epoch=1, rate=region_step, region_start=region_start,
                                region_floor=region_floor)(epoch)
    boundary_w = BoundaryTransfer("boundary", steps_per_epoch=1, rate=boundary_step, boundary_start=boundary_start,
                                  boundary_max=boundary_max)(epoch)
    region = dice(logits, target, smooth=smooth, valid=valid)
    surface = boundary(logits, target, dist_map=dist_map, valid=valid)
    return {
        "loss": region_w * region + boundary_w * surface,
        "dice": region.detach(),
        "boundary": surface.detach(),
        "boundary_weight": torch.tensor(float(boundary_w), device=logits.device),
        "region_weight": torch.tensor(float(region_w), device=logits.device),
    }
