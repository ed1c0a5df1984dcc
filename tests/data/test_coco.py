"""COCO -> SA-1B on real COCO data: every instance round-trips exactly (polygons and crowd RLE)."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from samft.data import DataError, SA1BDataset
from samft.data.coco import coco_segmentation_to_rle, convert_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
        return COCO(str(path))


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_every_real_coco_instance_round_trips_exactly(shared_dir, tmp_path, split):
    tiny = shared_dir / "data" / "coco_tiny"
    instances = tiny / "annotations" / f"instances_{split}.json"
    counts = convert_coco(instances, tiny / split, tmp_path / "out", keep_crowd=True, link=True)
    coco = _coco(instances)
    anns = coco.loadAnns(coco.getAnnIds())
    assert counts["annotations"] + counts["empty_skipped"] == len(anns)
    assert counts["images"] == len({a["image_id"] for a in anns})
    kinds = {"polygon": 0, "rle": 0}
    seen = 0
    for path in sorted((tmp_path / "out").glob("*.json")):
        record = json.loads(path.read_text())
        assert (tmp_path / "out" / record["image"]["file_name"]).is_file()
        for ann in record["annotations"]:
            original = coco.anns[ann["id"]]
            kinds["rle" if isinstance(original["segmentation"], dict) else "polygon"] += 1
            ours = mask_utils.decode({"size": ann["segmentation"]["size"],
                                      "counts": ann["segmentation"]["counts"].encode()})
            reference = coco.annToMask(original)
            np.testing.assert_array_equal(ours, reference, err_msg=f"annotation {ann['id']}")
            assert ann["area"] == int(reference.sum())
            ys, xs = np.nonzero(reference)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            x, y = ann["point_coords"][0]
            assert reference[int(y), int(x)]
            assert ann["iscrowd"] == original["iscrowd"] and ann["category_id"] == original["category_id"]
            seen += 1
    assert seen == counts["annotations"] and kinds["polygon"] > 500 and kinds["rle"] > 0
    ds = SA1BDataset(tmp_path / "out", image_size=256, max_masks=8, keep_crowd=True)
    item = ds[0]
    assert item["masks"].shape[0] >= 1 and ds.skipped == 0


def test_crowd_regions_are_left_out_by_default(shared_dir, tmp_path):
    tiny = shared_dir / "data" / "coco_tiny"
    instances = tiny / "annotations" / "instances_val2017.json"
    counts = convert_coco(instances, tiny / "val2017", tmp_path / "out", link=True)
    crowd = sum(a["iscrowd"] for a in json.loads(instances.read_text())["annotations"])
    assert counts["crowd_skipped"] == crowd > 0
    for path in (tmp_path / "out").glob("*.json"):
        assert all(a["iscrowd"] == 0 for a in json.loads(path.read_text())["annotations"])


def test_segmentation_forms_by_hand():
    square = [[1, 1, 4, 1, 4, 4, 1, 4]]
    rle = coco_segmentation_to_rle(square, 6, 6)
    mask = mask_utils.decode(rle)
    assert mask.sum() == mask_utils.area(rle) and mask[2, 2] == 1 and mask[5, 5] == 0
    uncompressed = {"size": [3, 2], "counts": [1, 2, 3]}  # column-major: 1 bg, 2 fg, 3 bg
    got = mask_utils.decode(coco_segmentation_to_rle(uncompressed, 3, 2))
    assert got.tolist() == [[0, 0], [1, 0], [1, 0]]
    compressed = {"size": [6, 6], "counts": rle["counts"].decode()}
    assert np.array_equal(mask_utils.decode(coco_segmentation_to_rle(compressed, 6, 6)), mask)
    with pytest.raises(ValueError, match="not the image size"):
        coco_segmentation_to_rle(compressed, 6, 7)
    assert mask_utils.area(coco_segmentation_to_rle([[1, 1, 2, 2]], 6, 6)) == 0  # degenerate polygon


def test_converter_errors_and_skips(tmp_path, h):
    with pytest.raises(DataError, match="not a readable COCO"):
        convert_coco(tmp_path / "none.json", tmp_path, tmp_path / "out")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(h.random_image(10, 12)).save(images / "a.jpg")
    Image.fromarray(h.random_image(10, 12)).save(images / "wrong.jpg")
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 12},
                       {"id": 2, "file_name": "gone.jpg", "height": 10, "width": 12},
                       {"id": 3, "file_name": "wrong.jpg", "height": 11, "width": 12},
                       {"id": 4, "file_name": "a.jpg", "height": 10, "width": 12}],
            "annotations": [{"id": 7, "image_id": 1, "segmentation": [[1, 1, 6, 1, 6, 6]], "iscrowd": 0},
                            {"id": 8, "image_id": 1, "segmentation": [[0, 0, 1, 1]], "iscrowd": 0},
                            {"id": 9, "image_id": 2, "segmentation": [[1, 1, 6, 1, 6, 6]], "iscrowd": 0}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    counts = convert_coco(tmp_path / "c.json", images, tmp_path / "out")
    assert counts == {"images": 1, "annotations": 1, "empty_skipped": 1, "missing_images": 1, "size_mismatch": 1,
                      "images_without_annotations": 1}
    assert sorted(p.name for p in Path(tmp_path / "out").iterdir()) == ["a.jpg", "a.json"]


def test_max_images_converts_the_first_annotated_images(shared_dir, tmp_path):
    tiny = shared_dir / "data" / "coco_tiny"
    instances = tiny / "annotations" / "instances_val2017.json"
    counts = convert_coco(instances, tiny / "val2017", tmp_path / "out", link=True, max_images=3)
    coco = json.loads(instances.read_text())
    annotated = sorted({a["image_id"] for a in coco["annotations"] if not a.get("iscrowd")})
    written = sorted(json.loads(p.read_text())["image"]["image_id"] for p in (tmp_path / "out").glob("*.json"))
    assert counts["images"] == 3 and written == annotated[:3]
