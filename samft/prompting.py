"""Prompting in one place: the prompt labels and every prompt sampler (first point or box, correction
clicks, the evaluation's centre point), used by the data pipeline, the model's forward pass, the
interactive rounds and evaluation alike. It imports nothing else of samft.

Every function works on any device (the engine calls them on GPU batches, the dataset on CPU
items) and takes an optional ``torch.Generator`` for reproducibility; random numbers are drawn on
the generator's device and moved to the masks' device.

Coordinates are ``(x, y)`` pixel indices of the input frame: pixel ``(i, j)`` is addressed as
``(j, i)`` and SAM's prompt encoder adds the 0.5 that moves it to the pixel's centre. Prompts of
one mask are ``points [P, 2]`` with ``labels [P]`` (the labels below). A mask that cannot give a
prompt (empty mask, no error left) gets label -1: no prompt rather than a made-up one.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# The labels of prompt tokens. SAM's prompt encoder reads 1 as a positive click, 0 as a negative
# click and -1 as padding (a token it ignores); 2/3 mark the top-left/bottom-right box corners (SAM 2's
# convention, which lets points and boxes share one tensor).
PAD = -1
NEGATIVE = 0
POSITIVE = 1
BOX_TOP_LEFT = 2
BOX_BOTTOM_RIGHT = 3

PROMPT_MODES = ("point", "box", "point_or_box")


def _check_masks(masks: torch.Tensor, name: str = "masks") -> torch.Tensor:
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"{name} must be a tensor [N, H, W], got {shape}.")
    return masks if masks.dtype == torch.bool else masks > 0


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def _row_counts(masks: torch.Tensor) -> torch.Tensor:
    """Foreground pixels per row, ``[N, H]`` int64. On the CPU (the dataset's hot path) OpenCV's
    row reduction is ~20x faster than torch's or numpy's sum over bools."""
    if masks.device.type != "cpu":
        return masks.sum(2)
    import cv2

    arrays = masks.numpy().view(np.uint8)
    out = np.empty(masks.shape[:2], np.int32)
    for k, mask in enumerate(arrays):
        if mask.size:
            out[k] = cv2.reduce(mask, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0]
    return torch.from_numpy(out).long()


def _any(masks: torch.Tensor, dim: int) -> torch.Tensor:
    """``masks.any(dim)``; through numpy on the CPU, where it is ~30x faster."""
    if masks.device.type != "cpu":
        return masks.any(dim)
    return torch.from_numpy(masks.numpy().any(axis=dim))


def sample_pixels(masks: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel per mask, uniformly among its foreground pixels.

    Two stages, one full pass over the masks: pick the rank ``r`` of the pixel in row-major
    order, find its row from the cumulative row counts, then its column within that row.

    Args:
        masks: ``[N, H, W]`` bool (non-bool: ``> 0`` is foreground).
        generator: Optional random generator.

    Returns:
        ``xy [N, 2]`` float32 pixel indices and ``found [N]`` bool (False for empty masks,
        whose ``xy`` is ``(0, 0)``).
    """
    masks = _check_masks(masks)
    n, h, w = masks.shape
    row_counts = _row_counts(masks)  # [N, H]
    row_cum = row_counts.cumsum(1)
    counts = row_cum[:, -1] if h else torch.zeros(n, dtype=torch.long, device=masks.device)
    found = counts > 0
    rank = (_uniform(n, generator, masks.device) * counts).long().clamp(max=(counts - 1).clamp(min=0)) + 1
    row = torch.searchsorted(row_cum, rank[:, None]).squeeze(1).clamp(max=max(h - 1, 0))
    rank_in_row = rank - (row_cum.gather(1, row[:, None]).squeeze(1) - row_counts.gather(1, row[:, None]).squeeze(1))
    pixels = masks[torch.arange(n, device=masks.device), row].long().cumsum(1)  # [N, W]
    col = torch.searchsorted(pixels, rank_in_row[:, None]).squeeze(1).clamp(max=max(w - 1, 0))
    xy = torch.stack([col, row], dim=1).float()
    return torch.where(found[:, None], xy, 0.0), found


def sample_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive click per mask, uniform over the mask's pixels (SAM's first point prompt).

    Args:
        masks: ``[N, H, W]`` bool.
        generator: Optional random generator.

    Returns:
        ``points [N, 1, 2]`` float32 (x, y) and ``labels [N, 1]`` int64: 1, or -1 for an empty mask.
    """
    xy, found = sample_pixels(masks, generator)
    labels = torch.where(found, POSITIVE, PAD).long()
    return xy[:, None, :], labels[:, None]


def tight_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` as inclusive pixel indices, and ``found [N]``."""
    masks = _check_masks(masks)
    n, h, w = masks.shape
    rows, cols = _any(masks, 2), _any(masks, 1)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    found = rows.any(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(found[:, None], boxes, 0.0), found


def sample_boxes(masks: torch.Tensor, noise_std: float = 0.1, max_noise: float = 20.0,
                 generator: torch.Generator | None = None, *, image_size: torch.Tensor | tuple[int, int] | None = None,
                 distribution: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor]:
    """Box prompts: each mask's tight box with noisy corners (SAM's first box prompt).

    Each coordinate moves independently by ``noise * side`` where ``side`` is the box's width
    (x coordinates) or height (y), in pixels. ``gaussian`` (SAM paper): normal noise with std
    ``min(noise_std * side, max_noise)``; ``uniform`` (SAM 2 code): uniform in
    ``[-b, b]`` with ``b = min(noise_std * side, max_noise)``. Corners are then clipped to the
    image and re-ordered so that the top-left corner stays top-left.

    Args:
        masks: ``[N, H, W]`` bool.
        noise_std: Noise relative to the box side (SAM: 0.1).
        max_noise: Cap in pixels (SAM: 20).
        generator: Optional random generator.
        image_size: ``(h, w)`` of the real image inside a padded frame, or ``[N, 2]`` per mask;
            corners are clipped to ``[0, w - 1] x [0, h - 1]``. Default: the masks' own ``H, W``.
        distribution: ``gaussian`` or ``uniform``.

    Returns:
        ``points [N, 2, 2]`` float32 (top-left, bottom-right corners as (x, y)) and
        ``labels [N, 2]`` int64 ``(2, 3)``, or ``(-1, -1)`` for an empty mask.
    """
    if distribution not in ("gaussian", "uniform"):
        raise ValueError(f"distribution must be 'gaussian' or 'uniform', got {distribution!r}.")
    if noise_std < 0 or max_noise < 0:
        raise ValueError(f"noise_std and max_noise must be >= 0, got {noise_std}, {max_noise}.")
    boxes, found = tight_boxes(masks)
    n, device = boxes.shape[0], boxes.device
    side = torch.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], 1).repeat(1, 2)
    scale = (noise_std * side).clamp(max=max_noise)
    if distribution == "gaussian":
        noise = _normal((n, 4), generator, device)
    else:
        noise = _uniform(n * 4, generator, device).view(n, 4) * 2 - 1
    boxes = boxes + noise * scale
    hw = _image_size(image_size, masks, n)
    limit = (hw.flip(1) - 1).repeat(1, 2).to(boxes)  # (w-1, h-1, w-1, h-1)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    x0, x1 = torch.minimum(boxes[:, 0], boxes[:, 2]), torch.maximum(boxes[:, 0], boxes[:, 2])
    y0, y1 = torch.minimum(boxes[:, 1], boxes[:, 3]), torch.maximum(boxes[:, 1], boxes[:, 3])
    points = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y1], 1)], 1)
    labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=device).expand(n, 2)
    labels = torch.where(found[:, None], labels, PAD).long()
    return torch.where(found[:, None, None], points, 0.0), labels


