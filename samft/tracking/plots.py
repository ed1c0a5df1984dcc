"""PNG figures for tracking: prediction overlays and metric curves (matplotlib, Agg, no pyplot).

Figures are built with ``matplotlib.figure.Figure`` directly so that nothing touches pyplot's
global state: plotting is safe from any thread and never opens a window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from samft.metrics import mask_iou  # one IoU definition (1.0 when both masks are empty)

GT_COLOR = (0.1, 0.9, 0.2)
PRED_COLOR = (1.0, 0.2, 0.8)
# A single mask keeps its usual colour unless that is too close to the object it covers (magenta
# vanished on pink demo shapes); then the farthest of these is used. RGB distance, max sqrt(3).
CONTRAST_PALETTE = ((1.0, 0.2, 0.8), (0.1, 0.9, 0.2), (0.0, 0.9, 1.0), (1.0, 1.0, 0.0), (0.1, 0.1, 1.0),
                    (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
MIN_CONTRAST = 0.6
MASK_ALPHA = 0.45
PANEL_INCHES = 3.0


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device/dtype, bf16 included) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def images_hwc(images: Any) -> np.ndarray:
    """Images as float RGB in [0, 1], shape (B, H, W, 3).

    Args:
        images: (B, 3|1, H, W), (B, H, W, 3|1) or (B, H, W). uint8 is divided by 255; floats
            already in [0, 1] are kept; other floats (normalised pixels, 0-255 floats) are
            min-max scaled per image so that they stay visible.

    Raises:
        ValueError: For any other shape.
    """
    arr = to_numpy(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    elif arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must have shape (B, 3, H, W), (B, H, W, 3) or (B, H, W); got {arr.shape}."
        )
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        if lo >= 0.0 and hi <= 1.0:
            out[i] = img
        else:
            out[i] = (img - lo) / max(hi - lo, 1e-12)
    return np.nan_to_num(out)


def binary_masks(masks: Any, name: str, batch: int, size: tuple[int, int]) -> np.ndarray:
    """Masks as bool (B, K, H, W) at the image ``size``.

    Args:
        masks: (B, H', W') (one mask per image) or (B, K, H', W') (K masks per image, e.g. the
            K prompts of one image). bool/integer masks are used as ``> 0``; float masks are
            taken as logits and thresholded at 0 (SAM's mask threshold). A different resolution
            (e.g. SAM's 256x256 low-res logits) is resized by nearest neighbour.
        name: Argument name for error messages.
        batch: Expected B.
        size: Target (H, W).
    """
    arr = to_numpy(masks)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] != batch:
        raise ValueError(
            f"{name} must have shape ({batch}, H, W) or ({batch}, K, H, W) to match the {batch} "
            f"images; got {arr.shape}. Pass one selected mask per prompt (e.g. the best of "
            f"SAM's 3 outputs), not the candidates."
        )
    binary = arr > 0
    if binary.shape[2:] != tuple(size):
        rows = (np.arange(size[0]) * binary.shape[2] // size[0]).clip(0, binary.shape[2] - 1)
        cols = (np.arange(size[1]) * binary.shape[3] // size[1]).clip(0, binary.shape[3] - 1)
        binary = binary[:, :, rows][:, :, :, cols]
    return binary



def visible_color(image: np.ndarray, mask: np.ndarray, preferred: tuple[float, float, float]) -> np.ndarray:
    """``preferred`` unless it is within ``MIN_CONTRAST`` of the mean colour under ``mask``; then the
    colour of ``CONTRAST_PALETTE`` farthest from it.

    Args:
        image: (H, W, 3) RGB in [0, 1].
        mask: (H, W) bool.
    """
    colour = np.asarray(preferred, dtype=np.float32)
    if not mask.any():
        return colour
    under = image[mask].mean(axis=0)
    if np.linalg.norm(colour - under) >= MIN_CONTRAST:
        return colour
    return np.asarray(max(CONTRAST_PALETTE, key=lambda c: np.linalg.norm(np.asarray(c) - under)), dtype=np.float32)


def _mask_colors(count: int, single: tuple[float, float, float], image: np.ndarray | None = None,
                 masks: np.ndarray | None = None) -> list[Any]:
    """One colour per mask: ``single`` (kept visible on its object) for one mask, else tab10 by index
    (mask k has the same colour in every panel)."""
    if count == 1:
        if image is None or masks is None:
            return [np.asarray(single, dtype=np.float32)]
        return [visible_color(image, masks[0], single)]
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [np.asarray(palette(i % 10)[:3], dtype=np.float32) for i in range(count)]


def _to_uint8(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> torchvision's (3, H, W) uint8."""
    return torch.from_numpy(np.round(image * 255).astype(np.uint8)).permute(2, 0, 1)


def _from_uint8(pixels: torch.Tensor) -> np.ndarray:
    return pixels.permute(1, 2, 0).numpy().astype(np.float32) / 255.0


def _rgb(color: Any) -> tuple[int, int, int]:
    return tuple(int(round(255 * float(c))) for c in color[:3])


def tint(image: np.ndarray, masks: np.ndarray, colors: list[Any]) -> np.ndarray:
    """``image`` (H, W, 3) in [0, 1] with each of the K masks (K, H, W) tinted in its colour,
    drawn by torchvision's ``draw_segmentation_masks`` (alpha ``MASK_ALPHA``)."""
    from torchvision.utils import draw_segmentation_masks

    drawn = draw_segmentation_masks(_to_uint8(image), torch.from_numpy(np.ascontiguousarray(masks)),
                                    alpha=MASK_ALPHA, colors=[_rgb(c) for c in colors])
    return _from_uint8(drawn)


def prompt_panel(image: np.ndarray, points: np.ndarray | None, labels: np.ndarray | None,
                 boxes: np.ndarray | None, count: int) -> np.ndarray:
    """``image`` (H, W, 3) in [0, 1] with its prompts drawn by torchvision's ``draw_keypoints`` and
    ``draw_bounding_boxes``: positive points in the colour of their mask, negative ones red, box
    prompts (corner labels 2/3, or ``boxes``) as rectangles; padding points (-1) are not drawn.

    Args:
        points: (K, N, 2) xy pixels for the K masks, or None; labels: (K, N) SAM labels.
        boxes: (M, 4) xyxy pixel boxes, or None.
    """
    from torchvision.utils import draw_bounding_boxes, draw_keypoints

    pixels = _to_uint8(image)
    radius = max(2, round(min(image.shape[:2]) / 64))  # visible on a 64 px crop and on a 1024 px image
    colors = _mask_colors(count, (0.2, 1.0, 0.2))
    if points is not None:
        for k in range(points.shape[0]):
            p, lab = torch.from_numpy(points[k]), torch.from_numpy(labels[k])
            for keep, color in ((lab == 1, _rgb(colors[k % len(colors)])), (lab == 0, (255, 0, 0))):
                if keep.any():
                    pixels = draw_keypoints(pixels, p[keep][None], colors=color, radius=radius)
            corners = torch.cat([p[lab == 2], p[lab == 3]], dim=1)  # (boxes, 4) xyxy
            if len(corners):
                pixels = draw_bounding_boxes(pixels, corners, colors=_rgb(colors[k % len(colors)]), width=2)
    if boxes is not None and len(boxes):
        pixels = draw_bounding_boxes(pixels, torch.from_numpy(boxes), colors="yellow", width=2)
    return _from_uint8(pixels)


def overlay_figure(
    images: Any,
    gt_masks: Any,
    pred_masks: Any,
    points: Any | None = None,
    point_labels: Any | None = None,
    boxes: Any | None = None,
    max_rows: int = 4,
    title: str = "",
) -> Figure:
    """One row per image: image | ground truth | prediction (mean IoU) | prompts.

    With K masks per image, mask k has the same color in the ground-truth and prediction
    panels and its prompt points are drawn in that color (one mask: green vs magenta).

    Args:
        images: (B, 3, H, W) / (B, H, W, 3) / (B, H, W), see :func:`images_hwc`.
        gt_masks: (B, H, W) or (B, K, H, W); bool, integer or logits.
        pred_masks: Same shape as ``gt_masks``; float values are logits (thresholded at 0).
        points: xy pixel coordinates in the frame of ``images``: (B, N, 2) for one mask per
            image, (B, K, 2) or (B, K, N, 2) for K masks; None for no points.
        point_labels: ``points.shape[:-1]``; SAM's labels: 1 positive, 0 negative, 2/3 box
            top-left/bottom-right corner, -1 padding (not drawn). None: all positive.
        boxes: (B, 4) or (B, K, 4) xyxy pixel boxes, or None.
        max_rows: Images drawn (the first ``max_rows``).
        title: Figure title.

    Returns:
        The figure (render with :func:`save_figure`).
    """
    imgs = images_hwc(images)
    batch, height, width = imgs.shape[:3]
    gts = binary_masks(gt_masks, "gt_masks", batch, (height, width))
    preds = binary_masks(pred_masks, "pred_masks", batch, (height, width))
    if preds.shape[1] != gts.shape[1]:
        raise ValueError(f"pred_masks has {preds.shape[1]} masks per image and gt_masks "
                         f"{gts.shape[1]}; they must match one to one.")
    count = gts.shape[1]
    pts, lbls = _prompt_points(points, point_labels, batch, count)
    bxs = None if boxes is None else to_numpy(boxes).astype(np.float32).reshape(batch, -1, 4)
    rows = max(1, min(max_rows, batch))
    fig = Figure(figsize=(4 * PANEL_INCHES, rows * PANEL_INCHES), dpi=80)
    axes = fig.subplots(rows, 4, squeeze=False)
    for r in range(rows):
        iou = float(mask_iou(torch.from_numpy(preds[r]).float(), torch.from_numpy(gts[r]).float()).mean())
        iou_text = f"IoU {iou:.3f}" if count == 1 else f"mIoU {iou:.3f}, {count} masks"
        gt_colors = _mask_colors(count, GT_COLOR, imgs[r], gts[r])
        pred_colors = _mask_colors(count, PRED_COLOR, imgs[r], preds[r])
        panels = [
            (imgs[r], "image"),
            (tint(imgs[r], gts[r], gt_colors), "ground truth"),
            (tint(imgs[r], preds[r], pred_colors), f"prediction ({iou_text})"),
            (prompt_panel(imgs[r], None if pts is None else pts[r], None if lbls is None else lbls[r],
                          None if bxs is None else bxs[r], count), "prompt"),
        ]
        for ax, (panel, label) in zip(axes[r], panels):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(label, fontsize=9)
            ax.set_axis_off()
        # Outlines keep small or low-contrast masks visible; the prompt panel shows the
        # ground truth's outline so that each prompt can be matched to its object.
        _outline(axes[r][1], gts[r], gt_colors)
        _outline(axes[r][2], preds[r], pred_colors)
        _outline(axes[r][3], gts[r], ["white"] * count, style="--")
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9 if rows == 1 else 0.94, wspace=0.05,
                        hspace=0.15)  # fixed margins: tight_layout measured every panel's text (slow)
    return fig


def _outline(ax: Any, masks: np.ndarray, colors: list[Any], style: str = "-") -> None:
    for mask, color in zip(masks, colors):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color],
                       linewidths=1.2, linestyles=style)


