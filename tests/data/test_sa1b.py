"""The reader against masks encoded here, filters, sampling and collate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from samft.data import DataError, SA1BDataset, collate_masks
from samft.data.demo import make_demo_dataset


def test_reader_returns_the_encoded_masks_exactly_at_native_size(sa1b_folder):
    root, masks = sa1b_folder
    ds = SA1BDataset(root, image_size=80, max_masks=64, prompt="point")
    item = ds[0]  # a.json: 60x80, longest side already 80: no resampling
    order = np.argsort(item["meta"]["annotation_ids"])
    assert item["meta"]["annotation_ids"] == sorted(item["meta"]["annotation_ids"])
    got = item["masks"].numpy()[order]
    want = np.stack([np.pad(m, ((0, 20), (0, 0))) for m in masks["a"]])
    np.testing.assert_array_equal(got, want)
    assert item["masks"].dtype == torch.bool and item["image"].dtype == torch.uint8
    assert item["image"].shape == (3, 80, 80)
    jpeg = np.asarray(Image.open(root / "a.jpg").convert("RGB"))
    np.testing.assert_array_equal(item["image"][:, :60].permute(1, 2, 0).numpy(), jpeg)
    assert item["image"][:, 60:].sum() == 0
    assert item["valid"][:60].all() and not item["valid"][60:].any()
    assert item["meta"]["original_size"] == (60, 80) and item["meta"]["input_size"] == (60, 80)
    assert item["meta"]["file"].endswith("a.jpg") and item["meta"]["image_id"] == 1


def test_resize_longest_side_and_pad(sa1b_folder):
    root, masks = sa1b_folder
    ds = SA1BDataset(root, image_size=160, max_masks=64)
    item = ds[1]  # b: 80x60 -> 160x120
    assert item["meta"]["input_size"] == (160, 120)
    assert item["valid"][:, :120].all() and not item["valid"][:, 120:].any()
    big = item["masks"][0].numpy()
    np.testing.assert_array_equal(big[:160, :120], np.kron(masks["b"][0], np.ones((2, 2), bool)))
    assert not item["masks"][:, :, 120:].any()


def test_points_lie_inside_their_masks_and_boxes_bound_them(sa1b_folder):
    root, _ = sa1b_folder
    for prompt in ("point", "box", "point_or_box"):
        ds = SA1BDataset(root, image_size=80, prompt=prompt, box_noise=0.0)
        for i in range(len(ds)):
            item = ds[i]
            for mask, pts, labels in zip(item["masks"], item["points"], item["point_labels"]):
                if labels[0] == 1:
                    x, y = pts[0].long()
                    assert mask[y, x] and (labels[1:] == -1).all()
                else:
                    assert labels.tolist() == [2, 3]
                    ys, xs = torch.nonzero(mask, as_tuple=True)
                    assert pts.tolist() == [[xs.min().item(), ys.min().item()], [xs.max().item(), ys.max().item()]]
        if prompt == "point":
            assert item["points"].shape[1] == 1


def test_filters(tmp_path, h):
    H, W = 40, 50
    anns = [
        h.annotation(1, h.rect(H, W, 0, 10, 0, 10)),                               # kept
        h.annotation(2, h.rect(H, W, 0, 2, 0, 2)),                                 # area 4 < min_area
        h.annotation(3, h.rect(H, W, 0, 40, 0, 46)),                               # 92% of the image
        h.annotation(4, h.rect(H, W, 20, 30, 20, 30), predicted_iou=0.5),          # low predicted iou
        h.annotation(5, h.rect(H, W, 20, 30, 30, 40), stability_score=0.6),        # low stability
        h.annotation(6, h.rect(H, W, 30, 40, 0, 10), iscrowd=1),                   # crowd
        h.annotation(7, np.zeros((H, W), bool)),                                 # area 0
        {**h.annotation(8, h.rect(H, W, 10, 20, 10, 20)), "predicted_iou": None},  # no score: kept
    ]
    h.write_pair(tmp_path, "x", h.random_image(H, W), anns)
    ds = SA1BDataset(tmp_path, image_size=64, min_area=5, min_predicted_iou=0.8, min_stability=0.8)
    assert sorted(ds[0]["meta"]["annotation_ids"]) == [1, 8]
    loose = SA1BDataset(tmp_path, image_size=64, max_area_frac=1.0, keep_crowd=True)
    assert sorted(loose[0]["meta"]["annotation_ids"]) == [1, 2, 3, 4, 5, 6, 8]


def test_max_masks_sampling_is_deterministic_per_seed_and_epoch(tmp_path, h):
    anns = [h.annotation(k, h.rect(32, 32, k, k + 2, 0, 30)) for k in range(30)]
    h.write_pair(tmp_path, "many", h.random_image(32, 32), anns)
    ds = SA1BDataset(tmp_path, image_size=32, max_masks=5)
    first = ds[0]["meta"]["annotation_ids"]
    assert len(first) == 5 and len(set(first)) == 5
    assert ds[0]["meta"]["annotation_ids"] == first
    assert torch.equal(ds[0]["points"], ds[0]["points"])
    ds.set_epoch(1)
    assert ds.epoch == 1 and ds[0]["meta"]["annotation_ids"] != first
    ds.set_epoch(0)
    assert ds[0]["meta"]["annotation_ids"] == first
    other = SA1BDataset(tmp_path, image_size=32, max_masks=5, seed=1)
    assert other[0]["meta"]["annotation_ids"] != first
    seen = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        seen |= set(ds[0]["meta"]["annotation_ids"])
    assert len(seen) > 20  # every epoch draws a new random subset


def test_collate_with_varying_numbers_of_masks_and_prompts(sa1b_folder):
    root, masks = sa1b_folder
    points = SA1BDataset(root, image_size=64, prompt="point")
    boxes = SA1BDataset(root, image_size=64, prompt="box")
    items = [points[0], boxes[1], points[2]]
    batch = collate_masks(items)
    counts = [len(masks[s]) for s in "abc"]
    n = sum(counts)
    assert batch.images.shape == (3, 3, 64, 64) and batch.images.dtype == torch.uint8
    assert batch.masks.shape == (n, 64, 64) and batch.valid.shape == (3, 64, 64)
    assert batch.points.shape == (n, 2, 2) and batch.point_labels.shape == (n, 2)
    assert batch.image_index.tolist() == [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
    labels = batch.point_labels
    assert (labels[:3, 1] == -1).all() and (labels[3:5] == torch.tensor([2, 3])).all()
    assert torch.equal(batch.masks[:3], items[0]["masks"])
    assert batch.skipped == 0 and len(batch.meta) == 3 and batch.dist_maps is None
    assert batch.points[0, 1].tolist() == [0.0, 0.0]


def test_missing_or_empty_folder_is_one_paragraph_with_the_fix(tmp_path):
    with pytest.raises(DataError, match="make_demo_data.py") as info:
        SA1BDataset(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no <id>.json") as info:
        SA1BDataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"prompt": "boxes"}, "prompt"), ({"box_prob": 1.5}, "box_prob"), ({"max_masks": 0}, "max_masks"),
    ({"on_error": "ignore"}, "on_error"), ({"max_area_frac": 0}, "max_area_frac"),
])
def test_bad_settings_are_named(sa1b_folder, kwargs, fragment):
    with pytest.raises(DataError, match=fragment):
        SA1BDataset(sa1b_folder[0], **kwargs)


def test_demo_data_is_valid_sa1b_and_idempotent(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", train_images=3, val_images=1, size=(96, 64), seed=0)
    files = sorted(p.name for p in (root / "train").iterdir())
    assert files == ["sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json", "sa_3.jpg", "sa_3.json"]
    assert sorted(p.name for p in (root / "val").iterdir()) == ["sa_100001.jpg", "sa_100001.json"]
    record = json.loads((root / "train" / "sa_1.json").read_text())
    assert record["image"] == {"image_id": 1, "width": 96, "height": 64, "file_name": "sa_1.jpg"}
    ann = record["annotations"][0]
    assert {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score", "crop_box",
            "point_coords"} <= set(ann)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.j*")}
    make_demo_dataset(tmp_path / "demo", train_images=3, val_images=1, size=(96, 64), seed=0)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.j*")} == mtimes
    before = (root / "train" / "sa_1.jpg").read_bytes()
    make_demo_dataset(tmp_path / "demo", train_images=2, val_images=1, size=(96, 64), seed=1)
    assert not (root / "train" / "sa_3.json").exists()
    assert (root / "train" / "sa_1.jpg").read_bytes() != before
    ds = SA1BDataset(root / "train", image_size=96)
    assert all(ds[i]["masks"].shape[0] >= 1 for i in range(len(ds)))