def _image_size(image_size, masks: torch.Tensor, n: int) -> torch.Tensor:
    if image_size is None:
        return torch.tensor(masks.shape[1:], device=masks.device).expand(n, 2)
    size = torch.as_tensor(image_size, device=masks.device)
    if size.shape == (2,):
        return size.expand(n, 2)
    if size.shape != (n, 2):
        raise ValueError(f"image_size must be (h, w) or [N, 2] with N = {n}, got shape {tuple(size.shape)}.")
    return size


def sample_prompts(masks: torch.Tensor, mode: str = "point_or_box", box_prob: float = 0.5,
                   generator: torch.Generator | None = None, *, image_size=None, noise_std: float = 0.1,
                   max_noise: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """First prompts for N masks: a point, a box, or either (box with probability ``box_prob``).

    Args:
        masks: ``[N, H, W]`` bool.
        mode: ``point``, ``box`` or ``point_or_box``.
        box_prob: Probability of a box in ``point_or_box`` mode (SAM: 0.5).
        generator: Optional random generator.
        image_size, noise_std, max_noise: As in :func:`sample_boxes`.

    Returns:
        ``points [N, P, 2]`` and ``labels [N, P]`` with ``P = 2`` when any mask got a box, else 1;
        point prompts are padded with label -1.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {mode!r}.")
    if not 0.0 <= box_prob <= 1.0:
        raise ValueError(f"box_prob must be in [0, 1], got {box_prob}.")
    masks = _check_masks(masks)
    n = masks.shape[0]
    use_box = {"point": torch.zeros(n, dtype=torch.bool, device=masks.device),
               "box": torch.ones(n, dtype=torch.bool, device=masks.device),
               "point_or_box": _uniform(n, generator, masks.device) < box_prob}[mode]
    points, labels = sample_points(masks, generator)
    if not bool(use_box.any()):
        return points, labels
    box_points, box_labels = sample_boxes(masks, noise_std, max_noise, generator, image_size=image_size)
    points, labels = pad_prompts([(points, labels)], 2)
    points = torch.where(use_box[:, None, None], box_points, points)
    labels = torch.where(use_box[:, None], box_labels, labels)
    return points, labels


def sample_correction_clicks(pred_masks: torch.Tensor, gt_masks: torch.Tensor, valid: torch.Tensor | None = None,
                             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction click per mask, uniform over the error region (SAM's interactive training).

    The error region is ``(pred XOR gt) AND valid``. A pixel is drawn uniformly from it; a false
    negative gives a positive click (label 1), a false positive a negative one (label 0). This
    is the same as first choosing "false negative" or "false positive" with probability
    proportional to their areas, then a pixel uniformly inside the chosen region.

    Args:
        pred_masks: ``[N, H, W]`` bool predictions (float: logits, ``> 0`` is foreground).
        gt_masks: ``[N, H, W]`` bool targets.
        valid: ``[N, H, W]`` or ``[H, W]`` bool, False on padding (no click there), or None.
        generator: Optional random generator.

    Returns:
        ``points [N, 1, 2]`` float32 (x, y) and ``labels [N, 1]`` int64; a mask with no error left
        gets label -1 (no click).
    """
    pred, gt = _check_masks(pred_masks, "pred_masks"), _check_masks(gt_masks, "gt_masks")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_masks {tuple(pred.shape)} and gt_masks {tuple(gt.shape)} must have the same shape.")
    error = pred ^ gt
    if valid is not None:
        if valid.shape not in (gt.shape, gt.shape[1:]):
            raise ValueError(f"valid {tuple(valid.shape)} must be [N, H, W] or [H, W] matching {tuple(gt.shape)}.")
        error = error & valid.bool()
    xy, found = sample_pixels(error, generator)
    x, y = xy[:, 0].long(), xy[:, 1].long()
    is_false_negative = gt[torch.arange(gt.shape[0], device=gt.device), y, x]
    labels = torch.where(found, torch.where(is_false_negative, POSITIVE, NEGATIVE), PAD).long()
    return xy[:, None, :], labels[:, None]


def append_clicks(points: torch.Tensor, labels: torch.Tensor, new_points: torch.Tensor,
                  new_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Add clicks to existing prompts.

    Args:
        points: ``[N, P, 2]``; labels: ``[N, P]``.
        new_points: ``[N, Q, 2]``; new_labels: ``[N, Q]`` (label -1 entries stay padding).

    Returns:
        ``points [N, P + Q, 2]`` and ``labels [N, P + Q]`` (new clicks after the old ones, as SAM
        keeps the order of interaction).
    """
    if points.ndim != 3 or new_points.ndim != 3 or points.shape[0] != new_points.shape[0]:
        raise ValueError(f"points {tuple(points.shape)} and new_points {tuple(new_points.shape)} must be [N, P, 2] "
                         "with the same N.")
    if labels.shape != points.shape[:2] or new_labels.shape != new_points.shape[:2]:
        raise ValueError("labels must be [N, P] matching their points.")
    return (torch.cat([points, new_points.to(points)], 1),
            torch.cat([labels, new_labels.to(labels)], 1))


def pad_prompts(prompts: list[tuple[torch.Tensor, torch.Tensor]], size: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate prompt groups with different numbers of prompts per mask.

    Args:
        prompts: ``(points [N_i, P_i, 2], labels [N_i, P_i])`` pairs.
        size: Pad to this many prompts (default: the largest ``P_i``; at least 1).

    Returns:
        ``points [sum N_i, P, 2]`` (padding 0) and ``labels [sum N_i, P]`` (padding -1).
    """
    p = max([size or 0, 1] + [pts.shape[1] for pts, _ in prompts])
    out_points, out_labels = [], []
    for pts, lab in prompts:
        extra = p - pts.shape[1]
        out_points.append(torch.nn.functional.pad(pts.float(), (0, 0, 0, extra)))
        out_labels.append(torch.nn.functional.pad(lab.long(), (0, extra), value=PAD))
    if not out_points:
        return torch.zeros(0, p, 2), torch.full((0, p), PAD, dtype=torch.long)
    return torch.cat(out_points), torch.cat(out_labels)


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