def _prompt_points(
    points: Any | None, labels: Any | None, batch: int, count: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Points as (B, K, N, 2) and labels as (B, K, N)."""
    if points is None:
        return None, None
    pts = to_numpy(points).astype(np.float32)
    if pts.ndim == 3 and count > 1 and pts.shape[1] == count:
        pts = pts[:, :, None]  # (B, K, 2): one point per mask
    elif pts.ndim == 3:
        pts = pts[:, None]  # (B, N, 2): all for the single mask
    if pts.ndim != 4 or pts.shape[0] != batch or pts.shape[-1] != 2:
        raise ValueError(f"points must be (B, N, 2), (B, K, 2) or (B, K, N, 2) xy coordinates "
                         f"with B={batch}, K={count}; got {to_numpy(points).shape}.")
    if labels is None:
        return pts, np.ones(pts.shape[:3], dtype=np.int64)
    lbls = to_numpy(labels)
    if lbls.size != int(np.prod(pts.shape[:3])):
        raise ValueError(f"point_labels must have one label per point, shape {pts.shape[:3]}; "
                         f"got {lbls.shape}.")
    return pts, lbls.reshape(pts.shape[:3])


Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def curves_figure(title: str, series: Series, ylabel: str = "") -> Figure:
    """Line plot of one metric; several series (runs) overlaid.

    Args:
        title: Figure title (the metric name).
        series: label -> (steps, values). Non-finite values are skipped by matplotlib.
        ylabel: Y-axis label.
    """
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    for label, (steps, values) in series.items():
        marker = "o" if len(steps) < 30 else None
        ax.plot(list(steps), list(values), label=label, marker=marker, markersize=3, linewidth=1.4)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or title)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    # Fixed margins, not tight_layout: a run renders one figure per metric, and measuring the
    # text of each took most of the time of the end of a short run.
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.9)
    return fig


def grid_figure(history: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> Figure:
    """All metrics of one run, one small panel each (an at-a-glance summary)."""
    keys = sorted(history)
    cols = min(4, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4 * cols, 2.8 * rows), dpi=80)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        steps, values = history[key]
        ax.plot(list(steps), list(values), linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.04, top=0.96, wspace=0.3, hspace=0.45)  # see curves_figure
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to a PNG at ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
    return path


def metric_file_name(key: str) -> str:
    """A file name for a metric key: ``loss/dice`` -> ``loss__dice.png``."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key.replace("/", "__"))
    return f"{safe}.png"
