"""Signed distance maps for boundary losses: fast per-mask computation.

The formula is Kervadec's, implemented once in :func:`samft.losses.boundary.signed_distance_map`:
``edt(~m) * ~m - (edt(m) - 1) * m`` (positive outside, <= 0 inside, 0 on the inner boundary; an
empty mask and a mask without background give a zero map). This module makes it fast.

Bounding-box computation: the map is computed on the mask's bounding box grown by a margin
(clipped to the image), and everything outside is filled with the clip distance ``max_dist``:

- inside values are exact for any margin >= 1: the ring just outside the box is background, and
  for an inside pixel it is never farther than a background pixel beyond it;
- outside values are exact inside the crop (the crop holds every mask pixel), and a pixel beyond
  a margin of ``ceil(max_dist) + 1`` is more than ``max_dist`` away, so the filled value equals the
  clipped exact one. With ``max_dist=None`` the crop is the whole image (exact, no clipping).

So ``fast == min(full_frame, max_dist)`` everywhere, to the last bit.
"""

from __future__ import annotations

import math

import numpy as np

from samft.losses.boundary import signed_distance_map


def crop_box(mask: np.ndarray, margin: int | None) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (exclusive ends) of the mask's bounding box grown by ``margin`` and
    clipped to the image; the whole image when ``margin`` is None; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    if margin is None:
        return 0, h, 0, w
    return (max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h),
            max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w))


def signed_distance_crop(mask: np.ndarray, max_dist: float | None = None
                         ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The part of a mask's clipped signed distance map that differs from ``max_dist``.

    Args:
        mask: ``[H, W]`` bool (or 0/1) mask.
        max_dist: Clip for outside distances, in pixels (None: no clip, the crop is the whole image).

    Returns:
        ``(crop, (y0, x0))`` with ``crop`` float32: the map on rows ``y0:y0 + crop.shape[0]`` and
        columns ``x0:x0 + crop.shape[1]``; the map is ``max_dist`` elsewhere. None for an empty
        mask (whose map is zero everywhere).
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {m.shape}.")
    if max_dist is not None and max_dist <= 0:
        raise ValueError(f"max_dist must be > 0 or None, got {max_dist}.")
    box = crop_box(m, None if max_dist is None else math.ceil(max_dist) + 1)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    crop = signed_distance_map(m[y0:y1, x0:x1])
    if max_dist is not None:
        np.minimum(crop, np.float32(max_dist), out=crop)
    return crop, (y0, x0)


def paste_crop(shape: tuple[int, int], crop: tuple[np.ndarray, tuple[int, int]] | None,
               max_dist: float | None) -> np.ndarray:
    """Full ``[H, W]`` float32 map from :func:`signed_distance_crop`'s result."""
    if crop is None:
        return np.zeros(shape, np.float32)
    values, (y0, x0) = crop
    out = np.full(shape, np.float32(max_dist if max_dist is not None else 0.0), np.float32)
    out[y0:y0 + values.shape[0], x0:x0 + values.shape[1]] = values
    return out


def fast_signed_distance_map(mask: np.ndarray, max_dist: float | None = None) -> np.ndarray:
    """Kervadec's signed distance map clipped at ``max_dist`` (outside), via the bounding box.

    Args:
        mask: ``[H, W]`` bool mask.
        max_dist: Clip in pixels for outside distances; None for the exact unclipped map.

    Returns:
        float32 ``[H, W]`` equal to ``min(signed_distance_map(mask), max_dist)``; zeros for an empty
        mask or a mask without background.
    """
    return paste_crop(np.shape(mask), signed_distance_crop(mask, max_dist), max_dist)


def fast_signed_distance_maps(masks: np.ndarray, max_dist: float | None = None) -> np.ndarray:
    """:func:`fast_signed_distance_map` of every mask of ``[K, H, W]``; returns float32 ``[K, H, W]``."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {masks.shape}.")
    out = np.empty(masks.shape, np.float32)
    for k, mask in enumerate(masks):
        out[k] = fast_signed_distance_map(mask, max_dist)
    return out
