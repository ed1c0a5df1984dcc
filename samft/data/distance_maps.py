"""Signed distance maps for boundary losses: fast per-mask computation and an exact cache.

The formula is Kervadec's, implemented once in :func:`samft.signed_distance.signed_distance_map`:
``edt(~m) * ~m - (edt(m) - 1) * m`` (positive outside, <= 0 inside, 0 on the inner boundary; an
empty mask and a mask without background give a zero map). This module makes it fast.

Bounding-box computation: the map is computed on the mask's bounding box grown by a margin
(clipped to the image), and everything outside is filled with the clip distance ``max_dist``:

- inside values are exact for any margin >= 1: the ring just outside the box is background, and
  for an inside pixel it is never farther than a background pixel beyond it;
- outside values are exact inside the crop (the crop holds every mask pixel), and a pixel beyond
  a margin of ``ceil(max_dist) + 1`` is more than ``max_dist`` away, so the filled value equals the
  clipped exact one. With ``max_dist=None`` the crop is the whole image (exact, no clipping).

The transforms on the crop are OpenCV's exact Euclidean ones (``DIST_MASK_PRECISE``, Felzenszwalb's
algorithm, ~4x faster than scipy's on real masks); their float32 distances are squared back to the
integer squared distances they stand for and re-rooted in float64, as scipy does, so
``fast == min(full_frame, max_dist)`` everywhere, to the last bit.

Distances do not survive resizing (a thin gap can close, a 1-px sliver vanish), so maps are only
ever computed on the mask exactly as it is served: the cache stores them per input size, on the
masks resized the way the dataset resizes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np

from samft.signed_distance import signed_distance_map

log = logging.getLogger("samft.data")


def crop_box(mask: np.ndarray, margin: int | None) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (exclusive ends) of the mask's bounding box grown by ``margin`` and
    clipped to the image; the whole image when ``margin`` is None; None for an empty mask."""
    # OpenCV's bounding box of the non-zero pixels: one vectorised pass instead of two numpy reductions
    x, y, bw, bh = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
    if bw == 0:
        return None
    h, w = mask.shape
    if margin is None:
        return 0, h, 0, w
    return max(y - margin, 0), min(y + bh + margin, h), max(x - margin, 0), min(x + bw + margin, w)


# OpenCV's float32 distances square back to the exact integer below this side (2 d dd < 0.5)
_OPENCV_MAX_SIDE = 2048


