"""Validation: mIoU from one point and from one box per mask, and IoU-head calibration.

Evaluation prompts are deterministic, as in the SAM paper's single-prompt evaluation: the point is
the mask pixel farthest from the mask boundary (the maximum of its distance transform), the box the
mask's tight bounding box. The prediction is the candidate output with the highest predicted IoU
(SAM's own inference choice), upsampled to the input frame and thresholded at 0.

Every evaluation also scores two model-free predictors on the same prompts, so a report shows at
once whether the model beats them: the filled prompt box (``baseline_miou_box``) and a disk
around the centre point (``baseline_miou_point``) whose radius comes from the evaluated masks'
median area, ``round(sqrt(median / pi))`` pixels (``baseline_point_radius``). The disk needs the
median of all masks, known only at the end, so each mask keeps its overlap with every radius.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from samft.data import Batch
from samft.engine import distributed as dist
from samft.engine.interactive import Rounds, run_rounds
from samft.engine.runtime import Runtime
from samft.engine.step import encode_images, to_device
from samft.models import best_output, upscale
from samft.prompting import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, POSITIVE, center_points, tight_boxes
from samft.registry import METRICS


def filled_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, size, size]`` bool: each box ``(x0, y0, x1, y1)`` (inclusive pixel indices) filled."""
    grid = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
    cols = (grid >= boxes[:, 0:1]) & (grid <= boxes[:, 2:3])
    rows = (grid >= boxes[:, 1:2]) & (grid <= boxes[:, 3:4])
    return rows[:, :, None] & cols[:, None, :]


class DiskBaseline:
    """IoU of a disk around each mask's click, with one radius for all masks chosen at the end.

    For every mask it keeps, per whole-pixel radius r, how many mask pixels and how many valid
    pixels lie within distance r of the click (a pixel is in the disk of radius r when its
    centre's distance d to the click's pixel centre is <= r, i.e. ``ceil(d) <= r``), so the IoU
    at the radius of the median area is exact whatever order the batches come in.
    """

    def __init__(self) -> None:
        self.inside: list[torch.Tensor] = []  # [N, R] cumulative mask pixels within radius r
        self.disk: list[torch.Tensor] = []  # [N, R] cumulative valid pixels within radius r
        self.area: list[torch.Tensor] = []  # [N] mask pixels

    def add(self, masks: torch.Tensor, points: torch.Tensor, valid: torch.Tensor) -> None:
        """Record ``masks [N, S, S]`` bool with their clicks ``points [N, 1, 2]`` (x, y) and ``valid [N, S, S]``."""
        n, h, w = masks.shape
        bins = math.ceil(math.hypot(h, w)) + 1
        ys = torch.arange(h, device=masks.device, dtype=torch.float32).view(1, h, 1)
        xs = torch.arange(w, device=masks.device, dtype=torch.float32).view(1, 1, w)
        dist2 = (xs - points[:, :, 0, None]) ** 2 + (ys - points[:, :, 1, None]) ** 2
        ring = torch.sqrt(dist2).ceil().long().clamp(max=bins - 1)  # [N, S, S] smallest r whose disk holds the pixel
        ring += torch.arange(n, device=masks.device).view(n, 1, 1) * bins
        for store, pixels in ((self.inside, masks & valid), (self.disk, valid)):
            counts = torch.bincount(ring[pixels], minlength=n * bins).view(n, bins)
            store.append(counts.cumsum(1).cpu())
        self.area.append((masks & valid).flatten(1).sum(1).cpu())

    def result(self) -> dict[str, float]:
        """``baseline_miou_point`` and ``baseline_point_radius`` over every rank's masks (the same on
        every rank when several evaluate; empty when nothing was added)."""
        ranks = dist.all_gather((self.inside, self.disk, self.area))
        inside_all, disk_all, areas = ([c for part in ranks for c in part[i]] for i in range(3))
        if not areas:
            return {}
        area = torch.cat(areas).double()
        radius = max(1, round(math.sqrt(float(np.median(area.numpy())) / math.pi)))
        inside = torch.cat([c[:, min(radius, c.shape[1] - 1)] for c in inside_all]).double()
        disk = torch.cat([c[:, min(radius, c.shape[1] - 1)] for c in disk_all]).double()
        iou = inside / (disk + area - inside).clamp(min=1)
        return {"baseline_miou_point": float(iou.mean()), "baseline_point_radius": float(radius)}


