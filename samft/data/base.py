"""What every dataset reader shares: from an item's image and masks to a SAM training item.

A reader (``sa1b``, ``sa1b_tar``, ``coco``, ``label_images``, or a plugin registered in
:data:`samft.registry.DATASETS`) only says how to list its items and how to read one: it subclasses
:class:`MaskDataset` and implements :meth:`MaskDataset._index` (one record per image, see
:data:`RECORD_KEYS`) and :meth:`MaskDataset._load` (the image and the masks of chosen annotations as
a :class:`Loaded`). Everything after reading is done here, once for all formats: mask sampling,
resize to the model's input frame (longest side S then padding, or the S x S square), crops of large
images, augmentation, prompts (via :mod:`samft.prompting`), distance maps, the valid area, and the
bad-input policy ``on_error`` (skip and count, or raise naming the file).

Sampling is deterministic given ``seed``, the epoch (:meth:`MaskDataset.set_epoch`) and the item
index, whatever the DataLoader workers do. An index past ``len(dataset)`` reads item
``index % len(dataset)`` with its own random draw: a mixture that draws a dataset more often than
it has items (:mod:`samft.data.mixing`) gets other masks, prompts and augmentations each time.
"""

from __future__ import annotations

import abc
import logging
import math
import multiprocessing
from dataclasses import dataclass, field
from multiprocessing.context import get_spawning_popen
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage
from torch.utils.data import Dataset

from samft.data.distance_maps import DistanceMapCache, fast_signed_distance_maps
from samft.data.errors import BadFile, DataError, check_on_error
from samft.data.images import read_image
from samft.data.rle import decode_resized
from samft.data.transforms import (
    apply_augmentation,
    build_augmentation,
    check_input_frame,
    pad_bottom_right,
    resize_image,
    resize_mask,
    served_shape,
)
from samft.prompting import PROMPT_MODES, sample_prompts

log = logging.getLogger("samft.data")

SKIPPED = "skipped"  # key of the marker dict returned for a skipped item
TILES = "tiles"  # key of an evaluation item made of several tiles of one large image (collate expands it)

#: What a reader's index record holds for each image (``error``: why it cannot be used, else None).
#: ``json`` names the item in messages and fingerprints (the annotation file, or the image for
#: formats without one); the per-annotation lists feed the mask filters without reading the masks.
RECORD_KEYS = ("json", "image", "image_id", "height", "width", "n", "area", "predicted_iou", "stability_score",
               "crowd", "error")

Window = tuple[int, int, int, int]  # x0, y0, width, height in original pixels


def empty_record(key: str, image: str, image_id: Any) -> dict[str, Any]:
    """A record with no annotations yet (a reader fills it, or sets ``error``)."""
    return {"json": key, "image": image, "image_id": image_id, "height": 0, "width": 0, "n": 0, "area": [],
            "predicted_iou": [], "stability_score": [], "crowd": [], "error": None}


