"""SA-1B reader: a folder of ``<id>.jpg`` + ``<id>.json`` pairs as SAM training items.

Each read of an item samples up to ``max_masks`` of the image's usable annotations, decodes only
those (SA-1B has ~100 per image), resizes the image so its longest side is ``image_size``,
applies the augmentations, pads bottom-right to ``image_size`` squared and samples one prompt
per mask from the augmented mask. Sampling is deterministic given ``seed``, the epoch
(:meth:`SA1BDataset.set_epoch`) and the item index, whatever the DataLoader workers do.

Bad files (see :mod:`samft.data.errors`) are skipped and counted, or raised as
:class:`DataError`, as ``on_error`` says. A skipped item is a small marker dict that
:func:`samft.data.collate.collate_masks` counts as ``skipped``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from samft.data.distance_maps import DistanceMapCache, default_cache_dir, fast_signed_distance_maps
from samft.data.errors import BadFile, DataError, check_on_error
from samft.data.images import read_image
from samft.data.index import load_index, resolve_inside
from samft.prompting import PROMPT_MODES, sample_prompts
from samft.data.rle import checked_rle, decode_resized
from samft.data.transforms import (
    apply_augmentation, build_augmentation, pad_bottom_right, resize_image, resize_mask, resized_shape,
)

log = logging.getLogger("samft.data")

SKIPPED = "skipped"  # key of the marker dict returned for a skipped item

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


class SA1BDataset(Dataset):
    """SAM training items from an SA-1B-style folder.

    Args:
        root: Folder of ``<id>.jpg`` + ``<id>.json`` pairs (SA-1B format).
        image_size: Side S of the square, padded input (SAM: 1024).
        max_masks: Masks sampled per image and read (SAM: 64).
        prompt: ``point``, ``box`` or ``point_or_box``; None samples no prompt (evaluation chooses its own:
            every mask then has one padding prompt).
        box_prob: Probability of a box in ``point_or_box`` mode (SAM: 0.5).
        transforms: None or a list of albumentations specs (see :mod:`samft.data.transforms`).
        min_area: Drop masks with fewer pixels (original resolution); area <= 0 is always dropped.
        max_area_frac: Drop masks covering more than this share of the image (SAM: 0.9).
        min_predicted_iou, min_stability: Drop masks whose ``predicted_iou`` / ``stability_score``
            is lower (masks without the field are kept).
        keep_crowd: Keep COCO ``iscrowd`` annotations (dropped by default).
        on_error: ``skip`` (log, count, leave out) or ``raise`` (:class:`DataError`).
        with_dist_maps: Serve signed distance maps ``dist_maps [K, S, S]`` (input-frame pixels).
        dist_map_cache: Folder written by ``tools/precompute_distance_maps.py``; None looks in the
            tool's default folder (:func:`samft.data.distance_maps.default_cache_dir`) and computes
            the maps for each item on the fly when it does not exist.
        dist_clip: Outside distances are clipped at ``dist_clip * S`` pixels (None: no clip).
        seed: Sampling seed.
        index_path: Where the dataset index lives (default: see :mod:`samft.data.index`).
        box_noise, box_max_noise: Box corner noise (SAM: 10% of the side, capped at 20 px).

    Items: see :meth:`__getitem__`.
    """

    def __init__(self, root: str | Path, *, image_size: int = 1024, max_masks: int = 64,
                 prompt: str = "point_or_box", box_prob: float = 0.5, transforms: Any = None, min_area: int = 1,
                 max_area_frac: float = 0.9, min_predicted_iou: float = 0.0, min_stability: float = 0.0,
                 keep_crowd: bool = False, on_error: str = "skip", with_dist_maps: bool = False,
                 dist_map_cache: str | Path | None = None, dist_clip: float | None = 0.05, seed: int = 0,
                 index_path: str | Path | None = None, box_noise: float = 0.1, box_max_noise: float = 20.0) -> None:
        self._check_settings(image_size, max_masks, prompt, box_prob, max_area_frac, dist_clip)
        self.root = Path(root)
        self.image_size, self.max_masks = int(image_size), int(max_masks)
        self.prompt, self.box_prob = prompt, float(box_prob)
        self.box_noise, self.box_max_noise = float(box_noise), float(box_max_noise)
        self.on_error = check_on_error(on_error)
        self.with_dist_maps, self.dist_clip = bool(with_dist_maps), dist_clip
        self.augmentation = build_augmentation(transforms)
        self.seed = int(seed)
        self.filters = {"min_area": min_area, "max_area_frac": max_area_frac, "min_predicted_iou": min_predicted_iou,
                        "min_stability": min_stability, "keep_crowd": keep_crowd}
        self.records, self.index_reused = load_index(self.root, index_path=index_path)
        self.eligible = [self._eligible(r) for r in self.records]
        self.dist_cache = self._dist_cache(dist_map_cache) if with_dist_maps else None
        self._shared = _Shared()

    def _dist_cache(self, folder: str | Path | None) -> DistanceMapCache | None:
        """The precomputed maps for this input size and clip: ``folder``, else the default one if it exists."""
        if folder is None:
            folder = default_cache_dir(self.root)
            if not folder.is_dir():
                return None
        return DistanceMapCache(folder, self.image_size, self.dist_clip)

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

    # -- bookkeeping ----------------------------------------------------------------------------
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
        """Positions of the annotations that pass the filters (from the index, no json parsed)."""
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
            :mod:`samft.prompting`); ``dist_maps`` float32 ``[K, S, S]`` when enabled; ``meta``
            with ``image_id``, ``file``, ``original_size`` (H, W), ``input_size`` (h, w) before
            padding, ``annotation_ids`` and ``point_coords`` (the json's point of each mask,
            carried through the transforms, float32 ``[K, 2]``). A skipped item is
            ``{"skipped": {"file", "reason"}, "image_size": S, "with_dist_maps": bool}``.
        """
        try:
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

    def _choose(self, index: int, rng: np.random.Generator) -> np.ndarray:
        rec, eligible = self.records[index], self.eligible[index]
        if rec.get("error"):
            raise BadFile(self.root / rec["json"], rec["error"])
        if rec["n"] == 0:
            raise BadFile(self.root / rec["json"], "annotation list is empty")
        if eligible.size == 0:
            raise BadFile(self.root / rec["json"], f"no usable mask: all {rec['n']} annotations removed by the "
                          f"filters {self.filters}")
        k = min(self.max_masks, eligible.size)
        return np.sort(rng.choice(eligible, size=k, replace=False))

    def _annotations(self, index: int, chosen: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]], Path, bytes]:
        rec = self.records[index]
        json_path = self.root / rec["json"]
        try:
            raw = json_path.read_bytes()
            data = json.loads(raw)
            anns = data["annotations"]
            info = data["image"]
            height, width = int(info["height"]), int(info["width"])
        except FileNotFoundError:
            raise BadFile(json_path, "json file is missing") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadFile(json_path, f"malformed SA-1B json ({type(exc).__name__}: {exc})") from None
        if len(anns) != rec["n"] or (height, width) != (rec["height"], rec["width"]):
            raise BadFile(json_path, "json changed after the dataset was created; create the dataset again")
        try:
            image_path = resolve_inside(self.root, str(info.get("file_name") or rec["image"]))
        except DataError as exc:
            raise BadFile(json_path, str(exc)) from None
        return info, [anns[int(i)] for i in chosen], image_path, raw

    def _read(self, index: int) -> dict[str, Any]:
        rng = self._rng(index)
        chosen = self._choose(index, rng)
        info, anns, image_path, raw = self._annotations(index, chosen)
        json_path = self.root / self.records[index]["json"]
        height, width = int(info["height"]), int(info["width"])
        rles = []
        for ann in anns:
            try:
                rles.append(checked_rle(ann.get("segmentation"), height, width))
            except (ValueError, TypeError, AttributeError) as exc:
                raise BadFile(json_path, f"annotation {ann.get('id')}: {exc}") from None
        hw = resized_shape(height, width, self.image_size)
        image = read_image(image_path, height, width, hw)
        masks = self._decode_masks(rles, hw)
        scale = hw[1] / width
        points = np.asarray([_first_point(a) for a in anns], np.float32).reshape(-1, 2)
        points = (points + 0.5) * scale - 0.5  # pixel indices: centres scale about the pixel-grid origin
        no_point = np.isnan(points).any(1)
        points[no_point] = 0.0  # albumentations rejects NaN; restored below
        dist = self.dist_cache.lookup(raw, chosen, hw) if self._use_cache() else None
        valid = np.ones(hw, np.uint8)
        if self.augmentation is not None:
            out = apply_augmentation(self.augmentation, int(rng.integers(2**31)), image, masks, valid, points, dist)
            image, masks, valid, points, dist = out["image"], out["masks"], out["valid"], out["keypoints"], out["dist_maps"]
            image, masks, valid, points, dist = self._fit(image, masks, valid, points, dist)
        # masks smaller than a pixel of the input frame vanish when resized: nothing to segment there
        keep = masks.reshape(len(masks), -1).any(1)
        if not keep.any():
            if self.augmentation is None:
                raise BadFile(json_path, "every sampled mask is smaller than one pixel at image_size "
                              f"{self.image_size}")
            exc = BadFile(json_path, "no mask left inside the image after augmentation")
            exc.always_skip = True  # a random augmentation, not a file problem
            raise exc
        points[no_point] = np.nan
        masks, points = masks[keep], points[keep]
        dist = dist[keep] if dist is not None else None
        return self._item(index, info, image_path, image, masks, valid, points, dist, anns, keep, rng)

    def _decode_masks(self, rles: list[dict[str, Any]], hw: tuple[int, int]) -> np.ndarray:
        """``[K, h, w]`` uint8 masks of the sampled annotations (the benchmark's baseline overrides it)."""
        return decode_resized(rles, hw)

    def _fit(self, image, masks, valid, points, dist):
        """After a size-changing augmentation, bring the longest side back to S."""
        h, w = image.shape[:2]
        if max(h, w) == self.image_size:
            return image, masks, valid, points, dist
        hw = resized_shape(h, w, self.image_size)
        scale = hw[1] / w
        image = resize_image(image, hw)
        masks = np.stack([resize_mask(m, hw) for m in masks]) if len(masks) else np.zeros((0,) + hw, np.uint8)
        valid = resize_mask(valid, hw)
        return image, masks, valid, (points + 0.5) * scale - 0.5, None  # maps are recomputed

    def _use_cache(self) -> bool:
        return self.with_dist_maps and self.dist_cache is not None and (
            self.augmentation is None or self.augmentation.permutation_only)

    def _out_clip(self) -> float | None:
        return None if self.dist_clip is None else self.dist_clip * self.image_size

    def _item(self, index, info, image_path, image, masks, valid, points, dist, anns, keep, rng):
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
        kept_anns = [a for a, k in zip(anns, keep) if k]
        inside = (points[:, 0] > -0.5) & (points[:, 1] > -0.5) & (points[:, 0] < w - 0.5) & (points[:, 1] < h - 0.5)
        item = {
            "image": torch.from_numpy(pad_bottom_right(np.ascontiguousarray(image.transpose(2, 0, 1)), S)),
            "masks": mask_t,
            "valid": torch.from_numpy(pad_bottom_right(valid, S).view(np.bool_)),
            "points": prompt_points,
            "point_labels": prompt_labels,
            "meta": {"image_id": info.get("image_id", self.records[index]["image_id"]), "file": str(image_path),
                     "original_size": (int(info["height"]), int(info["width"])), "input_size": (h, w),
                     "annotation_ids": [a.get("id") for a in kept_anns],
                     "point_coords": torch.from_numpy(np.where(inside[:, None], points, np.nan).astype(np.float32))},
        }
        if self.with_dist_maps:
            item["dist_maps"] = torch.from_numpy(pad_bottom_right(dist.astype(np.float32, copy=False), S))
        return item


def _first_point(ann: dict[str, Any]) -> tuple[float, float]:
    """The json's first ``point_coords`` entry, or NaN when absent or malformed."""
    try:
        x, y = ann["point_coords"][0]
        return float(x), float(y)
    except (KeyError, IndexError, TypeError, ValueError):
        return math.nan, math.nan
