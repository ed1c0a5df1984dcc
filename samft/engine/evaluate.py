"""Validation: mIoU from one point and from one box per mask, and IoU-head calibration.

Evaluation prompts are deterministic, as in the SAM paper's single-prompt evaluation: the point is
the mask pixel farthest from the mask boundary (the maximum of its distance transform), the box the
mask's tight bounding box. The prediction is the candidate output with the highest predicted IoU
(SAM's own inference choice), upsampled to the input frame and thresholded at 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from segment_anything.modeling import Sam

from samft.engine.runtime import Runtime
from samft.engine.step import encode_images, predict, to_device
from samft.models import best_output, upscale
from samft.data.prompts import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, POSITIVE, tight_boxes
from samft.registry import METRICS


def center_points(masks: torch.Tensor) -> torch.Tensor:
    """The pixel of each mask farthest from its boundary, ``[N, 1, 2]`` as (x, y).

    Args:
        masks: ``[N, H, W]`` bool; every mask must be non-empty.
    """
    points = []
    for mask in masks.cpu().numpy().astype(bool):
        # Pad so that a mask touching the image border still has a boundary there.
        dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        points.append((float(x), float(y)))
    return torch.tensor(points, dtype=torch.float32, device=masks.device).view(-1, 1, 2)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)  # one mask each: image, gt, pred, prompt


@torch.no_grad()
def evaluate(model: Sam, batches: Iterable[dict[str, Any]], runtime: Runtime, *, max_images: int,
             max_masks: int, multimask: bool = True, keep_examples: int = 0) -> EvalResult:
    """mIoU with one centre point and with one tight box per mask, over up to ``max_images`` images.

    Returns:
        metrics ``miou_point``, ``miou_box``, ``iou_calibration_point`` (mean |predicted - actual IoU|),
        ``num_masks``; and up to ``keep_examples`` single-image examples for overlays.
    """
    was_training = model.training
    model.eval()
    mask_iou = METRICS.get("mask_iou")
    sums = {"point": [], "box": [], "calib": []}
    examples: list[dict[str, Any]] = []
    seen = 0
    for batch in batches:
        if seen >= max_images:
            break
        batch = _first_masks(to_device(batch, runtime.device), max_masks)
        masks = batch["masks"].bool()
        with runtime.autocast():
            embeddings = encode_images(model, batch)
        for kind, points, labels in _eval_prompts(masks):
            prompted = {**batch, "points": points, "point_labels": labels}
            with runtime.autocast():
                pred = predict(model, embeddings, prompted, multimask=multimask, resolution="low_res")
            chosen = best_output(pred.iou_pred, pred.candidates)
            rows = torch.arange(len(chosen), device=chosen.device)
            logits = upscale(pred.low_res[rows, chosen].unsqueeze(1).float(), masks.shape[-1]).squeeze(1)
            valid = batch["valid"][batch["image_index"]]
            binary = (logits > 0) & valid
            iou = mask_iou(binary.float(), masks.float())
            sums[kind].append(iou.cpu())
            if kind == "point":
                sums["calib"].append((pred.iou_pred[rows, chosen].float() - iou).abs().cpu())
                examples += _examples(batch, binary, points, labels, keep_examples - len(examples))
        seen += batch["images"].shape[0]
    model.train(was_training)
    cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in sums.items()}
    metrics = {
        "miou_point": float(cat["point"].mean()) if len(cat["point"]) else float("nan"),
        "miou_box": float(cat["box"].mean()) if len(cat["box"]) else float("nan"),
        "iou_calibration_point": float(cat["calib"].mean()) if len(cat["calib"]) else float("nan"),
        "num_masks": float(len(cat["point"])),
    }
    return EvalResult(metrics, examples)


def _eval_prompts(masks: torch.Tensor):
    n = masks.shape[0]
    yield "point", center_points(masks), torch.full((n, 1), POSITIVE, device=masks.device)
    corners = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=masks.device)
    boxes, _ = tight_boxes(masks)  # masks are non-empty here (see _first_masks)
    yield "box", boxes.view(n, 2, 2), corners.expand(n, 2)


def _first_masks(batch: dict[str, Any], max_masks: int) -> dict[str, Any]:
    """Keep at most ``max_masks`` masks per image (the first ones, for a stable evaluation set)."""
    index = batch["image_index"]
    rank = torch.zeros_like(index)
    for b in torch.unique(index):
        rows = index == b
        rank[rows] = torch.arange(int(rows.sum()), device=index.device)
    keep = (rank < max_masks) & batch["masks"].flatten(1).any(1)
    per_mask = {"masks", "points", "point_labels", "image_index", "dist_maps"}
    return {k: (v[keep] if k in per_mask and isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _examples(batch, binary, points, labels, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` single-mask examples (image, ground truth, prediction, prompt) for overlays."""
    rows = range(min(max(count, 0), binary.shape[0]))
    return [{
        "image": batch["images"][batch["image_index"][i]].cpu(),
        "gt": batch["masks"][i].cpu().bool(),
        "pred": binary[i].cpu(),
        "points": points[i].cpu(),
        "point_labels": labels[i].cpu(),
    } for i in rows]