class _Shared:
    """Counters shared by the dataset and its DataLoader workers (epoch, skipped files).

    They are ``multiprocessing.Value`` objects handed to workers when the workers start, so
    ``set_epoch`` in the main process reaches persistent workers and their skips add up here.
    Pickled in any other context (e.g. ``copy.deepcopy``) they become plain, private values.
    """

    def __init__(self, epoch: int = 0, skipped: int = 0) -> None:
        self.epoch = multiprocessing.Value("q", epoch)
        self.skipped = multiprocessing.Value("q", skipped)

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:
            return {"epoch": self.epoch, "skipped": self.skipped}
        return {"values": (self.epoch.value, self.skipped.value)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "values" in state:
            self.__init__(*state["values"])
        else:
            self.epoch, self.skipped = state["epoch"], state["skipped"]


# -- what a reader hands over --------------------------------------------------------------------
class ImageSource:
    """An encoded image (a path or bytes) and the size its annotations are in."""

    def __init__(self, source: Any, height: int, width: int, name: str) -> None:
        self.source, self.height, self.width, self.name = source, int(height), int(width), name

    def read(self, hw: tuple[int, int], window: Window | None = None) -> np.ndarray:
        """``[h, w, 3]`` uint8 of the whole image (or of ``window``) resized to ``hw``."""
        if window is None:
            return read_image(self.source, self.height, self.width, hw, name=self.name)
        x0, y0, w, h = window
        full = read_image(self.source, self.height, self.width, (self.height, self.width), name=self.name)
        return resize_image(np.ascontiguousarray(full[y0:y0 + h, x0:x0 + w]), hw)


class RleMasks:
    """Masks as checked COCO RLEs (see :func:`samft.data.rle.checked_rle`), decoded on demand."""

    def __init__(self, rles: list[dict[str, Any]]) -> None:
        self.rles = rles

    def __len__(self) -> int:
        return len(self.rles)

    def subset(self, rows: np.ndarray) -> RleMasks:
        return RleMasks([self.rles[int(r)] for r in rows])

    def boxes(self) -> np.ndarray:
        """``[K, 4]`` float boxes ``(x, y, w, h)`` from the RLEs, without decoding them."""
        if not self.rles:
            return np.zeros((0, 4))
        return np.asarray(mask_utils.toBbox(self.rles), np.float64).reshape(-1, 4)

    def decode(self, hw: tuple[int, int], window: Window | None = None) -> np.ndarray:
        """``[K, h, w]`` uint8 0/1 masks (of ``window`` when given) resized to ``hw``."""
        if window is None:
            return decode_resized(self.rles, hw)
        x0, y0, w, h = window
        full = decode_resized(self.rles, tuple(self.rles[0]["size"])) if self.rles else np.zeros((0, h, w), np.uint8)
        return _resize_stack(full[:, y0:y0 + h, x0:x0 + w], hw)


class LabelMasks:
    """Masks as the ids of an instance label image ``[H, W]`` (0 = background)."""

    def __init__(self, labels: np.ndarray, ids: np.ndarray) -> None:
        self.labels, self.ids = labels, np.asarray(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> LabelMasks:
        return LabelMasks(self.labels, self.ids[np.asarray(rows, np.int64)])

    def boxes(self) -> np.ndarray:
        """``[K, 4]`` float boxes ``(x, y, w, h)`` of the ids (zeros for an id not in the image), in one pass."""
        out = np.zeros((len(self.ids), 4))
        slices = ndimage.find_objects(self.labels) if len(self.ids) else []
        for k, i in enumerate(self.ids):
            found = slices[int(i) - 1] if 0 < int(i) <= len(slices) else None
            if found is not None:
                ys, xs = found
                out[k] = (xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        return out

    def decode(self, hw: tuple[int, int], window: Window | None = None) -> np.ndarray:
        labels = self.labels
        if window is not None:
            x0, y0, w, h = window
            labels = labels[y0:y0 + h, x0:x0 + w]
        return _resize_stack(np.stack([(labels == i).view(np.uint8) for i in self.ids])
                             if len(self.ids) else np.zeros((0,) + labels.shape, np.uint8), hw)


def _resize_stack(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if masks.shape[1:] == tuple(hw):
        return np.ascontiguousarray(masks)
    out = np.empty((len(masks),) + tuple(hw), np.uint8)
    for k, m in enumerate(masks):
        out[k] = resize_mask(np.ascontiguousarray(m), hw)
    return out


@dataclass
class Loaded:
    """One item as a reader reads it, in its annotations' frame (``height`` x ``width``).

    Attributes:
        image: The encoded image.
        masks: The masks of the requested annotation positions, in that order.
        points: ``[K, 2]`` float (x, y) the annotations' own point per mask (SA-1B's ``point_coords``),
            NaN where there is none.
        annotation_ids: One id per mask.
        where: The file (or ``tar:member``) named in messages about this item.
        info: The ``image`` dict of the item (``image_id``, ``height``, ``width``, ...).
        ignore: Masks whose union is left out of the loss (COCO crowd regions), or None.
        cache_key: Bytes that key precomputed distance maps (an SA-1B json's content), or None.
    """

    image: ImageSource
    masks: RleMasks | LabelMasks
    points: np.ndarray
    annotation_ids: list[Any]
    where: str
    info: dict[str, Any]
    ignore: RleMasks | LabelMasks | None = None
    cache_key: bytes | None = None

    def subset(self, rows: np.ndarray) -> Loaded:
        return Loaded(self.image, self.masks.subset(rows), self.points[rows],
                      [self.annotation_ids[int(r)] for r in rows], self.where, self.info, self.ignore, None)


@dataclass(frozen=True)
class CropSettings:
    """Crops of large images (``data.crop``): a square of ``multiple * image_size`` original pixels, then
    resized to ``image_size``, from images whose longest side is larger than that square.

    Attributes:
        multiple: Crop side in units of the model's input side (1: crops at full resolution).
        mask_prob: Probability that a training crop is placed around a mask (else anywhere).
        overlap: Share of the tile side that neighbouring evaluation tiles overlap.
    """

    multiple: float = 1.0
    mask_prob: float = 0.9
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if not self.multiple >= 1.0:
            raise DataError(f"crop multiple must be >= 1 (crops of the input size or larger), got {self.multiple}.")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise DataError(f"crop mask_prob must be in [0, 1], got {self.mask_prob}.")
        if not 0.0 <= self.overlap < 1.0:
            raise DataError(f"crop overlap must be in [0, 1), got {self.overlap}.")


@dataclass
class _Frame:
    """Where an item's pixels come from: the window of the original image and the served size."""

    window: Window | None
    hw: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# -- the shared pipeline ----------------------------------------------------------------------------
class MaskDataset(Dataset, abc.ABC):
    """SAM training items from any reader (subclasses implement :meth:`_index` and :meth:`_load`).

    Args:
        image_size: Side S of the square input (SAM: 1024).
        input_frame: How an image fills the S x S input (``samft.archs.SamArch.input_frame``):
            ``longest_side`` (SAM: longest side resized to S, aspect kept, padded bottom-right, ``valid``
            False on the padding) or ``square`` (SAM 2: stretched to S x S, no padding).
        max_masks: Masks sampled per image and read (SAM: 64).
        prompt: ``point``, ``box`` or ``point_or_box``; None samples no prompt (evaluation chooses its own:
            every mask then has one padding prompt).
        box_prob: Probability of a box in ``point_or_box`` mode (SAM: 0.5).
        transforms: None or a list of albumentations specs (see :mod:`samft.data.transforms`).
        min_area: Drop masks with fewer pixels (original resolution); area <= 0 is always dropped.
        max_area_frac: Drop masks covering more than this share of the image (SAM: 0.9).
        min_predicted_iou, min_stability: Drop masks whose ``predicted_iou`` / ``stability_score``
            is lower (masks without the field are kept).
        keep_crowd: Keep annotations marked as crowd (``iscrowd``) as targets (dropped by default).
        on_error: ``skip`` (log, count, leave out) or ``raise`` (:class:`DataError`).
        with_dist_maps: Serve signed distance maps ``dist_maps [K, S, S]`` (input-frame pixels).
        dist_map_cache: A :class:`DistanceMapCache` folder for readers that support one, or None.
        dist_clip: Outside distances are clipped at ``dist_clip * S`` pixels (None: no clip).
        seed: Sampling seed.
        box_noise, box_max_noise: Box corner noise (SAM: 10% of the side, capped at 20 px).
        crop: :class:`CropSettings` (or its fields as a dict) to read crops of large images; None reads
            every image whole. Training items are random crops; evaluation items (``prompt=None``)
            are every tile of the image that holds a mask (see :meth:`_tiles`).
    """

    def __init__(self, *, image_size: int = 1024, max_masks: int = 64, prompt: str | None = "point_or_box",
                 box_prob: float = 0.5, transforms: Any = None, min_area: int = 1, max_area_frac: float = 0.9,
                 min_predicted_iou: float = 0.0, min_stability: float = 0.0, keep_crowd: bool = False,
                 on_error: str = "skip", with_dist_maps: bool = False, dist_map_cache: Any = None,
                 dist_clip: float | None = 0.05, seed: int = 0, box_noise: float = 0.1,
                 box_max_noise: float = 20.0, crop: CropSettings | dict[str, Any] | None = None,
                 input_frame: str = "longest_side") -> None:
        self._check_settings(image_size, max_masks, prompt, box_prob, max_area_frac, dist_clip)
        self.image_size, self.max_masks = int(image_size), int(max_masks)
        self.input_frame = check_input_frame(input_frame)
        self.prompt, self.box_prob = prompt, float(box_prob)
        self.box_noise, self.box_max_noise = float(box_noise), float(box_max_noise)
        self.on_error = check_on_error(on_error)
        self.with_dist_maps, self.dist_clip = bool(with_dist_maps), dist_clip
        self.augmentation = build_augmentation(transforms)
        self.seed = int(seed)
        self.crop = CropSettings(**crop) if isinstance(crop, dict) else crop
        self.filters = {"min_area": min_area, "max_area_frac": max_area_frac, "min_predicted_iou": min_predicted_iou,
                        "min_stability": min_stability, "keep_crowd": keep_crowd}
        self.records = self._index()
        self.eligible = [self._eligible(r) for r in self.records]
        self.dist_cache = self._dist_cache(dist_map_cache) if with_dist_maps else None
        self._shared = _Shared()

    # -- what a reader implements ---------------------------------------------------------------
    @abc.abstractmethod
    def _index(self) -> list[dict[str, Any]]:
        """One record per image (keys :data:`RECORD_KEYS`), in a fixed order."""

    @abc.abstractmethod
    def _load(self, index: int, positions: np.ndarray) -> Loaded:
        """Read item ``index`` with the masks of the annotation ``positions`` (in that order).

        Raises:
            BadFile: the item cannot be read; the message names the file and why.
        """

    def _where(self, index: int) -> str:
        """The file named in messages about item ``index`` before it is read."""
        return str(self.records[index]["json"])

    def _dist_cache(self, folder: Any) -> DistanceMapCache | None:
        """Precomputed distance maps for this input size and clip (readers with a cache override it)."""
        return None

    @property
    def description(self) -> str:
        """What the dataset reads, for messages (``<reader> <path>``)."""
        return type(self).__name__

    # -- settings and bookkeeping ---------------------------------------------------------------
    @staticmethod
    def _check_settings(image_size, max_masks, prompt, box_prob, max_area_frac, dist_clip) -> None:
        if int(image_size) < 16:
            raise DataError(f"image_size must be >= 16, got {image_size}.")
        if int(max_masks) < 1:
            raise DataError(f"max_masks must be >= 1, got {max_masks}.")
        if prompt is not None and prompt not in PROMPT_MODES:
            raise DataError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}.")
        if not 0.0 <= float(box_prob) <= 1.0:
            raise DataError(f"box_prob must be in [0, 1], got {box_prob}.")
        if not 0.0 < float(max_area_frac) <= 1.0:
            raise DataError(f"max_area_frac must be in (0, 1], got {max_area_frac}.")
        if dist_clip is not None and not float(dist_clip) > 0:
            raise DataError(f"dist_clip must be > 0 (a share of the image side) or None, got {dist_clip}.")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the random masks, prompts and augmentations of ``epoch`` (reaches running workers)."""
        self._shared.epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._shared.epoch.value)

    @property
    def skipped(self) -> int:
        """Items skipped so far, in this process and its DataLoader workers."""
        return int(self._shared.skipped.value)

    def _eligible(self, rec: dict[str, Any]) -> np.ndarray:
        """Positions of the annotations that pass the filters (from the index, no mask read)."""
        if rec.get("error") or rec["n"] == 0:
            return np.zeros(0, np.int64)
        f = self.filters
        area = np.asarray(rec["area"], dtype=np.float64)
        keep = (area > 0) & (area >= f["min_area"]) & (area <= f["max_area_frac"] * rec["height"] * rec["width"])
        for key, threshold in (("predicted_iou", f["min_predicted_iou"]), ("stability_score", f["min_stability"])):
            values = np.asarray([np.nan if v is None else v for v in rec[key]], dtype=np.float64)
            keep &= np.isnan(values) | (values >= threshold)
        if not f["keep_crowd"]:
            keep &= ~np.asarray(rec["crowd"], dtype=bool)
        return np.flatnonzero(keep)

    # -- items ----------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        """One training item (or a skip marker).

        Returns:
            ``image`` uint8 ``[3, S, S]``; ``masks`` bool ``[K, S, S]``; ``valid`` bool ``[S, S]``;
            ``points`` float32 ``[K, P, 2]`` and ``point_labels`` int64 ``[K, P]`` (see
            :mod:`samft.prompting`); ``dist_maps`` float32 ``[K, S, S]`` when enabled; ``ignore`` bool
            ``[S, S]`` when the item has regions left out of the loss (COCO crowds); ``meta`` with
            ``image_id``, ``file``, ``original_size`` (H, W), ``input_size`` (h, w) before padding,
            ``crop`` (x0, y0, w, h in original pixels, or None), ``annotation_ids`` and
            ``point_coords`` (the annotation's own point of each mask, carried through the
            transforms, float32 ``[K, 2]``). A skipped item is ``{"skipped": {"file", "reason"},
            "image_size": S, "with_dist_maps": bool}``; an evaluation item of a large image with crops
            on is ``{"tiles": [item, ...]}``.
        """
        try:
            if self.crop is not None and self.prompt is None:
                return self._tiles(index)
            return self._read(index)
        except BadFile as exc:
            if self.on_error == "raise" and not getattr(exc, "always_skip", False):
                raise
            with self._shared.skipped.get_lock():
                self._shared.skipped.value += 1
            log.warning("skipping %s: %s", exc.path, exc.reason)
            return {SKIPPED: {"file": exc.path, "reason": exc.reason}, "image_size": self.image_size,
                    "with_dist_maps": self.with_dist_maps}

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _usable(self, index: int) -> np.ndarray:
        rec, eligible = self.records[index], self.eligible[index]
        if rec.get("error"):
            raise BadFile(self._where(index), rec["error"])
        if rec["n"] == 0:
            raise BadFile(self._where(index), "annotation list is empty")
        if eligible.size == 0:
            raise BadFile(self._where(index), f"no usable mask: all {rec['n']} annotations removed by "
                          f"the filters {self.filters}")
        return eligible

    def _crop_side(self, rec: dict[str, Any]) -> int | None:
        """The crop's side in original pixels when this image gets cropped, else None."""
        if self.crop is None:
            return None
        side = int(round(self.crop.multiple * self.image_size))
        return side if max(rec["height"], rec["width"]) > side else None

    def _read(self, index: int) -> dict[str, Any]:
        rng = self._rng(index)
        index = index % len(self.records)
        eligible = self._usable(index)
        rec = self.records[index]
        side = self._crop_side(rec)
        if side is None:
            chosen = np.sort(rng.choice(eligible, size=min(self.max_masks, eligible.size), replace=False))
            loaded = self._load(index, chosen)
            frame = _Frame(None, self._served(rec["height"], rec["width"]), rows=chosen)
        else:
            loaded = self._load(index, eligible)
            boxes = loaded.masks.boxes()
            window = self._random_crop(rng, rec, side, boxes)
            inside = np.flatnonzero(_intersects(boxes, window))
            if inside.size == 0:
                exc = BadFile(loaded.where, "no mask inside the random crop")
                exc.always_skip = True  # a random placement, not a file problem
                raise exc
            rows = np.sort(rng.choice(inside, size=min(self.max_masks, inside.size), replace=False))
            loaded = loaded.subset(rows)
            frame = self._window_frame(window, eligible[rows])
        return self._serve(loaded, frame, rng)

    def _random_crop(self, rng: np.random.Generator, rec: dict[str, Any], side: int, boxes: np.ndarray) -> Window:
        """A ``side`` square window (cut to the image): around a random mask's box centre with probability
        ``crop.mask_prob`` (so crops hold masks), else anywhere."""
        height, width = rec["height"], rec["width"]
        w, h = min(side, width), min(side, height)
        if len(boxes) and rng.random() < self.crop.mask_prob:
            x, y, bw, bh = boxes[int(rng.integers(len(boxes)))]
            cx, cy = int(x + bw / 2), int(y + bh / 2)
            x0 = int(rng.integers(max(0, cx - w + 1), min(cx, width - w) + 1))
            y0 = int(rng.integers(max(0, cy - h + 1), min(cy, height - h) + 1))
        else:
            x0, y0 = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
        return x0, y0, w, h

    def _tiles(self, index: int) -> dict[str, Any]:
        """Evaluation on a large image: every tile that holds a mask, each mask scored in one tile.

        Tiles are ``side`` squares on a grid with ``crop.overlap`` overlap covering the image. Each mask
        goes to the tile that holds the largest part of its box (ties: the tile whose centre is
        nearest the box centre), so every mask is scored once, cut to that tile.
        """
        rng = self._rng(index)
        index = index % len(self.records)
        rec = self.records[index]
        side = self._crop_side(rec)
        if side is None:
            return self._read(index)
        eligible = self._usable(index)
        chosen = np.sort(rng.choice(eligible, size=min(self.max_masks, eligible.size), replace=False))
        loaded = self._load(index, chosen)
        windows = tile_windows(rec["height"], rec["width"], side, self.crop.overlap)
        owner = assign_to_tiles(loaded.masks.boxes(), windows)
        parts = []
        for t, window in enumerate(windows):
            rows = np.flatnonzero(owner == t)
            if rows.size:
                item = self._serve(loaded.subset(rows), self._window_frame(window, chosen[rows]), rng,
                                   may_be_empty=True)
                if item is not None:
                    parts.append(item)
        if not parts:
            raise BadFile(loaded.where, "every sampled mask is smaller than one pixel of its tile")
        return {TILES: parts}

    def _serve(self, loaded: Loaded, frame: _Frame, rng: np.random.Generator,
               may_be_empty: bool = False) -> dict[str, Any] | None:
        """Resize (or cut), augment, pad and prompt one item."""
        hw = frame.hw
        image = loaded.image.read(hw, frame.window)
        masks = loaded.masks.decode(hw, frame.window)
        ignore = loaded.ignore.decode(hw, frame.window).max(0, initial=0) if loaded.ignore is not None and len(
            loaded.ignore) else None
        source_hw = frame.window[3:1:-1] if frame.window else (loaded.image.height, loaded.image.width)
        scale = np.float32([hw[1] / source_hw[1], hw[0] / source_hw[0]])  # x, y (differ in a square frame)
        points = (loaded.points.astype(np.float32).reshape(-1, 2) - np.float32(frame.offset) + 0.5) * scale - 0.5
        no_point = np.isnan(points).any(1)
        points[no_point] = 0.0  # albumentations rejects NaN; restored below
        dist = None
        if self._use_cache() and frame.window is None and loaded.cache_key is not None:
            dist = self.dist_cache.lookup(loaded.cache_key, frame.rows, hw)
        valid = np.ones(hw, np.uint8)
        if self.augmentation is not None:
            stack = masks if ignore is None else np.concatenate([masks, ignore[None]])
            out = apply_augmentation(self.augmentation, int(rng.integers(2**31)), image, stack, valid, points, dist)
            image, stack, valid, points, dist = (out[k] for k in ("image", "masks", "valid", "keypoints", "dist_maps"))
            image, stack, valid, points, dist = self._fit(image, stack, valid, points, dist)
            masks, ignore = (stack, None) if ignore is None else (stack[:-1], stack[-1])
        # masks smaller than a pixel of the input frame vanish when resized: nothing to segment there
        keep = masks.reshape(len(masks), -1).any(1)
        if not keep.any():
            if may_be_empty:
                return None
            if self.augmentation is None and frame.window is None:
                raise BadFile(loaded.where, "every sampled mask is smaller than one pixel at image_size "
                              f"{self.image_size}")
            exc = BadFile(loaded.where, "no mask left inside the image after augmentation or cropping")
            exc.always_skip = True  # a random augmentation or crop, not a file problem
            raise exc
        points[no_point] = np.nan
        masks, points = masks[keep], points[keep]
        dist = dist[keep] if dist is not None else None
        ids = [a for a, k in zip(loaded.annotation_ids, keep) if k]
        return self._item(loaded, frame, image, masks, valid, ignore, points, dist, ids, rng)

    def _fit(self, image, masks, valid, points, dist):
        """After a size-changing augmentation, bring the image back to the served frame (longest side S,
        or the S x S square)."""
        h, w = image.shape[:2]
        hw = self._served(h, w)
        if (h, w) == hw or (self.input_frame == "longest_side" and max(h, w) == self.image_size):
            return image, masks, valid, points, dist
        scale = np.float32([hw[1] / w, hw[0] / h])  # x, y
        image = resize_image(image, hw)
        masks = np.stack([resize_mask(m, hw) for m in masks]) if len(masks) else np.zeros((0,) + hw, np.uint8)
        valid = resize_mask(valid, hw)
        return image, masks, valid, (points + 0.5) * scale - 0.5, None  # maps are recomputed

    def _served(self, height: int, width: int) -> tuple[int, int]:
        """The served ``(h, w)`` of an ``height`` x ``width`` image or window, before padding."""
        return served_shape(height, width, self.image_size, self.input_frame)

    def _window_frame(self, window: Window, rows: np.ndarray) -> _Frame:
        x0, y0, w, h = window
        return _Frame(window, self._served(h, w), (x0, y0), rows)

    def _use_cache(self) -> bool:
        return self.with_dist_maps and self.dist_cache is not None and (
            self.augmentation is None or self.augmentation.permutation_only)

    def _out_clip(self) -> float | None:
        return None if self.dist_clip is None else self.dist_clip * self.image_size

    def _item(self, loaded, frame, image, masks, valid, ignore, points, dist, ids, rng) -> dict[str, Any]:
        S = self.image_size
        h, w = image.shape[:2]
        if self.with_dist_maps and dist is None:
            dist = fast_signed_distance_maps(masks, self._out_clip())
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        mask_t = torch.from_numpy(pad_bottom_right(masks, S).view(np.bool_))  # 0/1 uint8: a free view
        if self.prompt is None:
            prompt_points, prompt_labels = torch.zeros(len(mask_t), 0, 2), torch.zeros(len(mask_t), 0, dtype=torch.long)
        else:
            prompt_points, prompt_labels = sample_prompts(
                mask_t[:, :h, :w], self.prompt, self.box_prob, generator, image_size=(h, w),
                noise_std=self.box_noise, max_noise=self.box_max_noise)
        inside = (points[:, 0] > -0.5) & (points[:, 1] > -0.5) & (points[:, 0] < w - 0.5) & (points[:, 1] < h - 0.5)
        info = loaded.info
        item = {
            "image": torch.from_numpy(pad_bottom_right(np.ascontiguousarray(image.transpose(2, 0, 1)), S)),
            "masks": mask_t,
            "valid": torch.from_numpy(pad_bottom_right(valid, S).view(np.bool_)),
            "points": prompt_points,
            "point_labels": prompt_labels,
            "meta": {"image_id": info.get("image_id"), "file": loaded.image.name,
                     "original_size": (int(info["height"]), int(info["width"])), "input_size": (h, w),
                     "crop": frame.window, "annotation_ids": ids,
                     "point_coords": torch.from_numpy(np.where(inside[:, None], points, np.nan).astype(np.float32))},
        }
        if ignore is not None and ignore.any():
            item["ignore"] = torch.from_numpy(pad_bottom_right(ignore.astype(np.uint8), S).view(np.bool_))
        if self.with_dist_maps:
            item["dist_maps"] = torch.from_numpy(pad_bottom_right(dist.astype(np.float32, copy=False), S))
        return item


def _intersects(boxes: np.ndarray, window: Window) -> np.ndarray:
    """``[K]`` bool: the boxes ``(x, y, w, h)`` overlapping the window."""
    x0, y0, w, h = window
    return ((boxes[:, 0] < x0 + w) & (boxes[:, 0] + boxes[:, 2] > x0) & (boxes[:, 1] < y0 + h)
            & (boxes[:, 1] + boxes[:, 3] > y0) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0))


def tile_starts(length: int, side: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``side`` covering ``length`` with at least ``overlap * side`` overlap,
    spread evenly (the last tile ends at the edge)."""
    if length <= side:
        return [0]
    stride = max(1, int(side * (1.0 - overlap)))
    count = math.ceil((length - side) / stride) + 1
    return [int(round(i * (length - side) / (count - 1))) for i in range(count)]


def tile_windows(height: int, width: int, side: int, overlap: float) -> list[Window]:
    """Every tile of a ``height`` x ``width`` image (row by row), as windows ``(x0, y0, w, h)``."""
    w, h = min(side, width), min(side, height)
    return [(x0, y0, w, h) for y0 in tile_starts(height, side, overlap) for x0 in tile_starts(width, side, overlap)]


def assign_to_tiles(boxes: np.ndarray, windows: list[Window]) -> np.ndarray:
    """``[K]`` the tile of each box ``(x, y, w, h)``: the one holding the largest part of it, ties broken by
    the distance between the box's and the tile's centres."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    win = np.asarray(windows, np.float64)  # [T, 4]
    bx0, by0 = boxes[:, 0:1], boxes[:, 1:2]
    bx1, by1 = bx0 + boxes[:, 2:3], by0 + boxes[:, 3:4]
    ix = np.clip(np.minimum(bx1, win[:, 0] + win[:, 2]) - np.maximum(bx0, win[:, 0]), 0, None)
    iy = np.clip(np.minimum(by1, win[:, 1] + win[:, 3]) - np.maximum(by0, win[:, 1]), 0, None)
    overlap = ix * iy  # [K, T]
    centre_gap = np.hypot((bx0 + bx1) / 2 - (win[:, 0] + win[:, 2] / 2), (by0 + by1) / 2 - (win[:, 1] + win[:, 3] / 2))
    best = overlap.max(1, keepdims=True)
    return np.where(overlap >= best - 1e-9, centre_gap, np.inf).argmin(1)
