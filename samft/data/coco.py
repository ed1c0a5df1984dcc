"""COCO instances: read directly (:class:`CocoDataset`, reader ``coco``), or converted to SA-1B folders
(one ``<id>.jpg`` + ``<id>.json`` per image; ``tools/coco_to_sa1b.py``).

Every segmentation kind COCO uses is converted to SA-1B's compressed RLE: polygons (merged
into one mask per instance, as ``COCO.annToRLE`` does), uncompressed RLE (``iscrowd``
regions, list counts) and compressed RLE. ``bbox`` and ``area`` are recomputed from the mask
(COCO's own come from the polygon and can differ by a fraction of a pixel), ``point_coords``
is the mask pixel farthest from its boundary, and ``category_id`` / ``iscrowd`` are kept.
SA-1B's ``predicted_iou`` and ``stability_score`` describe SAM's automatic masks and are left
out (the reader's quality filters keep masks without them).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from samft.data.base import ImageSource, Loaded, MaskDataset, RleMasks, empty_record
from samft.data.demo import inner_point
from samft.data.errors import BadFile, DataError
from samft.data.images import upright_needed
from samft.data.index import resolve_inside
from samft.data.rle import checked_rle
from samft.registry import DATASETS


def coco_segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """One COCO instance's segmentation as a pycocotools compressed RLE.

    Args:
        segmentation: Polygons ``[[x0, y0, x1, y1, ...], ...]``, uncompressed RLE
            ``{"size", "counts": [int, ...]}`` or compressed RLE ``{"size", "counts": str}``.
        height, width: The image's size.

    Returns:
        ``{"size": [H, W], "counts": bytes}``.

    Raises:
        ValueError: an unknown form or an RLE whose size is not the image's.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # fewer than 3 points has no area
        if not polygons:
            return mask_utils.encode(np.zeros((height, width), np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(v) for v in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the image size [{height}, {width}]")
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unknown segmentation form {type(segmentation).__name__}")


def sa1b_annotation(ann: dict[str, Any], rle: dict[str, Any]) -> dict[str, Any]:
    """The SA-1B annotation of one converted COCO instance (mask-derived bbox, area and point)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools under numpy 2
        mask = mask_utils.decode([rle])[:, :, 0]
    height, width = rle["size"]
    return {
        "id": ann["id"],
        "segmentation": {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": int(mask_utils.area(rle)),
        "crop_box": [0.0, 0.0, float(width), float(height)],
        "point_coords": [inner_point(mask.astype(bool))],
        "category_id": ann.get("category_id"),
        "iscrowd": int(ann.get("iscrowd", 0)),
    }


def convert_coco(instances_json: str | Path, images_dir: str | Path, out_dir: str | Path, *,
                 keep_crowd: bool = False, link: bool = False, max_images: int | None = None) -> Counter:
    """Write an SA-1B folder from COCO instance annotations.

    Args:
        instances_json: COCO ``instances_*.json``.
        images_dir: Folder holding the images named by ``file_name``.
        out_dir: Output folder (created); existing pairs of the same name are replaced.
        keep_crowd: Also convert ``iscrowd`` regions (marked ``iscrowd: 1``; the reader drops
            them unless its ``keep_crowd`` is set).
        link: Hard-link images instead of copying them (falls back to copying).
        max_images: Convert only the first this many images (by image id) that have annotations;
            None converts all.

    Returns:
        Counts: ``images``, ``annotations`` written; ``crowd_skipped``, ``empty_skipped``
        (instances without pixels), ``images_without_annotations``, ``missing_images``,
        ``size_mismatch`` (image file size differs from the json; not written).
    """
    instances_json, images_dir, out_dir = Path(instances_json), Path(images_dir), Path(out_dir)
    try:
        coco = json.loads(instances_json.read_text())
        images, annotations = coco["images"], coco["annotations"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{instances_json} is not a readable COCO instances file "
                        f"({type(exc).__name__}: {exc}).") from None
    if not images_dir.is_dir():
        raise DataError(f"COCO images folder {images_dir} does not exist.")
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    for info in sorted(images, key=lambda im: im["id"]):
        if max_images is not None and counts["images"] >= max_images:
            break
        converted = _convert_image(info, by_image.get(info["id"], []), images_dir, keep_crowd, counts)
        if converted is not None:
            _write(info, converted, images_dir, out_dir, link)
            counts["images"] += 1
            counts["annotations"] += len(converted)
    return counts


def _convert_image(info, anns, images_dir: Path, keep_crowd: bool, counts: Counter) -> list[dict[str, Any]] | None:
    source = images_dir / info["file_name"]
    height, width = int(info["height"]), int(info["width"])
    if not source.is_file():
        counts["missing_images"] += 1
        return None
    with Image.open(source) as im:
        if upright_needed(im, width, height) is None:  # the reader's rule (EXIF-turned photos fit)
            counts["size_mismatch"] += 1
            return None
    out = []
    for ann in anns:
        if ann.get("iscrowd", 0) and not keep_crowd:
            counts["crowd_skipped"] += 1
            continue
        rle = coco_segmentation_to_rle(ann["segmentation"], height, width)
        if int(mask_utils.area(rle)) == 0:
            counts["empty_skipped"] += 1
            continue
        out.append(sa1b_annotation(ann, rle))
    if not out:
        counts["images_without_annotations"] += 1
        return None
    return out


def _write(info, annotations, images_dir: Path, out_dir: Path, link: bool) -> None:
    stem = Path(info["file_name"]).stem
    target = out_dir / f"{stem}.jpg"
    target.unlink(missing_ok=True)
    source = images_dir / info["file_name"]
    try:
        if not link:
            raise OSError
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    record = {"image": {"image_id": info["id"], "width": int(info["width"]), "height": int(info["height"]),
                        "file_name": target.name}, "annotations": annotations}
    (out_dir / f"{stem}.json").write_text(json.dumps(record))


CROWD = ("ignore", "drop")


@DATASETS.register("coco", paths=('annotations', 'images'))
class CocoDataset(MaskDataset):
    """SAM training items straight from a COCO instances json and its image folder (``coco``).

    Polygons (one mask per instance, its polygons merged as ``COCO.annToRLE`` does), compressed and
    uncompressed RLE are decoded as pycocotools decodes them. Crowd regions (``iscrowd: 1``) are never
    targets; ``crowd="ignore"`` (the default) leaves their pixels out of the loss (a crowd of people is
    neither foreground nor background for the instance next to it), ``crowd="drop"`` treats them as
    background. Images without instances are left out; the ``area`` filters use COCO's ``area``.

    The json is parsed once at start (COCO train2017's takes ~20 s and keeps ~1 GB); each image's
    annotations are kept as compact json text, so DataLoader workers share them.

    Args:
        annotations: COCO ``instances_*.json``.
        images: Folder holding the images named by ``file_name``.
        crowd: ``ignore`` or ``drop`` (above).
        **settings: The shared pipeline's settings (see :class:`samft.data.sa1b.SA1BDataset`).
    """

    OPTION_CHOICES = {"crowd": CROWD}  # checked when a config loads

    def __init__(self, annotations: str | Path, images: str | Path, *, crowd: str = "ignore",
                 **settings: Any) -> None:
        if crowd not in CROWD:
            raise DataError(f"coco: crowd must be one of {', '.join(CROWD)}, got {crowd!r}.")
        self.annotations, self.images, self.crowd = Path(annotations), Path(images), crowd
        self._anns: list[bytes] = []
        super().__init__(**settings)

    @property
    def description(self) -> str:
        return f"coco {self.annotations}"

    def _index(self) -> list[dict[str, Any]]:
        try:
            coco = json.loads(self.annotations.read_bytes())
            images, annotations = coco["images"], coco["annotations"]
            by_image: dict[Any, list[dict[str, Any]]] = {}
            for ann in annotations:
                by_image.setdefault(ann["image_id"], []).append(ann)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"coco: {self.annotations} is not a readable COCO instances file "
                            f"({type(exc).__name__}: {exc}).") from None
        if not self.images.is_dir():
            raise DataError(f"coco: the images folder {self.images} does not exist.")
        records = []
        for info in sorted(images, key=lambda im: im["id"]):
            anns = by_image.get(info["id"], [])
            if not anns:
                continue
            records.append(self._record(info, anns))
            self._anns.append(json.dumps({"image": info, "annotations": anns}, separators=(",", ":")).encode())
        if not records:
            raise DataError(f"coco: {self.annotations} has no image with instance annotations.")
        return records

    def _record(self, info: dict[str, Any], anns: list[dict[str, Any]]) -> dict[str, Any]:
        name = str(info.get("file_name", ""))
        rec = empty_record(name, name, info.get("id"))
        try:
            rec["height"], rec["width"] = int(info["height"]), int(info["width"])
            rec["n"] = len(anns)
            rec["area"] = [float(a.get("area") or 0.0) for a in anns]
            rec["predicted_iou"] = rec["stability_score"] = [None] * len(anns)
            rec["crowd"] = [bool(a.get("iscrowd", 0)) for a in anns]
        except (KeyError, TypeError, ValueError) as exc:
            rec["error"] = f"malformed COCO image entry ({type(exc).__name__}: {exc})"
            return rec
        try:
            if not resolve_inside(self.images, name).is_file():
                rec["error"] = "image file is missing"
        except DataError as exc:
            rec["error"] = str(exc)
        return rec

    def _where(self, index: int) -> str:
        return str(self.images / self.records[index]["json"])

    def _load(self, index: int, positions: np.ndarray) -> Loaded:
        data = json.loads(self._anns[index])
        info, anns = data["image"], data["annotations"]
        height, width = int(info["height"]), int(info["width"])
        where = f"{self.annotations} (image {info['id']}, {info['file_name']})"
        chosen = [anns[int(i)] for i in positions]
        crowds = [a for a in anns if a.get("iscrowd", 0)] if self.crowd == "ignore" else []
        rles = [self._rle(a, height, width, where) for a in chosen]
        ignore = RleMasks([self._rle(a, height, width, where) for a in crowds]) if crowds else None
        path = self.images / str(info["file_name"])
        image = ImageSource(path, height, width, str(path))
        points = np.full((len(chosen), 2), np.nan, np.float32)
        return Loaded(image, RleMasks(rles), points, [a.get("id") for a in chosen], where,
                      {"image_id": info["id"], "height": height, "width": width}, ignore=ignore)

    @staticmethod
    def _rle(ann: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
        segmentation = ann.get("segmentation")
        try:
            if isinstance(segmentation, dict):
                return checked_rle(segmentation, height, width)
            if isinstance(segmentation, list) and all(isinstance(p, list) and len(p) % 2 == 0 for p in segmentation):
                return coco_segmentation_to_rle([[float(v) for v in p] for p in segmentation], height, width)
            raise ValueError("segmentation is neither polygons [[x, y, ...], ...] nor an RLE {size, counts}")
        except (ValueError, TypeError) as exc:
            raise BadFile(where, f"annotation {ann.get('id')}: {exc}") from None
