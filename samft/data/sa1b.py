"""SA-1B reader (``sa1b``): a folder of ``<id>.jpg`` + ``<id>.json`` pairs as SAM training items.

Each read of an item samples up to ``max_masks`` of the image's usable annotations and decodes only
those (SA-1B has ~100 per image); the rest of the pipeline (resize, crops, augmentation, padding,
prompts, distance maps, bad files) is :class:`samft.data.base.MaskDataset`'s. The folder's index
(:mod:`samft.data.index`) keeps start-up from parsing every json again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from samft.data.base import SKIPPED, ImageSource, Loaded, MaskDataset, RleMasks
from samft.data.distance_maps import DistanceMapCache, default_cache_dir
from samft.data.errors import BadFile, DataError
from samft.data.index import load_index, resolve_inside
from samft.data.rle import checked_rle
from samft.registry import DATASETS

__all__ = ["SA1BDataset", "SKIPPED", "parse_sa1b_json", "sa1b_masks"]


@DATASETS.register("sa1b", paths=('root',))
class SA1BDataset(MaskDataset):
    """SAM training items from an SA-1B-style folder.

    Args:
        root: Folder of ``<id>.jpg`` + ``<id>.json`` pairs (SA-1B format).
        index_path: Where the dataset index lives (default: see :mod:`samft.data.index`).
        dist_map_cache: Folder written by ``tools/precompute_distance_maps.py``; None looks in the
            tool's default folder (:func:`samft.data.distance_maps.default_cache_dir`) and computes
            the maps for each item on the fly when it does not exist.
        **settings: The shared pipeline's settings (:class:`samft.data.base.MaskDataset`): image_size,
            max_masks, prompt, box_prob, transforms, min_area, max_area_frac, min_predicted_iou,
            min_stability, keep_crowd, on_error, with_dist_maps, dist_clip, seed, box_noise,
            box_max_noise, crop.

    Items: see :meth:`samft.data.base.MaskDataset.__getitem__`.
    """

    def __init__(self, root: str | Path, *, index_path: str | Path | None = None,
                 dist_map_cache: str | Path | None = None, **settings: Any) -> None:
        self.root = Path(root)
        self.index_path = index_path
        self.index_reused = False
        super().__init__(dist_map_cache=dist_map_cache, **settings)

    @property
    def description(self) -> str:
        return f"sa1b {self.root}"

    def _index(self) -> list[dict[str, Any]]:
        records, self.index_reused = load_index(self.root, index_path=self.index_path)
        return records

    def _where(self, index: int) -> str:
        return str(self.root / self.records[index]["json"])

    def _dist_cache(self, folder: str | Path | None) -> DistanceMapCache | None:
        """The precomputed maps for this input size and clip: ``folder``, else the default one if it exists."""
        if folder is None:
            folder = default_cache_dir(self.root)
            if not folder.is_dir():
                return None
        return DistanceMapCache(folder, self.image_size, self.dist_clip, self.input_frame)

    def _load(self, index: int, positions: np.ndarray) -> Loaded:
        rec = self.records[index]
        json_path = self.root / rec["json"]
        try:
            raw = json_path.read_bytes()
        except FileNotFoundError:
            raise BadFile(json_path, "json file is missing") from None
        except OSError as exc:
            raise BadFile(json_path, f"cannot read json ({exc})") from None
        info, anns = parse_sa1b_json(raw, json_path, rec)
        try:
            image_path = resolve_inside(self.root, str(info.get("file_name") or rec["image"]))
        except DataError as exc:
            raise BadFile(json_path, str(exc)) from None
        image = ImageSource(image_path, info["height"], info["width"], str(image_path))
        return sa1b_masks(info, anns, positions, image, str(json_path), raw)


def parse_sa1b_json(raw: bytes, where: Any, rec: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``image`` dict and annotation list of an SA-1B json, checked against its index record.

    Raises:
        BadFile: malformed json, or one that changed after it was indexed.
    """
    try:
        data = json.loads(raw)
        anns = data["annotations"]
        info = dict(data["image"])
        info["height"], info["width"] = int(info["height"]), int(info["width"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadFile(where, f"malformed SA-1B json ({type(exc).__name__}: {exc})") from None
    if len(anns) != rec["n"] or (info["height"], info["width"]) != (rec["height"], rec["width"]):
        raise BadFile(where, "json changed after the dataset was created; create the dataset again")
    info.setdefault("image_id", rec["image_id"])
    return info, anns


def sa1b_masks(info: dict[str, Any], anns: list[dict[str, Any]], positions: np.ndarray, image: ImageSource,
               where: str, raw: bytes) -> Loaded:
    """The chosen annotations of a parsed SA-1B json as a :class:`Loaded` (RLEs checked, not decoded)."""
    height, width = info["height"], info["width"]
    chosen = [anns[int(i)] for i in positions]
    rles = []
    for ann in chosen:
        try:
            rles.append(checked_rle(ann.get("segmentation"), height, width))
        except (ValueError, TypeError, AttributeError) as exc:
            raise BadFile(where, f"annotation {ann.get('id')}: {exc}") from None
    points = np.asarray([_first_point(a) for a in chosen], np.float32).reshape(-1, 2)
    return Loaded(image, RleMasks(rles), points, [a.get("id") for a in chosen], where, info, cache_key=raw)


def _first_point(ann: dict[str, Any]) -> tuple[float, float]:
    """The json's first ``point_coords`` entry, or NaN when absent or malformed."""
    try:
        x, y = ann["point_coords"][0]
        return float(x), float(y)
    except (KeyError, IndexError, TypeError, ValueError):
        return math.nan, math.nan
