"""The readers behind DATASETS: coco on real photos against pycocotools, label images rendered from them,
SA-1B tar shards against the extracted folder, crops of large images, and each reader's bad input."""

import json
import os
import shutil
import tarfile
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from samft.data import (
    CocoDataset,
    DataError,
    LabelImageDataset,
    SA1BDataset,
    SA1BTarDataset,
    collate_masks,
)
from samft.data.base import assign_to_tiles, tile_windows
from samft.registry import DATASETS


def quiet_coco(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))


def all_masks(ds, index):
    """Every annotation's mask of item ``index`` at its original size, as the reader decodes it."""
    rec = ds.records[index]
    loaded = ds._load(index, np.arange(rec["n"]))
    return loaded, loaded.masks.decode((rec["height"], rec["width"]))


def test_registry_lists_the_four_readers_with_their_path_options():
    assert {"sa1b", "sa1b_tar", "coco", "label_images"} <= set(DATASETS.names())
    assert DATASETS.info("coco")["paths"] == ("annotations", "images")
    assert DATASETS.get("sa1b_tar") is SA1BTarDataset


# -- coco ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["val2017", "train2017"])
def test_coco_reader_masks_equal_pycocotools_on_every_annotation(shared_dir, split):
    root = shared_dir / "data" / "coco_tiny"
    ann_file = root / "annotations" / f"instances_{split}.json"
    coco = quiet_coco(ann_file)
    ds = CocoDataset(ann_file, root / split, image_size=1024, keep_crowd=True)
    assert len(ds) == len([i for i in coco.getImgIds() if coco.getAnnIds(imgIds=i)])
    checked = crowds = 0
    for i, rec in enumerate(ds.records):
        loaded, masks = all_masks(ds, i)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=rec["image_id"]))
        assert loaded.annotation_ids == [a["id"] for a in anns]
        for ann, mask in zip(anns, masks):
            np.testing.assert_array_equal(mask, coco.annToMask(ann), err_msg=f"annotation {ann['id']}")
            checked += 1
            crowds += ann["iscrowd"]
        if any(a["iscrowd"] for a in anns):  # crowd="ignore": their union is the ignored area
            union = np.max([coco.annToMask(a) for a in anns if a["iscrowd"]], axis=0)
            np.testing.assert_array_equal(loaded.ignore.decode(masks.shape[1:]).max(0), union)
    assert checked == len(coco.getAnnIds()) and crowds >= 6


def test_coco_items_at_native_size_and_crowds_as_ignore_area(shared_dir):
    root = shared_dir / "data" / "coco_tiny"
    ann_file = root / "annotations" / "instances_val2017.json"
    coco = quiet_coco(ann_file)
    ds = CocoDataset(ann_file, root / "val2017", image_size=640, max_masks=64, prompt="point", max_area_frac=1.0)
    with_crowd = next(i for i, r in enumerate(ds.records) if any(r["crowd"]) and max(r["height"], r["width"]) == 640)
    item = ds[with_crowd]
    rec = ds.records[with_crowd]
    h, w = rec["height"], rec["width"]
    assert item["meta"]["input_size"] == (h, w)
    by_id = {a["id"]: a for a in coco.loadAnns(coco.getAnnIds(imgIds=rec["image_id"]))}
    assert not any(by_id[i]["iscrowd"] for i in item["meta"]["annotation_ids"])  # crowds are never targets
    for ann_id, mask in zip(item["meta"]["annotation_ids"], item["masks"]):
        np.testing.assert_array_equal(mask[:h, :w].numpy(), coco.annToMask(by_id[ann_id]).astype(bool))
    union = np.max([coco.annToMask(a) for a in by_id.values() if a["iscrowd"]], axis=0).astype(bool)
    np.testing.assert_array_equal(item["ignore"][:h, :w].numpy(), union)
    batch = collate_masks([item, ds[0]])
    assert batch.ignore.shape == (2, 640, 640) and batch.ignore[0].any()
    dropped = CocoDataset(ann_file, root / "val2017", image_size=640, crowd="drop")
    assert "ignore" not in dropped[with_crowd]


