"""Demo data tool and the train/val split helper."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from samft.entry import run_cli
from samft.data import SA1BDataset
from samft.data.demo import inner_point, render_demo_image, split_dataset, write_demo_folder

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "tools" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_writes_train_and_val_and_is_idempotent(tmp_path, capsys):
    tool = _tool()
    out = tmp_path / "demo"
    assert run_cli(tool.main, [str(out), "--images", "4", "--size", "64x48"]) == 0
    assert "3 train + 1 val" in capsys.readouterr().out
    assert len(list((out / "train").glob("*.json"))) == 3 and len(list((out / "val").glob("*.json"))) == 1
    stamp = (out / "train" / "sa_1.jpg").stat().st_mtime_ns
    assert run_cli(tool.main, [str(out), "--images", "4", "--size", "64x48"]) == 0
    assert (out / "train" / "sa_1.jpg").stat().st_mtime_ns == stamp
    assert run_cli(tool.main, [str(out), "--images", "4", "--val-fraction", "1.5"]) == 2
    assert "--val-fraction" in capsys.readouterr().err


def test_split_helper_is_deterministic_and_complete(tmp_path):
    write_demo_folder(tmp_path / "all", 10, size=(40, 30), seed=3)
    n_train, n_val = split_dataset(tmp_path / "all", tmp_path / "split", val_fraction=0.3, seed=1)
    assert (n_train, n_val) == (7, 3)
    train = sorted(p.stem for p in (tmp_path / "split" / "train").glob("*.json"))
    val = sorted(p.stem for p in (tmp_path / "split" / "val").glob("*.json"))
    assert len(train) == 7 and len(val) == 3 and not set(train) & set(val)
    assert all((tmp_path / "split" / "val" / f"{s}.jpg").is_file() for s in val)
    split_dataset(tmp_path / "all", tmp_path / "again", val_fraction=0.3, seed=1, copy=True)
    assert sorted(p.stem for p in (tmp_path / "again" / "val").glob("*.json")) == val
    assert len(SA1BDataset(tmp_path / "split" / "val", image_size=64)) == 3
    with pytest.raises(ValueError, match="no <id>.jpg"):
        split_dataset(tmp_path / "split" / "nothing", tmp_path / "x")


def test_demo_shapes_stand_out_from_the_background():
    rng = np.random.default_rng(0)
    image, masks = render_demo_image(rng, 160, 120)
    assert masks and all(m.any() for m in masks)
    background = ~np.any(masks, axis=0)
    saturation = image.max(-1).astype(int) - image.min(-1)
    for mask in masks:
        if mask.sum() > 100:  # large shapes: saturated colour vs a grey background
            assert np.median(saturation[mask]) > 2 * np.median(saturation[background]) + 40
    assert inner_point(np.pad(np.ones((3, 3), bool), 2)) == [3.0, 3.0]