SUMMED_METRICS = frozenset({"num_masks"})  # counts add up over datasets; scores are averaged


def mean_metrics(per_dataset: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each score's mean over the datasets that report it (each dataset weighs the same, whatever its size),
    counts summed; one dataset: its metrics as they are."""
    if len(per_dataset) == 1:
        return dict(next(iter(per_dataset.values())))
    keys = {k for m in per_dataset.values() for k in m}
    out = {}
    for k in sorted(keys):
        values = [m[k] for m in per_dataset.values() if k in m]
        out[k] = sum(values) if k in SUMMED_METRICS else sum(values) / len(values)
    return out


@dataclass
class EvalResult:
    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)  # one mask each: image, gt, pred, prompt


@torch.no_grad()
def evaluate(model: Sam, batches: Iterable[Batch], runtime: Runtime, *, max_images: int,
             max_masks: int, multimask: bool = True, clicks: int = 0, seed: int = 0,
             keep_examples: int = 0) -> EvalResult:
    """Single-prompt and interactive accuracy over up to ``max_images`` images.

    Args:
        clicks: Also report mIoU after this many correction clicks that follow the centre point
            (clicks from the error region, the previous best mask fed back, as in training).
        seed: Seed of the correction clicks, so that evaluations are comparable.

    Returns:
        metrics: ``miou_point``, ``miou_box``, ``miou_click<k>`` (when ``clicks``),
        ``baseline_miou_point``, ``baseline_miou_box`` and ``baseline_point_radius`` (the
        model-free predictors of the module docstring),
        ``boundary_iou_point``, ``iou_calibration_point`` (mean |predicted - actual IoU|),
        ``stability_point`` (mean stability score of the chosen masks) and
        ``stable_share_point`` (share >= 0.95, SAM's automatic-mask filter), ``num_masks``;
        examples: up to ``keep_examples`` single-mask examples for overlays.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(runtime.device).manual_seed(seed)
    values: dict[str, list[torch.Tensor]] = {}
    disk = DiskBaseline()
    examples: list[dict[str, Any]] = []
    seen = 0
    for batch in batches:
        if seen >= max_images:
            break
        batch = _first_masks(to_device(batch, runtime.device), max_masks)
        with runtime.autocast():
            embeddings = encode_images(model, batch.images, batch.valid)
        scores = _score_batch(model, embeddings, batch, runtime, multimask, clicks, generator)
        binary = scores.pop("_binary")
        disk.add(batch.masks.bool(), scores.pop("_points"), batch.valid[batch.image_index])
        for key, value in scores.items():
            values.setdefault(key, []).append(value.float().cpu())
        examples += _examples(batch, binary, keep_examples - len(examples))
        seen += batch.num_images
    model.train(was_training)
    metrics = mean_over_ranks(values, runtime.device)
    metrics.update(disk.result())
    return EvalResult(metrics, examples)


def mean_over_ranks(values: dict[str, list[torch.Tensor]], device: torch.device) -> dict[str, float]:
    """Per-key means of per-mask values, over every rank's share when several ranks evaluate
    (one all-reduce of sums and counts; the same metrics on every rank), and ``num_masks``."""
    keys = list(dict.fromkeys(k for rank_keys in dist.all_gather(list(values)) for k in rank_keys))
    parts = [torch.cat(values[k]) if values.get(k) else torch.zeros(0) for k in keys]
    sums = torch.tensor([[float(p.double().sum()), p.numel()] for p in parts], dtype=torch.float64,
                        device=device).reshape(-1, 2)
    totals = dist.device_sum_(sums).tolist()
    metrics = {k: s / n if n else float("nan") for k, (s, n) in zip(keys, totals)}
    metrics["num_masks"] = float(dict(zip(keys, totals)).get("miou_point", (0.0, 0.0))[1])
    return metrics


def _score_batch(model, embeddings, batch, runtime, multimask, clicks, generator) -> dict[str, torch.Tensor]:
    """Per-mask scores of one batch under every evaluation protocol."""
    masks = batch.masks.bool()
    n = masks.shape[0]
    valid = batch.valid[batch.image_index]
    point = batch.replace(points=center_points(masks), point_labels=torch.full((n, 1), POSITIVE, device=masks.device))
    boxes, _ = tight_boxes(masks)  # masks are non-empty here (see _first_masks)
    corners = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=masks.device)
    box = batch.replace(points=boxes.view(n, 2, 2), point_labels=corners.expand(n, 2))
    with runtime.autocast():
        rounds = run_rounds(model, embeddings, point, Rounds(correction_clicks=clicks), multimask=multimask,
                            resolution="low_res", generator=generator)
        box_pred = run_rounds(model, embeddings, box, Rounds(), multimask=multimask, resolution="low_res")[0]
    mask_iou = METRICS.get("mask_iou")
    logits, iou_pred = _chosen(rounds[0], masks.shape[-1])
    binary = (logits > 0) & valid
    iou = mask_iou(binary.float(), masks.float())
    stability = METRICS.get("stability_score")(logits)
    box_binary = (_chosen(box_pred, masks.shape[-1])[0] > 0) & valid
    out = {
        "miou_point": iou,
        "miou_box": mask_iou(box_binary.float(), masks.float()),
        "baseline_miou_box": mask_iou((filled_boxes(boxes, masks.shape[-1]) & valid).float(), masks.float()),
        "boundary_iou_point": METRICS.get("boundary_iou")(binary.float(), masks.float()),
        "iou_calibration_point": (iou_pred - iou).abs(),
        "stability_point": stability,
        "stable_share_point": (stability >= 0.95).float(),
        "_binary": binary,
        "_points": point.points,
    }
    if clicks:
        final = (_chosen(rounds[-1], masks.shape[-1])[0] > 0) & valid
        out[f"miou_click{clicks}"] = mask_iou(final.float(), masks.float())
    return out


def _chosen(pred, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-frame logits ``[N, S, S]`` and predicted IoU ``[N]`` of SAM's choice among the candidates."""
    chosen = best_output(pred.iou_pred, pred.candidates)
    rows = torch.arange(len(chosen), device=chosen.device)
    logits = upscale(pred.low_res[rows, chosen].unsqueeze(1).float(), size).squeeze(1)
    return logits, pred.iou_pred[rows, chosen].float()


def _first_masks(batch: Batch, max_masks: int) -> Batch:
    """Keep at most ``max_masks`` masks per image (the first ones, for a stable evaluation set)."""
    index = batch.image_index
    rank = torch.zeros_like(index)
    for b in torch.unique(index):
        rows = index == b
        rank[rows] = torch.arange(int(rows.sum()), device=index.device)
    keep = (rank < max_masks) & batch.masks.flatten(1).any(1)
    return batch.select_masks(keep)


def _examples(batch, binary, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` single-mask examples (image, ground truth, centre-point prediction) for overlays,
    one per image (its first mask): each overlay row shows another image."""
    index = batch.image_index.tolist()
    rows = [index.index(image) for image in dict.fromkeys(index)][: max(count, 0)]
    points = center_points(batch.masks[rows].bool()) if rows else None
    labels = torch.full((len(rows), 1), POSITIVE)
    return [{
        "image": batch.images[batch.image_index[i]].cpu(),
        "gt": batch.masks[i].cpu().bool(),
        "pred": binary[i].cpu(),
        "points": points[j].cpu(),
        "point_labels": labels[j],
    } for j, i in enumerate(rows)]