def test_coco_ignore_area_is_left_out_of_the_loss_targets(shared_dir):
    from samft.engine.step import loss_targets

    root = shared_dir / "data" / "coco_tiny"
    ds = CocoDataset(root / "annotations" / "instances_val2017.json", root / "val2017", image_size=256)
    i = next(i for i, r in enumerate(ds.records) if any(r["crowd"]))
    batch = collate_masks([ds[i]])
    targets = loss_targets(batch, 256)
    assert not targets["valid"][:, batch.ignore[0]].any()
    assert targets["valid"][:, batch.valid[0] & ~batch.ignore[0]].all()


def _coco_file(tmp_path, images, annotations):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return path


def _photo(folder, name, h=40, w=60):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(folder / name)


def test_coco_compressed_rle_and_polygons_hand_made(tmp_path):
    m = np.zeros((40, 60), np.uint8, order="F")
    m[5:15, 10:30] = 1
    rle = mask_utils.encode(m)
    _photo(tmp_path / "img", "a.jpg")
    ann = _coco_file(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}], [
        {"id": 1, "image_id": 1, "iscrowd": 0, "area": 200, "segmentation": {"size": [40, 60],
                                                                              "counts": rle["counts"].decode()}},
        {"id": 2, "image_id": 1, "iscrowd": 0, "area": 100, "segmentation": [[30, 20, 40, 20, 40, 30, 30, 30]]},
    ])
    ds = CocoDataset(ann, tmp_path / "img", image_size=64)
    _, masks = all_masks(ds, 0)
    np.testing.assert_array_equal(masks[0], m)
    want = mask_utils.decode(mask_utils.frPyObjects([[30, 20, 40, 20, 40, 30, 30, 30]], 40, 60))[:, :, 0]
    np.testing.assert_array_equal(masks[1], want)


def test_coco_bad_input(tmp_path):
    (tmp_path / "img").mkdir()
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(DataError, match="empty.json is not a readable COCO instances file"):
        CocoDataset(empty, tmp_path / "img")
    none = _coco_file(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}], [])
    with pytest.raises(DataError, match="has no image with instance annotations"):
        CocoDataset(none, tmp_path / "img")
    _photo(tmp_path / "img", "a.jpg")
    ann = _coco_file(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60},
                                {"id": 2, "file_name": "gone.jpg", "height": 40, "width": 60},
                                {"id": 3, "file_name": "a.jpg", "height": 40, "width": 60}], [
        {"id": 1, "image_id": 1, "iscrowd": 0, "area": 100, "segmentation": [[1, 1, 20, 1, 20, 20]]},
        {"id": 2, "image_id": 2, "iscrowd": 0, "area": 100, "segmentation": [[1, 1, 20, 1, 20, 20]]},
        {"id": 3, "image_id": 3, "iscrowd": 0, "area": 100, "segmentation": [[1, 1, 20, 1, 20]]},  # odd length
    ])
    ds = CocoDataset(ann, tmp_path / "img", image_size=64)
    assert "masks" in ds[0]
    gone = ds[1]["skipped"]
    assert gone["reason"] == "image file is missing" and gone["file"].endswith("gone.jpg")
    assert "annotation 3: segmentation is neither polygons" in ds[2]["skipped"]["reason"]
    assert ds.skipped == 2
    strict = CocoDataset(ann, tmp_path / "img", image_size=64, on_error="raise")
    with pytest.raises(DataError, match=r"instances.json \(image 3, a.jpg\): annotation 3"):
        strict[2]
    with pytest.raises(DataError, match="crowd must be one of ignore, drop"):
        CocoDataset(ann, tmp_path / "img", crowd="keep")


# -- label images ---------------------------------------------------------------------------------------
def render_labels(coco, image_id, h, w):
    """An instance label image of one COCO photo: non-crowd instances painted in order, ids 1..K."""
    labels = np.zeros((h, w), np.uint16)
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
    for k, ann in enumerate(anns, start=1):
        labels[coco.annToMask(ann) > 0] = k
    return labels


