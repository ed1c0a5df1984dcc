"""The dataset index: built once, reused while the folder is unchanged, refreshed when it changes."""

import json
import os

import pytest

from samft.data import SA1BDataset
from samft.data.index import INDEX_NAME, load_index


def _parsed(monkeypatch):
    """Record which jsons the index parses."""
    import samft.data.index as index

    calls = []
    original = index.parse_record

    def spy(root, name, text):
        calls.append(name)
        return original(root, name, text)

    monkeypatch.setattr(index, "parse_record", spy)
    return calls


def test_index_is_reused_and_refreshed_incrementally(sa1b_folder, monkeypatch, h):
    root, masks = sa1b_folder
    calls = _parsed(monkeypatch)
    records, reused = load_index(root)
    assert not reused and sorted(calls) == ["a.json", "b.json", "c.json"]
    assert (root / INDEX_NAME).is_file()
    assert [r["n"] for r in records] == [3, 2, 1]
    assert records[0]["area"] == [float(m.sum()) for m in masks["a"]]
    assert records[0]["height"] == 60 and records[0]["width"] == 80 and records[0]["error"] is None

    calls.clear()
    again, reused = load_index(root)
    assert reused and calls == [] and again == records

    # a changed json (new mtime and size) is parsed again; the others are reused
    h.write_pair(root, "b", h.random_image(80, 60), [h.annotation(1, h.rect(80, 60, 0, 9, 0, 9))])
    calls.clear()
    records, reused = load_index(root)
    assert not reused and calls == ["b.json"] and records[1]["n"] == 1

    # a new pair and a removed pair change the listing
    h.write_pair(root, "d", h.random_image(20, 20), [h.annotation(1, h.rect(20, 20, 0, 9, 0, 9))])
    (root / "a.json").unlink()
    calls.clear()
    records, reused = load_index(root)
    assert calls == ["d.json"] and [r["json"] for r in records] == ["b.json", "c.json", "d.json"]


def test_index_notices_same_size_rewrites_through_mtime(sa1b_folder, monkeypatch):
    root, _ = sa1b_folder
    load_index(root)
    path = root / "c.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["predicted_iou"] = 0.12  # same length as 0.95
    path.write_text(json.dumps(data))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    calls = _parsed(monkeypatch)
    records, reused = load_index(root)
    assert not reused and calls == ["c.json"] and records[2]["predicted_iou"] == [0.12]


def test_image_changes_invalidate_the_key(sa1b_folder):
    root, _ = sa1b_folder
    load_index(root)
    (root / "c.jpg").unlink()
    records, reused = load_index(root)
    assert not reused and "missing" in records[2]["error"]


def test_read_only_folder_keeps_its_index_in_the_user_cache(sa1b_folder, tmp_path, monkeypatch):
    root, _ = sa1b_folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    _, reused = load_index(root)
    assert not reused and not (root / INDEX_NAME).exists()
    assert len(list((tmp_path / "cache" / "samft" / "index").glob("*.json"))) == 1
    _, reused = load_index(root)
    assert reused


def test_explicit_index_path_and_corrupt_index(sa1b_folder, tmp_path):
    root, _ = sa1b_folder
    path = tmp_path / "idx.json"
    load_index(root, index_path=path)
    path.write_text("{broken")
    records, reused = load_index(root, index_path=path)
    assert not reused and len(records) == 3


def test_parallel_index_build_matches_serial(tmp_path, h):
    root = tmp_path / "many"
    for i in range(260):  # the pool is used from 256 files on
        h.write_pair(root, f"img{i:03d}", h.random_image(8, 8, i), [h.annotation(i, h.rect(8, 8, 0, 1 + i % 7, 0, 4))])
    parallel, _ = load_index(root, index_path=tmp_path / "p.json", workers=2, progress=False)
    serial, _ = load_index(root, index_path=tmp_path / "s.json", workers=0, progress=False)
    assert parallel == serial and parallel[5]["area"] == [24.0]


def test_dataset_uses_the_index_for_filters(sa1b_folder):
    root, _ = sa1b_folder
    first = SA1BDataset(root, image_size=64)
    second = SA1BDataset(root, image_size=64, min_area=200)
    assert not first.index_reused and second.index_reused
    assert [len(e) for e in second.eligible] == [2, 1, 0]
    assert "no usable mask" in second[2]["skipped"]["reason"]


@pytest.mark.parametrize("name", [".hidden.json", "notes.txt"])
def test_other_files_are_ignored(sa1b_folder, name):
    root, _ = sa1b_folder
    (root / name).write_text("{}")
    records, _ = load_index(root)
    assert [r["json"] for r in records] == ["a.json", "b.json", "c.json"]
