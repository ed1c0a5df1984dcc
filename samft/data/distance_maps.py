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

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from samft.losses.boundary import signed_distance_map

log = logging.getLogger("samft.data")


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


# -- maps that follow the resize -------------------------------------------------------------------
def rescale_values(values: np.ndarray, scale: float) -> np.ndarray:
    """Distance values of a map resampled by ``scale``, in the new frame's pixels.

    Pixel-centre distances sit half a pixel off the continuous boundary on each side
    (``edt = d + 0.5`` outside, ``edt(m) - 1 = d - 0.5`` inside, ``d`` the distance to the
    boundary), and ``d`` scales exactly: both sides give ``scale * (v - 0.5) + 0.5``.
    """
    return np.float32(scale) * (values - np.float32(0.5)) + np.float32(0.5)


def resample_crop(crop: np.ndarray, origin: tuple[int, int], clip_px: float, scale: float,
                  out_hw: tuple[int, int]) -> np.ndarray:
    """Resize a map stored as a crop (original pixels, ``clip_px`` outside it) to the resized frame.

    Only the output window covering the crop is interpolated (bilinear, pixel centres aligned as
    in ``cv2.resize``); the rest is the clip value.

    Returns:
        float32 ``[h, w]`` map in original-pixel units (apply :func:`rescale_values` after).
    """
    import cv2

    h, w = out_hw
    y0, x0 = origin
    ch, cw = crop.shape
    out = np.full(out_hw, np.float32(clip_px), np.float32)
    oy0 = max(int(np.floor((y0 - 0.5) * scale)), 0)
    ox0 = max(int(np.floor((x0 - 0.5) * scale)), 0)
    oy1 = min(int(np.ceil((y0 + ch + 0.5) * scale)) + 1, h)
    ox1 = min(int(np.ceil((x0 + cw + 0.5) * scale)) + 1, w)
    if oy1 <= oy0 or ox1 <= ox0:
        return out
    inv = 1.0 / scale
    # output pixel (u, v) of the window samples crop position ((ox0 + u + 0.5) / scale - 0.5 - x0, ...)
    matrix = np.array([[inv, 0.0, (ox0 + 0.5) * inv - 0.5 - x0], [0.0, inv, (oy0 + 0.5) * inv - 0.5 - y0]])
    out[oy0:oy1, ox0:ox1] = cv2.warpAffine(crop.astype(np.float32, copy=False), matrix, (ox1 - ox0, oy1 - oy0),
                                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                           borderMode=cv2.BORDER_REPLICATE)
    return out


def finish_map(values: np.ndarray, mask: np.ndarray, clip: float | None) -> np.ndarray:
    """Make a resampled map consistent with the resampled mask, then clip it.

    Inside pixels are made <= 0 and outside pixels >= 1 (what the formula gives on that mask), a
    mask that became empty or full gets the zero map, and outside values are clipped at ``clip``.
    """
    m = mask.astype(bool, copy=False)
    if not m.any() or m.all():
        return np.zeros(m.shape, np.float32)
    out = np.where(m, np.minimum(values, 0.0), np.maximum(values, 1.0)).astype(np.float32)
    if clip is not None:
        np.minimum(out, np.float32(clip), out=out)
    return out


# -- the cache -------------------------------------------------------------------------------------
CACHE_VERSION = 1
CLIP_SLACK = 2.0  # stored clip = clip * long side + 2 px, so rescaled maps are exact up to the output clip