@pytest.fixture
def label_folders(shared_dir, tmp_path):
    """The first 6 coco_tiny val photos with rendered label images: PNG 16-bit, PNG 8-bit and TIFF."""
    root = shared_dir / "data" / "coco_tiny"
    coco = quiet_coco(root / "annotations" / "instances_val2017.json")
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rendered = {}
    for n, info in enumerate(coco.loadImgs(sorted(coco.getImgIds())[:6])):
        stem = info["file_name"].rsplit(".", 1)[0]
        shutil.copy(root / "val2017" / info["file_name"], images / info["file_name"])
        lab = render_labels(coco, info["id"], info["height"], info["width"])
        rendered[stem] = lab
        if n % 3 == 0:
            Image.fromarray(lab).save(labels / f"{stem}.png")  # 16-bit PNG (mode I;16)
        elif n % 3 == 1:
            Image.fromarray(lab.astype(np.uint8)).save(labels / f"{stem}.png")
        else:
            tifffile.imwrite(labels / f"{stem}.tif", lab)
    return images, labels, rendered


def test_label_images_give_every_instance_of_the_rendered_labels(label_folders):
    images, labels, rendered = label_folders
    ds = LabelImageDataset(images, labels, image_size=640, max_area_frac=1.0)
    assert len(ds) == 6 and not ds.index_reused
    for i, rec in enumerate(ds.records):
        lab = rendered[rec["image_id"]]
        ids = [v for v in np.unique(lab) if v]
        assert rec["ids"] == ids and rec["area"] == [float((lab == v).sum()) for v in ids]
        loaded, masks = all_masks(ds, i)
        for v, mask in zip(ids, masks):
            np.testing.assert_array_equal(mask, lab == v)
    item = ds[0]
    assert item["masks"].shape[1:] == (640, 640) and item["image"].dtype == torch.uint8
    again = LabelImageDataset(images, labels, image_size=640)
    assert again.index_reused


