"""Every kind of bad file: skipped with a logged reason and counted, or raised as DataError; also
through DataLoader workers."""

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from samft.data import BadFile, DataError, SA1BDataset, collate_masks


def _good(h, root, stem="good", image_id=1):
    return h.write_pair(root, stem, h.random_image(40, 50), [h.annotation(1, h.rect(40, 50, 5, 20, 5, 30))],
                        image_id=image_id)


def _truncated(h, root):
    path = _good(h, root, "bad")
    jpg = path.with_suffix(".jpg")
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])


def _not_jpeg(h, root):
    _good(h, root, "bad").with_suffix(".jpg").write_bytes(b"<html>not an image</html>")


def _malformed_json(h, root):
    _good(h, root, "bad").write_text('{"image": {"image_id": 1, "width": 50,')


def _rle_size(h, root):
    ann = h.annotation(1, h.rect(41, 50, 5, 20, 5, 30))
    h.write_pair(root, "bad", h.random_image(40, 50), [ann])


def _rle_runs(h, root):
    ann = h.annotation(1, h.rect(40, 51, 5, 20, 5, 30))
    ann["segmentation"]["size"] = [40, 50]  # runs cover 40x51 pixels
    h.write_pair(root, "bad", h.random_image(40, 50), [ann])


def _outside(h, root):
    h.write_pair(root.parent, "outside", h.random_image(40, 50), [])
    _good(h, root, "bad")
    data = json.loads((root / "bad.json").read_text())
    data["image"]["file_name"] = "../outside.jpg"
    (root / "bad.json").write_text(json.dumps(data))


def _missing_image(h, root):
    _good(h, root, "bad").with_suffix(".jpg").unlink()


def _no_annotations(h, root):
    h.write_pair(root, "bad", h.random_image(40, 50), [])


def _image_size(h, root):
    h.write_pair(root, "bad", h.random_image(40, 50), [h.annotation(1, h.rect(40, 50, 5, 20, 5, 30))])
    data = json.loads((root / "bad.json").read_text())
    data["image"].update(width=60)
    (root / "bad.json").write_text(json.dumps(data))


KINDS = {
    "truncated jpeg": (_truncated, "cannot decode image"),
    "not a jpeg": (_not_jpeg, "cannot decode image"),
    "malformed json": (_malformed_json, "malformed SA-1B json"),
    "rle size": (_rle_size, "differs from the image size"),
    "rle runs": (_rle_runs, "RLE runs cover"),
    "outside": (_outside, "points outside the dataset folder"),
    "missing image": (_missing_image, "missing"),
    "no annotations": (_no_annotations, "annotation list is empty"),
    "image size": (_image_size, "differs"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_file_is_skipped_logged_and_counted_or_raised(kind, tmp_path, h, caplog):
    root = tmp_path / "data"
    _good(h, root, "a_good")
    make, reason = KINDS[kind]
    make(h, root)
    ds = SA1BDataset(root, image_size=64)
    assert len(ds) == 2
    with caplog.at_level(logging.WARNING, logger="samft.data"):
        good, bad = ds[0], ds[1]
    assert "skipped" not in good and good["masks"].shape[0] == 1
    assert reason in bad["skipped"]["reason"] and "bad" in bad["skipped"]["file"]
    assert ds.skipped == 1
    assert any(reason in r.getMessage() and r.name == "samft.data" for r in caplog.records)
    batch = collate_masks([good, bad])
    assert batch.skipped == 1 and batch.images.shape[0] == 1
    strict = SA1BDataset(root, image_size=64, on_error="raise")
    strict[0]
    with pytest.raises(DataError, match=reason) as info:
        strict[1]
    assert "bad." in str(info.value)


def test_collate_of_only_skipped_items_is_an_empty_batch(tmp_path, h):
    _no_annotations(h, tmp_path)
    ds = SA1BDataset(tmp_path, image_size=32, with_dist_maps=True)
    batch = collate_masks([ds[0], ds[0]])
    assert batch.skipped == 2 and batch.images.shape == (0, 3, 32, 32)
    assert batch.masks.shape == (0, 32, 32) and batch.dist_maps.shape == (0, 32, 32)
    assert batch.points.shape == (0, 1, 2) and batch.meta == []


def test_dataloader_workers_skip_and_count(tmp_path, h):
    root = tmp_path / "data"
    for i in range(5):
        _good(h, root, f"g{i}", image_id=i)
    _truncated(h, root)
    ds = SA1BDataset(root, image_size=32)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_masks)
    batches = list(loader)
    assert sum(b.skipped for b in batches) == 1
    assert sum(b.images.shape[0] for b in batches) == 5
    assert ds.skipped == 1  # the workers' counts reach the main process


def test_dataloader_worker_error_keeps_its_message(tmp_path, h):
    root = tmp_path / "data"
    _good(h, root, "a_good")
    _malformed_json(h, root)
    ds = SA1BDataset(root, image_size=32, on_error="raise")
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_masks)
    with pytest.raises(DataError) as info:
        list(loader)
    message = str(info.value)
    assert "malformed SA-1B json" in message and "bad.json" in message
    assert "Traceback" not in message and "\n" not in message
    assert "DataLoader worker process" in message


def test_persistent_workers_follow_set_epoch(tmp_path, h):
    anns = [h.annotation(k, h.rect(32, 32, k, k + 2, 0, 30)) for k in range(15)]
    h.write_pair(tmp_path, "many", h.random_image(32, 32), anns)
    ds = SA1BDataset(tmp_path, image_size=32, max_masks=3)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_masks, persistent_workers=True)
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        seen.append([b.meta[0]["annotation_ids"] for b in loader][0])
        ds_copy_ids = ds[0]["meta"]["annotation_ids"]
        assert seen[-1] == ds_copy_ids  # workers use the epoch set in the main process
    assert seen[0] != seen[1] or seen[1] != seen[2]


def test_bad_file_error_survives_pickling():
    import pickle

    err = BadFile("/data/x.json", "malformed SA-1B json (boom)")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


def test_dataset_can_be_deep_copied(tmp_path, h):
    import copy

    _good(h, tmp_path)
    ds = SA1BDataset(tmp_path, image_size=32)
    ds.set_epoch(3)
    clone = copy.deepcopy(ds)
    assert clone.epoch == 3 and torch.equal(clone[0]["masks"], ds[0]["masks"])
    assert np.array_equal(clone.eligible[0], ds.eligible[0])
