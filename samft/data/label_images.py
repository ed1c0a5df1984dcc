"""Instance label images (``label_images``): an image folder and a folder of integer label images.

The layout microscopy, medical and remote-sensing data come in (micro-sam's, cellpose's): for every
image ``<stem>.<ext>`` a label image of the same stem in the label folder, ``<stem>.png`` (8- or
16-bit) or ``<stem>.tif``/``.tiff`` (read with tifffile), the same size as the image, where 0 is
background and every other value one instance. With ``split_components=True`` a label image is read
as *semantic* (one value per class) and every 8-connected component of each value becomes an
instance.

The index (instance ids and areas per image; reading every label image once) is kept in
``<labels>/.samft_index.json`` (or the user cache when that folder is read-only) and rebuilt when a
file of either folder changes. Bad input: a missing label image, one that cannot be decoded, that
is not a 2-D integer image, or whose size differs from its image's are skipped and counted, or
raised naming the file (``on_error``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from samft.data.base import ImageSource, LabelMasks, Loaded, MaskDataset, empty_record
from samft.data.errors import BadFile, DataError
from samft.data.index import INDEX_NAME, cached_records, user_cache_path
from samft.registry import DATASETS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")


def read_labels(path: Path) -> np.ndarray:
    """A label image as a 2-D integer array.

    Raises:
        BadFile: not decodable, not 2-D, or not integer-valued.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            labels = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as im:
                if im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
                    raise BadFile(path, f"label image has mode {im.mode} (colour); use a single-channel integer "
                                  "image (8- or 16-bit PNG, or TIFF) with one value per instance")
                labels = np.asarray(im)
    except BadFile:
        raise
    except FileNotFoundError:
        raise BadFile(path, "label image is missing") from None
    except Exception as exc:  # tifffile and PIL raise many kinds for a file that is not an image
        raise BadFile(path, f"cannot decode label image ({type(exc).__name__}: {exc})") from None
    labels = np.squeeze(labels)
    if labels.ndim != 2:
        raise BadFile(path, f"label image has shape {labels.shape}; use one 2-D image per picture")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise BadFile(path, f"label image holds {labels.dtype} values; use integer ids (0 = background)")
    return labels


def instances(labels: np.ndarray, split_components: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(instance map, ids)``: ``labels`` itself and its non-zero values, or with ``split_components``
    a map numbering every 8-connected component of every value 1, 2, ... (by value, then by scan order)."""
    if not split_components:
        ids = np.unique(labels)
        return labels, ids[ids != 0]
    out = np.zeros(labels.shape, np.int32)
    count = 0
    for value in np.unique(labels):
        if value == 0:
            continue
        components, n = ndimage.label(labels == value, structure=np.ones((3, 3), bool))
        out[components > 0] = components[components > 0] + count
        count += n
    return out, np.arange(1, count + 1)


@DATASETS.register("label_images", paths=('images', 'labels'))
class LabelImageDataset(MaskDataset):
    """SAM training items from an image folder and a folder of instance label images.

    Args:
        images: Folder of images (``.jpg``, ``.png``, ``.tif``, ...).
        labels: Folder of label images matched to the images by file stem.
        split_components: Read labels as semantic classes and split each into connected components.
        **settings: The shared pipeline's settings (see :class:`samft.data.sa1b.SA1BDataset`).
    """

    def __init__(self, images: str | Path, labels: str | Path, *, split_components: bool = False,
                 **settings: Any) -> None:
        self.images, self.labels, self.split_components = Path(images), Path(labels), bool(split_components)
        for what, folder in (("images", self.images), ("labels", self.labels)):
            if not folder.is_dir():
                raise DataError(f"label_images: the {what} folder {folder} does not exist.")
        self.index_reused = False
        super().__init__(**settings)

    @property
    def description(self) -> str:
        return f"label_images {self.images} + {self.labels}"

    def _files(self) -> tuple[list[Path], dict[str, Path]]:
        images = sorted(p for p in self.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                        and not p.name.startswith("."))
        if not images:
            raise DataError(f"label_images: {self.images} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        labels = {}
        for p in sorted(self.labels.iterdir()):
            if p.suffix.lower() in LABEL_SUFFIXES and not p.name.startswith("."):
                labels.setdefault(p.stem, p)
        return images, labels

    def _index(self) -> list[dict[str, Any]]:
        images, labels = self._files()
        digest = hashlib.sha1(f"samft-labels-v1\0{self.split_components}".encode())
        for p in [*images, *labels.values()]:
            st = p.stat()
            digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        path = self.labels / INDEX_NAME if os.access(self.labels, os.W_OK) else user_cache_path(self.labels,
                                                                                                 "label_index")
        records, self.index_reused = cached_records(
            path, digest.hexdigest(), lambda: [self._record(p, labels.get(p.stem)) for p in images],
            f"label images {self.labels}")
        return records

    def _record(self, image: Path, label: Path | None) -> dict[str, Any]:
        rec = empty_record(image.name, image.name, image.stem)
        rec["label"] = label.name if label else None
        if label is None:
            rec["error"] = (f"no label image {image.stem}{'/'.join(LABEL_SUFFIXES)} in {self.labels} "
                            "(labels are matched to images by file stem)")
            return rec
        try:
            labels = read_labels(label)
            with Image.open(image) as im:
                width, height = im.size
        except BadFile as exc:
            rec["error"] = exc.reason
            return rec
        except Exception as exc:  # PIL raises several kinds for a non-image
            rec["error"] = f"cannot decode image {image} ({type(exc).__name__}: {exc})"
            return rec
        if labels.shape != (height, width):
            rec["error"] = (f"label image {label.name} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                            f"{width}x{height}")
            return rec
        instance_map, ids = instances(labels, self.split_components)
        areas = np.bincount(instance_map.ravel().astype(np.int64), minlength=int(ids.max(initial=0)) + 1)[ids]
        rec.update(height=height, width=width, n=len(ids), ids=[int(i) for i in ids], area=[float(a) for a in areas],
                   predicted_iou=[None] * len(ids), stability_score=[None] * len(ids), crowd=[False] * len(ids))
        return rec

    def _where(self, index: int) -> str:
        rec = self.records[index]
        return str(self.labels / rec["label"]) if rec.get("label") else str(self.images / rec["json"])

    def _load(self, index: int, positions: np.ndarray) -> Loaded:
        rec = self.records[index]
        where = self._where(index)
        labels = read_labels(self.labels / rec["label"])
        if labels.shape != (rec["height"], rec["width"]):
            raise BadFile(where, "label image changed after the dataset was indexed; create the dataset again")
        instance_map, _ = instances(labels, self.split_components)
        ids = np.asarray(rec["ids"])[np.asarray(positions, np.int64)]
        path = self.images / rec["image"]
        image = ImageSource(path, rec["height"], rec["width"], str(path))
        points = np.full((len(ids), 2), np.nan, np.float32)
        return Loaded(image, LabelMasks(instance_map, ids), points, [int(i) for i in ids], where,
                      {"image_id": rec["image_id"], "height": rec["height"], "width": rec["width"]})