def test_split_components_turns_semantic_labels_into_instances(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _photo(images, "s.png", 30, 40)
    lab = np.zeros((30, 40), np.uint8)
    lab[2:6, 2:8] = 3  # two blobs of class 3 ...
    lab[20:25, 30:38] = 3
    lab[10:14, 10:12] = 5  # ... and one of class 5; diagonal neighbours join (8-connectivity)
    lab[14, 12] = 5
    labels.mkdir()
    Image.fromarray(lab).save(labels / "s.png")
    plain = LabelImageDataset(images, labels, image_size=64)
    assert plain.records[0]["area"] == [64.0, 9.0]
    split = LabelImageDataset(images, labels, image_size=64, split_components=True)
    assert split.records[0]["area"] == [24.0, 40.0, 9.0]
    _, masks = all_masks(split, 0)
    np.testing.assert_array_equal(masks[1], np.pad(np.ones((5, 8), np.uint8), ((20, 5), (30, 2))))


def test_label_images_bad_input(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "lbl"
    for stem in ("ok", "small", "text", "missing", "rgb"):
        _photo(images, f"{stem}.jpg", 30, 40)
    labels.mkdir()
    good = np.zeros((30, 40), np.uint8)
    good[5:10, 5:10] = 1
    Image.fromarray(good).save(labels / "ok.png")
    Image.fromarray(good[:20]).save(labels / "small.png")
    (labels / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(labels / "rgb.png")
    ds = LabelImageDataset(images, labels, image_size=64)
    reasons = {}
    for i, rec in enumerate(ds.records):
        item = ds[i]
        reasons[rec["image_id"]] = item["skipped"]["reason"] if "skipped" in item else None
    assert reasons["ok"] is None
    assert reasons["small"] == "label image small.png is 40x20 but its image is 40x30"
    assert reasons["text"].startswith("cannot decode label image")
    assert reasons["missing"].startswith("no label image missing.png/.tif/.tiff in")
    assert reasons["rgb"].startswith("label image has mode RGB (colour)")
    assert ds.skipped == 4
    strict = LabelImageDataset(images, labels, image_size=64, on_error="raise")
    with pytest.raises(DataError, match=r"lbl/small.png: label image small.png is 40x20"):
        strict[[r["image_id"] for r in strict.records].index("small")]
    with pytest.raises(DataError, match="the labels folder .* does not exist"):
        LabelImageDataset(images, tmp_path / "nope")


# -- SA-1B tar shards ---------------------------------------------------------------------------------
def make_tar(folder, tar_path, names=None):
    with tarfile.open(tar_path, "w") as tf:
        for p in sorted(folder.iterdir()):
            if not p.name.startswith(".") and (names is None or p.name in names):
                tf.add(p, arcname=p.name)
    return tar_path


def assert_same_items(a, b):
    assert a.keys() == b.keys()
    for key in ("image", "masks", "valid", "points", "point_labels"):
        assert torch.equal(a[key], b[key]), key
    assert a["meta"]["annotation_ids"] == b["meta"]["annotation_ids"]


def test_tar_items_equal_the_extracted_folder_and_the_index_is_cached(sa1b_folder, tmp_path):
    root, _ = sa1b_folder
    tar = make_tar(root, tmp_path / "sa_000000.tar")
    folder = SA1BDataset(root, image_size=96, max_masks=2, seed=3)
    shards = SA1BTarDataset(tar, image_size=96, max_masks=2, seed=3)
    assert shards.index_reused == [False] and (tmp_path / "sa_000000.tar.samft_index.json").is_file()
    assert len(shards) == len(folder) == 3
    for epoch in (0, 1):
        folder.set_epoch(epoch)
        shards.set_epoch(epoch)
        for i in range(3):
            assert_same_items(folder[i], shards[i])
    assert shards[0]["meta"]["file"].endswith("sa_000000.tar:a.jpg")
    assert SA1BTarDataset(tmp_path, image_size=96).index_reused == [True]  # a folder of tars; cached index
    os.utime(tar, ns=(1, 1))  # a changed tar (other mtime) is indexed again
    assert SA1BTarDataset(tar, image_size=96).index_reused == [False]


def test_several_tars_workers_and_ranks_read_the_same_items(sa1b_folder, tmp_path):
    root, _ = sa1b_folder
    first = make_tar(root, tmp_path / "sa_000000.tar", {"a.jpg", "a.json", "b.jpg", "b.json"})
    make_tar(root, tmp_path / "sa_000001.tar", {"c.jpg", "c.json"})
    shards = SA1BTarDataset([first, str(tmp_path / "sa_000001.tar")], image_size=64, max_masks=2)
    assert [r["json"] for r in shards.records] == ["sa_000000.tar:a.json", "sa_000000.tar:b.json",
                                                   "sa_000001.tar:c.json"]
    own = [shards[i] for i in range(3)]
    loader = DataLoader(shards, batch_size=1, num_workers=2, collate_fn=collate_masks)
    for item, batch in zip(own, loader):
        assert torch.equal(item["masks"], batch.masks) and torch.equal(item["image"], batch.images[0])
    with pytest.raises(DataError, match="is not a tar file, a folder of"):
        SA1BTarDataset(tmp_path / "sa_00009*.tar")


def test_truncated_tar_and_missing_members_are_skipped_or_raised_naming_tar_and_member(sa1b_folder, tmp_path):
    root, _ = sa1b_folder
    whole = make_tar(root, tmp_path / "whole.tar")
    with tarfile.open(whole) as tf:
        last, image = tf.getmember("c.json"), tf.getmember("c.jpg")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: last.offset_data + last.size // 2])  # the last member cut in the middle
    cut_image = tmp_path / "cut_image.tar"
    cut_image.write_bytes(whole.read_bytes()[: image.offset_data + image.size // 2])  # c.jpg cut, c.json gone
    missing = make_tar(root, tmp_path / "missing.tar", {"a.json", "b.jpg", "c.jpg", "c.json"})  # no a.jpg, no b.json
    ds = SA1BTarDataset([cut, cut_image, missing], image_size=64)
    reasons = {r["json"]: ds[i].get("skipped", {}).get("reason") for i, r in enumerate(ds.records)}
    assert reasons["cut.tar:c.json"] == "member is cut off: the tar is truncated"
    assert reasons["cut_image.tar:c.jpg"].startswith("json member c.json is missing from the tar (tar is damaged "
                                                     "after 5 members")
    assert reasons["missing.tar:a.json"] == "image member a.jpg is missing from the tar"
    assert reasons["missing.tar:b.jpg"] == "json member b.json is missing from the tar"
    assert reasons["cut.tar:a.json"] is None and reasons["missing.tar:c.json"] is None
    assert ds.skipped == 4
    strict = SA1BTarDataset([cut], image_size=64, on_error="raise")
    with pytest.raises(DataError, match=r"cut.tar:c.json: member is cut off"):
        strict[2]
    headers_cut = tmp_path / "headers_cut.tar"  # cut inside a member header: the members before it are used
    headers_cut.write_bytes(whole.read_bytes()[: last.offset + 100])
    partial = SA1BTarDataset(headers_cut, image_size=64)
    assert [r["json"] for r in partial.records] == ["headers_cut.tar:a.json", "headers_cut.tar:b.json",
                                                    "headers_cut.tar:c.jpg"]
    assert "masks" in partial[0] and "masks" in partial[1] and "skipped" in partial[2]
    not_tar = tmp_path / "notes.tar"
    not_tar.write_text("hello" * 200)
    with pytest.raises(DataError, match="notes.tar is not a readable tar file"):
        SA1BTarDataset(not_tar)


# -- crops and tiles ------------------------------------------------------------------------------------
@pytest.fixture
def large_folder(tmp_path, h):
    """One 300x500 image with three rectangles far apart (the crops tests use image_size 64)."""
    root = tmp_path / "large"
    masks = [h.rect(300, 500, 10, 40, 10, 50), h.rect(300, 500, 200, 260, 400, 480),
             h.rect(300, 500, 120, 170, 220, 300)]
    h.write_pair(root, "big", h.random_image(300, 500), [h.annotation(k + 1, m) for k, m in enumerate(masks)])
    return root, masks


def test_training_crops_hold_masks_cut_to_the_crop_and_prompts_inside(large_folder):
    root, masks = large_folder
    ds = SA1BDataset(root, image_size=64, max_masks=8, prompt="point", crop={"multiple": 2.0, "mask_prob": 1.0})
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        x0, y0, w, h = item["meta"]["crop"]
        assert (w, h) == (128, 128) and item["meta"]["input_size"] == (64, 64)
        for ann_id, mask, pts in zip(item["meta"]["annotation_ids"], item["masks"], item["points"]):
            cut = masks[ann_id - 1][y0:y0 + 128, x0:x0 + 128].astype(np.uint8)
            want = np.asarray(Image.fromarray(cut * 255).resize((64, 64), Image.BILINEAR)) >= 128
            assert (mask[:64, :64].numpy() != want).mean() < 0.03  # the cut mask, resized (rounding at edges)
            x, y = pts[0].long()
            assert mask[y, x]
            seen.add(ann_id)
    assert seen == {1, 2, 3}


def test_crops_at_full_resolution_are_exact_and_small_images_stay_whole(large_folder, sa1b_folder):
    root, masks = large_folder
    ds = SA1BDataset(root, image_size=128, max_masks=8, crop={"multiple": 1.0, "mask_prob": 1.0})
    item = ds[0]
    x0, y0, w, h = item["meta"]["crop"]
    for ann_id, mask in zip(item["meta"]["annotation_ids"], item["masks"]):
        np.testing.assert_array_equal(mask.numpy(), masks[ann_id - 1][y0:y0 + 128, x0:x0 + 128])
    small, _ = sa1b_folder  # 80 px images: no crop at image_size 128
    assert SA1BDataset(small, image_size=128, crop={"multiple": 1.0})[0]["meta"]["crop"] is None


def test_evaluation_tiles_score_every_mask_once(large_folder):
    root, masks = large_folder
    ds = SA1BDataset(root, image_size=64, max_masks=16, prompt=None, crop={"multiple": 2.0, "overlap": 0.25})
    item = ds[0]
    windows = tile_windows(300, 500, 128, 0.25)
    assert len(windows) == 3 * 5
    tiles = item["tiles"]
    ids = [i for t in tiles for i in t["meta"]["annotation_ids"]]
    assert sorted(ids) == [1, 2, 3]
    for t in tiles:
        x0, y0, w, h = t["meta"]["crop"]
        for ann_id in t["meta"]["annotation_ids"]:
            ys, xs = np.nonzero(masks[ann_id - 1])
            assert x0 <= xs.min() and xs.max() < x0 + w and y0 <= ys.min() and ys.max() < y0 + h
    batch = collate_masks([item])
    assert batch.num_images == len(tiles) and batch.num_masks == 3


def test_tile_assignment_prefers_the_tile_holding_most_of_the_box():
    windows = [(0, 0, 100, 100), (75, 0, 100, 100)]
    boxes = np.array([[10, 10, 20, 20], [80, 10, 10, 10], [60, 10, 60, 10], [150, 10, 20, 10]], float)
    # inside both: the nearer centre; half in each: the nearer centre; more in the second; only the second
    np.testing.assert_array_equal(assign_to_tiles(boxes, windows), [0, 0, 1, 1])


def test_16_bit_grayscale_images_are_stretched_not_clipped(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "lbl"
    images.mkdir()
    labels.mkdir()
    raw = np.zeros((20, 30), np.uint16)
    raw[:, 15:] = 4000
    raw[5:10, 5:10] = 1000
    Image.fromarray(raw).save(images / "m.png")  # a 16-bit micrograph (values far above 255)
    lab = np.zeros((20, 30), np.uint16)
    lab[5:10, 5:10] = 1
    Image.fromarray(lab).save(labels / "m.png")
    item = LabelImageDataset(images, labels, image_size=30)[0]
    image = item["image"][0, :20, :30].numpy()
    assert image[0, 0] == 0 and image[0, 20] == 255 and image[6, 6] == round(1000 * 255 / 4000)


def test_tar_of_converted_coco_tiny_photos_equals_the_folder(shared_dir, tmp_path):
    from samft.data.coco import convert_coco

    root = shared_dir / "data" / "coco_tiny"
    folder = tmp_path / "sa1b"
    convert_coco(root / "annotations" / "instances_val2017.json", root / "val2017", folder, max_images=10)
    tar = make_tar(folder, tmp_path / "sa_000000.tar")
    a = SA1BDataset(folder, image_size=256, max_masks=4, seed=1)
    b = SA1BTarDataset(tar, image_size=256, max_masks=4, seed=1)
    assert len(a) == len(b) == 10
    for i in range(10):
        assert_same_items(a[i], b[i])


def test_empty_json_member_is_skipped_naming_it(sa1b_folder, tmp_path):
    root, _ = sa1b_folder
    (root / "b.json").write_text("{}")
    ds = SA1BTarDataset(make_tar(root, tmp_path / "t.tar"), image_size=64)
    reason = ds[1]["skipped"]["reason"]
    assert reason.startswith("malformed SA-1B json (KeyError") and ds[1]["skipped"]["file"].endswith("t.tar:b.json")


def test_label_mask_boxes_match_the_pixels():
    from samft.data.base import LabelMasks

    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:9] = 4
    labels[10:20, 0:2] = 1
    boxes = LabelMasks(labels, np.array([4, 1, 7])).boxes()
    np.testing.assert_array_equal(boxes, [[3, 2, 6, 3], [0, 10, 2, 10], [0, 0, 0, 0]])


def test_label_image_crops_cut_the_instances_exactly(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _photo(images, "big.png", 300, 500)
    lab = np.zeros((300, 500), np.uint16)
    lab[10:60, 20:90] = 3
    lab[200:290, 380:470] = 9
    labels.mkdir()
    Image.fromarray(lab).save(labels / "big.png")
    ds = LabelImageDataset(images, labels, image_size=128, crop={"multiple": 1.0, "mask_prob": 1.0})
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[0]
        x0, y0, w, h = item["meta"]["crop"]
        for ann_id, mask in zip(item["meta"]["annotation_ids"], item["masks"]):
            np.testing.assert_array_equal(mask.numpy(), lab[y0:y0 + 128, x0:x0 + 128] == ann_id)