class DistanceMapCache:
    """Precomputed maps, one ``.npz`` per annotation json, keyed by content hash and settings.

    A file is ``<folder>/<h[:2]>/<h>-<settings>.npz`` with ``h`` the SHA-1 of the json's bytes and
    ``settings`` a hash of (format version, ``clip``, storage dtype): an edited json or another
    setting maps to another file, so stale maps are never read. Per annotation position ``k`` it
    holds ``m<k>`` (the float16 crop from :func:`signed_distance_crop`, original-image pixels) and
    ``boxes[k] = (y0, x0, kind)`` with kind 0 = crop, 1 = zero map (empty or full mask), 2 = not
    stored (bad RLE). ``clip_px`` is the clip used: ``clip * max(H, W) + 2`` pixels.

    Args:
        folder: Cache folder (created on first write).
        clip: Clip as a share of the longest image side (None: exact, unclipped, whole-image maps).
    """

    def __init__(self, folder: str | Path, clip: float | None = 0.05) -> None:
        self.folder = Path(folder)
        self.clip = clip
        settings = json.dumps({"version": CACHE_VERSION, "clip": clip, "dtype": "float16"}, sort_keys=True)
        self.tag = hashlib.sha1(settings.encode()).hexdigest()[:12]
        self._warned = False

    def path(self, json_bytes: bytes) -> Path:
        digest = hashlib.sha1(json_bytes).hexdigest()
        return self.folder / digest[:2] / f"{digest}-{self.tag}.npz"

    def compute(self, json_bytes: bytes) -> dict[str, np.ndarray]:
        """The arrays stored for one annotation json (every annotation, whatever the filters)."""
        from samft.data.rle import checked_rle, decode_rle

        data = json.loads(json_bytes)
        height, width = int(data["image"]["height"]), int(data["image"]["width"])
        clip_px = None if self.clip is None else self.clip * max(height, width) + CLIP_SLACK
        anns = data["annotations"]
        boxes = np.zeros((len(anns), 3), np.int32)
        arrays: dict[str, np.ndarray] = {}
        for k, ann in enumerate(anns):
            try:
                rle = checked_rle(ann.get("segmentation"), height, width)
            except (ValueError, TypeError, AttributeError):
                boxes[k, 2] = 2
                continue
            # pycocotools decodes in Fortran order: work on the C-contiguous transpose (the map of
            # a transposed mask is the transposed map) and transpose the small crop back
            mask_t = decode_rle(rle).T
            crop = signed_distance_crop(mask_t, clip_px)
            if crop is None or mask_t.all():
                boxes[k, 2] = 1
                continue
            arrays[f"m{k}"] = np.ascontiguousarray(crop[0].T, dtype=np.float16)
            boxes[k, :2] = crop[1][::-1]
        arrays["boxes"] = boxes
        arrays["clip_px"] = np.float64(np.inf if clip_px is None else clip_px)
        arrays["shape"] = np.array([height, width], np.int64)
        return arrays

    def ensure(self, json_bytes: bytes) -> bool:
        """Compute and store the maps of one json unless present; True when computed."""
        path = self.path(json_bytes)
        if path.is_file():
            return False
        arrays = self.compute(json_bytes)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return True

    def lookup(self, json_bytes: bytes, positions: np.ndarray, masks: np.ndarray, scale: float,
               out_clip: float | None) -> np.ndarray | None:
        """Maps of the chosen annotations in the resized frame, or None when not cached.

        Args:
            json_bytes: The annotation json's content (its hash finds the file).
            positions: ``[K]`` annotation positions in the json.
            masks: ``[K, h, w]`` the same masks after resizing (the maps are made consistent with them).
            scale: Resize factor from the original image to ``h, w``.
            out_clip: Clip in output pixels (``clip * S``), or None.

        Returns:
            float32 ``[K, h, w]`` in output pixels, or None.
        """
        path = self.path(json_bytes)
        if not path.is_file():
            if not self._warned:
                log.warning("distance map cache %s has no maps for some images (first: %s); computing them on the "
                            "fly. Run `python tools/precompute_distance_maps.py DATASET --cache %s`.",
                            self.folder, path.name, self.folder)
                self._warned = True
            return None
        out = np.empty(masks.shape, np.float32)
        with np.load(path) as stored:
            boxes, clip_px = stored["boxes"], float(stored["clip_px"])
            for i, k in enumerate(positions):
                y0, x0, kind = (int(v) for v in boxes[int(k)])
                if kind != 0:
                    out[i] = 0.0
                    continue
                values = resample_crop(stored[f"m{int(k)}"], (y0, x0), clip_px, scale, masks.shape[1:])
                out[i] = finish_map(rescale_values(values, scale), masks[i], out_clip)
        return out


def precompute_distance_maps(root: str | Path, cache: str | Path, *, clip: float | None = 0.05, workers: int = 0,
                             progress: bool = True) -> dict[str, int]:
    """Fill the cache with the maps of every annotation json in ``root``.

    Args:
        root: SA-1B folder.
        cache: Cache folder.
        clip: As in :class:`DistanceMapCache`.
        workers: Worker processes (0 or 1: this process).
        progress: Show a tqdm progress bar.

    Returns:
        Counts ``computed`` (new files), ``reused`` (already present) and ``failed`` (unreadable jsons).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from samft.data.index import list_folder

    root = Path(root)
    listing = list_folder(root)
    jobs = [(str(root / name), str(cache), clip) for name in listing.names]
    counts = {"computed": 0, "reused": 0, "failed": 0}
    bar = tqdm(total=len(jobs), desc="distance maps", unit="image", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for status in pool.map(_precompute_one, jobs, chunksize=1):
                counts[status] += 1
                bar.update(1)
    else:
        for job in jobs:
            counts[_precompute_one(job)] += 1
            bar.update(1)
    bar.close()
    return counts


def _precompute_one(job: tuple[str, str, float | None]) -> str:
    json_path, folder, clip = job
    try:
        data = Path(json_path).read_bytes()
        return "computed" if DistanceMapCache(folder, clip).ensure(data) else "reused"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("distance maps: skipping %s (%s: %s)", json_path, type(exc).__name__, exc)
        return "failed"
