"""Kervadec's signed distance map: what the boundary losses integrate against.

The reference formula, written once. :mod:`samft.losses.boundary` defines its losses on these maps
(and re-exports both functions, the path its error messages name); :mod:`samft.data.distance_maps`
computes the same maps fast (bounding box, OpenCV) and caches them, equal to these to the last bit.
Neither package may import the other, so the formula lives here; it imports nothing from samft.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt


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
