"""SAM 2's object-score loss and SAM 2's whole objective (``training/loss_fns.py``, ``MultiStepMultiMasksAndIous``).

SAM 2's decoder predicts, besides masks and IoUs, one logit per prompt saying whether the object is
present (``Sam2ImageModel`` returns it as ``object_score``; the engine offers it to every loss that
declares an ``object_score`` keyword, as it offers ``iou_pred``). SAM 2 trains it with a BCE against
"the target mask has foreground" (its ``loss_class``: ``sigmoid_focal_loss`` with alpha -1, gamma 0)
and weighs it 1 beside focal 20, dice 1 and an L1 IoU loss 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from samft.losses._common import check_reduction, fp32_compute, option_checks, split_ignore
from samft.losses.sam import _empty_target_check, _iou_loss_check, _normaliser, sam
from samft.registry import LOSSES


def object_present(target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` float 1/0: whether mask n's target has a foreground pixel among its counted pixels."""
    clean, weight = split_ignore(target.float(), valid, torch.float32)
    return ((clean * weight).flatten(1).sum(1) > 0).float()


@LOSSES.register("object_score", terms=("loss",))
def object_score_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    object_score: torch.Tensor,
    valid: torch.Tensor | None = None,
    num_masks: float | torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """BCE of the object-score logits against whether each target has foreground (SAM 2's ``loss_class``).

    Args:
        logits: ``[N, ...]`` mask logits (unused but for their mask count: the loss reads ``object_score``).
        target: ``[N, H, W]`` 0/1 targets; values < 0 ignored.
        object_score: ``[N]`` (or ``[N, 1]``) object-present logits.
        valid: Optional bool mask broadcastable to ``target``.
        num_masks: Normaliser of ``"mean"`` (sum over masks / ``num_masks``, as SAM 2's ``num_objects``); None: N.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        fp32 0-dim (``[N]`` for ``"none"``).
    """
    check_reduction(reduction)
    scores = object_score.reshape(-1)
    if scores.shape[0] != target.shape[0] or logits.shape[0] != target.shape[0]:
        raise ValueError(f"object_score {tuple(object_score.shape)} needs one logit per mask "
                         f"({target.shape[0]} targets).")
    with fp32_compute(scores.device):
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        values = F.binary_cross_entropy_with_logits(scores.float(), object_present(target, valid), reduction="none")
        if reduction == "none":
            return values
        if reduction == "sum":
            return values.sum()
        return values.sum() / _normaliser(num_masks, values.shape[0], values)


def _sam2_terms(options: Mapping[str, Any]) -> tuple[str, ...]:
    return ("focal", "dice", "iou", "object_score", *(options.get("extra_terms") or {}))


@LOSSES.register("sam2", terms=_sam2_terms, checks=option_checks(iou_loss=_iou_loss_check,
                                                                  empty_target=_empty_target_check))
def sam2(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    iou_pred: torch.Tensor,
    object_score: torch.Tensor,
    candidates: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    num_masks: float | torch.Tensor | None = None,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    object_score_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    dice_smooth: float = 1.0,
    iou_loss: str = "l1",
    supervise_all_iou: bool = True,
    empty_target: str = "zero",
    extra_terms: Mapping[str, Any] | None = None,
    dist_map: torch.Tensor | None = None,
    epoch: int | None = None,
    step: int | None = None,
) -> dict[str, torch.Tensor]:
    """SAM 2's objective: :func:`samft.losses.sam.sam` (min-loss output selection, focal + dice, IoU head;
    L1 IoU loss by default, as SAM 2) plus :func:`object_score_loss`.

    Args:
        object_score: ``[N]`` object-present logits from SAM 2's decoder.
        object_score_weight: Weight of the object-score term in ``loss`` (1, SAM 2's ``loss_class``).
        Others: as :func:`samft.losses.sam.sam`. With ``empty_target="zero"`` (SAM 2) a mask without
            foreground gets no mask or IoU loss, only the object-score loss (SAM 2's ``target_obj`` factor).

    Returns:
        ``sam``'s result plus ``object_score``; ``loss`` includes ``object_score_weight * object_score``.
    """
    result = sam(logits, target, iou_pred=iou_pred, candidates=candidates, valid=valid, num_masks=num_masks,
                 focal_weight=focal_weight, dice_weight=dice_weight, iou_weight=iou_weight, focal_alpha=focal_alpha,
                 focal_gamma=focal_gamma, dice_smooth=dice_smooth, iou_loss=iou_loss,
                 supervise_all_iou=supervise_all_iou, empty_target=empty_target, extra_terms=extra_terms,
                 dist_map=dist_map, epoch=epoch, step=step)
    if "object_score" in (extra_terms or {}):
        raise ValueError("extra_terms: 'object_score' is a term the sam2 objective already has; rename the term.")
    result["object_score"] = object_score_loss(logits, target, object_score=object_score, valid=valid,
                                               num_masks=num_masks)
    result["loss"] = result["loss"] + object_score_weight * result["object_score"]
    return result
