"""Fixtures that write small SA-1B folders whose masks the tests encode themselves."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def annotation(ann_id: int, mask: np.ndarray, **fields) -> dict:
    ys, xs = np.nonzero(mask)
    ann = {"id": ann_id, "segmentation": encode(mask), "area": int(mask.sum()),
           "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
           if len(xs) else [0.0, 0.0, 0.0, 0.0],
           "predicted_iou": 0.95, "stability_score": 0.97, "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
           "point_coords": [[float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]] if len(xs) else [[0.0, 0.0]]}
    ann.update(fields)
    return ann


def write_pair(folder: Path, stem: str, image: np.ndarray, annotations: list[dict], image_id: int = 1,
               **image_fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}.jpg", quality=95)
    info = {"image_id": image_id, "width": image.shape[1], "height": image.shape[0], "file_name": f"{stem}.jpg"}
    info.update(image_fields)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps({"image": info, "annotations": annotations}))
    return path


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


class Helpers:
    """The helpers above, handed to tests as the ``h`` fixture (conftest is not importable)."""

    encode = staticmethod(encode)
    annotation = staticmethod(annotation)
    write_pair = staticmethod(write_pair)
    random_image = staticmethod(random_image)
    rect = staticmethod(rect)


@pytest.fixture
def h():
    return Helpers


@pytest.fixture
def sa1b_folder(tmp_path):
    """Three images (60x80, 80x60, 50x50) with rectangles and an ellipse, encoded here."""
    root = tmp_path / "sa1b"
    yy, xx = np.mgrid[:60, :80]
    ellipse = ((yy - 30) / 12.0) ** 2 + ((xx - 50) / 20.0) ** 2 <= 1
    masks = {
        "a": [rect(60, 80, 5, 25, 5, 30), ellipse, rect(60, 80, 40, 58, 2, 12)],
        "b": [rect(80, 60, 10, 70, 10, 50), rect(80, 60, 0, 5, 0, 5)],
        "c": [rect(50, 50, 20, 30, 20, 30)],
    }
    for i, (stem, ms) in enumerate(masks.items()):
        h, w = ms[0].shape
        write_pair(root, stem, random_image(h, w, i), [annotation(100 * (i + 1) + k, m) for k, m in enumerate(ms)],
                   image_id=i + 1)
    return root, masks


@pytest.fixture(scope="session")
def coco_train(shared_dir, tmp_path_factory) -> Path:
    """Real COCO photos with their instance masks in SA-1B form: the first 6 images of coco_tiny's train split."""
    from samft.data.coco import convert_coco

    tiny = shared_dir / "data" / "coco_tiny"
    if not tiny.is_dir():
        pytest.skip(f"{tiny} is absent: real-COCO test skipped")
    out = tmp_path_factory.mktemp("coco_train") / "sa1b"
    convert_coco(tiny / "annotations" / "instances_train2017.json", tiny / "train2017", out, link=True, max_images=6)
    return out