def _edt(binary: np.ndarray, exact: bool) -> np.ndarray:
    """Euclidean distance of each non-zero pixel to the nearest zero pixel.

    ``exact``: float64 equal to scipy's (OpenCV's float32 distances squared back to the integers
    they stand for and re-rooted); else OpenCV's float32 values (within 2e-5 px of them).
    """
    d = cv2.distanceTransform(binary.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if not exact:
        return d
    d = d.astype(np.float64)
    return np.sqrt(np.rint(d * d, out=d), out=d)


def _signed_distance(m: np.ndarray, exact: bool = True) -> np.ndarray:
    """:func:`signed_distance_map` of a bool mask, via OpenCV when the values stay exact.

    The inside transform runs on the mask's bounding box grown by 1 px only (enough: see the module
    docstring), which for the small masks of real photos is a fraction of the clipped crop.
    ``exact=False`` skips the float64 re-rooting (float32 distances, within 2e-5 px).
    """
    if max(m.shape) > _OPENCV_MAX_SIDE or not m.any() or m.all():
        return signed_distance_map(m)
    out = _edt(np.ascontiguousarray(~m), exact)  # distance of background pixels to the mask, 0 on the mask
    y0, y1, x0, x1 = crop_box(m, 1)
    inner = np.ascontiguousarray(m[y0:y1, x0:x1])
    # 0.0 - (edt - 1), not 1 - edt: the inner boundary reads 0, not -0 (as signed_distance_map)
    out[y0:y1, x0:x1][inner] = 0.0 - (_edt(inner, exact)[inner] - 1.0)
    return out.astype(np.float32, copy=False)


def signed_distance_crop(mask: np.ndarray, max_dist: float | None = None, *, exact: bool = True
                         ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The part of a mask's clipped signed distance map that differs from ``max_dist``.

    Args:
        mask: ``[H, W]`` bool (or 0/1) mask.
        max_dist: Clip for outside distances, in pixels (None: no clip, the crop is the whole image).
        exact: Values equal to :func:`signed_distance_map`'s to the last bit; False allows float32
            rounding (2e-5 px), for maps stored as float16 anyway.

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
    crop = _signed_distance(m[y0:y1, x0:x1], exact)
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


# -- the cache -------------------------------------------------------------------------------------
CACHE_VERSION = 2
CACHE_NAME = ".samft_dist_maps"


def default_cache_dir(root: str | Path) -> Path:
    """Where maps of dataset ``root`` go unless ``data.dist_map_cache`` says otherwise:
    ``<root>/.samft_dist_maps`` when the folder is writable, else a per-folder cache in the user cache."""
    root = Path(root)
    if os.access(root, os.W_OK):
        return root / CACHE_NAME
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "samft" / "dist_maps"
    return cache / hashlib.sha1(str(root.resolve()).encode()).hexdigest()


class DistanceMapCache:
    """Precomputed maps of the masks as the dataset serves them, one ``.npz`` per annotation json.

    Maps are computed on each mask decoded and resized to the input frame exactly as
    :class:`samft.data.SA1BDataset` does it (longest side ``image_size``, or the ``image_size`` square for
    a model whose ``input_frame`` is ``square``: the map of the stretched mask), with outside distances
    clipped at ``clip * image_size`` pixels, so a cached map equals the map of the served mask.
    Maps of another input size or clip are other files: a file is
    ``<folder>/<h[:2]>/<h>-<settings>.npz`` with ``h`` the SHA-1 of the json's bytes and
    ``settings`` a hash of (format version, ``image_size``, ``clip``, storage dtype, input frame), so stale maps
    are never read. Per annotation position ``k`` it holds ``m<k>`` (the float16 crop from
    :func:`signed_distance_crop`) and ``boxes[k] = (y0, x0, kind)`` with kind 0 = crop, 1 = zero
    map (empty or full mask), 2 = not stored (bad RLE); ``shape`` is the resized ``(h, w)``.

    Args:
        folder: Cache folder (created on first write).
        image_size: Input side S the maps are for (``model.image_size``).
        clip: Clip as a share of S (``data.dist_clip``; None: exact, unclipped, whole-image maps).
        input_frame: The model's input frame (``samft.archs.SamArch.input_frame``).
    """

    def __init__(self, folder: str | Path, image_size: int, clip: float | None = 0.05,
                 input_frame: str = "longest_side") -> None:
        from samft.data.transforms import check_input_frame

        self.folder = Path(folder)
        self.image_size, self.clip = int(image_size), clip
        self.input_frame = check_input_frame(input_frame)
        settings = {"version": CACHE_VERSION, "image_size": self.image_size, "clip": clip, "dtype": "float16"}
        if self.input_frame != "longest_side":  # SAM's frame keeps the tags of maps written before frames existed
            settings["input_frame"] = self.input_frame
        settings = json.dumps(settings, sort_keys=True)
        self.tag = hashlib.sha1(settings.encode()).hexdigest()[:12]
        self._warned = False

    @property
    def clip_px(self) -> float | None:
        return None if self.clip is None else self.clip * self.image_size

    def path(self, json_bytes: bytes) -> Path:
        digest = hashlib.sha1(json_bytes).hexdigest()
        return self.folder / digest[:2] / f"{digest}-{self.tag}.npz"

    def compute(self, json_bytes: bytes) -> dict[str, np.ndarray]:
        """The arrays stored for one annotation json (every annotation, whatever the filters)."""
        from samft.data.rle import checked_rle, decode_resized
        from samft.data.transforms import served_shape

        data = json.loads(json_bytes)
        height, width = int(data["image"]["height"]), int(data["image"]["width"])
        hw = served_shape(height, width, self.image_size, self.input_frame)
        anns = data["annotations"]
        boxes = np.zeros((len(anns), 3), np.int32)
        arrays: dict[str, np.ndarray] = {}
        for k, ann in enumerate(anns):
            try:
                rle = checked_rle(ann.get("segmentation"), height, width)
            except (ValueError, TypeError, AttributeError):
                boxes[k, 2] = 2
                continue
            mask = decode_resized([rle], hw)[0].view(np.bool_)  # the dataset's own decode + resize
            crop = signed_distance_crop(mask, self.clip_px, exact=False)  # stored as float16
            if crop is None or mask.all():
                boxes[k, 2] = 1
                continue
            arrays[f"m{k}"] = crop[0].astype(np.float16)
            boxes[k, :2] = crop[1]
        arrays["boxes"] = boxes
        arrays["shape"] = np.array(hw, np.int64)
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

    def lookup(self, json_bytes: bytes, positions: np.ndarray, hw: tuple[int, int]) -> np.ndarray | None:
        """Maps of the chosen annotations in the resized frame, or None when not cached.

        Args:
            json_bytes: The annotation json's content (its hash finds the file).
            positions: ``[K]`` annotation positions in the json.
            hw: The served (resized, unpadded) frame; a file for another frame is not used.

        Returns:
            float32 ``[K, h, w]`` in input-frame pixels, or None.
        """
        path = self.path(json_bytes)
        if not path.is_file():
            self._warn_missing(path)
            return None
        out = np.empty((len(positions),) + tuple(hw), np.float32)
        with np.load(path) as stored:
            if tuple(stored["shape"]) != tuple(hw):
                return None
            boxes = stored["boxes"]
            for i, k in enumerate(positions):
                y0, x0, kind = (int(v) for v in boxes[int(k)])
                if kind != 0:
                    out[i] = 0.0
                    continue
                out[i] = paste_crop(tuple(hw), (stored[f"m{int(k)}"].astype(np.float32), (y0, x0)), self.clip_px)
        return out

    def _warn_missing(self, path: Path) -> None:
        if not self._warned:
            clip = 0 if self.clip is None else self.clip
            frame = "" if self.input_frame == "longest_side" else f" --input-frame {self.input_frame}"
            log.warning("distance map cache %s has no maps for some images (first: %s); computing them on the "
                        "fly. Run `python tools/precompute_distance_maps.py DATASET --cache %s --image-size %d "
                        "--clip %s%s`.", self.folder, path.name, self.folder, self.image_size, clip, frame)
            self._warned = True


def precompute_distance_maps(root: str | Path, cache: str | Path | None = None, *, image_size: int = 1024,
                             clip: float | None = 0.05, workers: int = 0, progress: bool = True,
                             input_frame: str = "longest_side") -> dict[str, int]:
    """Fill the cache with the maps of every annotation json in ``root``.

    Args:
        root: SA-1B folder.
        cache: Cache folder (None: :func:`default_cache_dir`, where training looks when
            ``data.dist_map_cache`` is not set).
        image_size, clip, input_frame: As in :class:`DistanceMapCache` (``model.image_size``, ``data.dist_clip``,
            the model's input frame).
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
    cache = default_cache_dir(root) if cache is None else cache
    jobs = [(str(root / name), str(cache), int(image_size), clip, input_frame) for name in listing.names]
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


def _precompute_one(job: tuple[str, str, int, float | None, str]) -> str:
    json_path, folder, image_size, clip, input_frame = job
    try:
        data = Path(json_path).read_bytes()
        return "computed" if DistanceMapCache(folder, image_size, clip, input_frame).ensure(data) else "reused"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("distance maps: skipping %s (%s: %s)", json_path, type(exc).__name__, exc)
        return "failed"
