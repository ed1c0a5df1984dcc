"""Distance maps: the fast bounding-box computation equals the full-frame formula, the served map is
the map of the served mask (real COCO masks, several input sizes, with and without the cache, flips
and affine transforms), and the cache is recomputed exactly when the data or settings change."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageDraw

from samft.data import SA1BDataset
from samft.data.distance_maps import (
    DistanceMapCache, default_cache_dir, fast_signed_distance_map, precompute_distance_maps,
)
from samft.signed_distance import signed_distance_map

REPO = Path(__file__).resolve().parents[2]


@settings(max_examples=80, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))),
       st.one_of(st.none(), st.floats(0.5, 10.0)))
def test_fast_map_equals_the_clipped_full_frame_formula(mask, clip):
    full = signed_distance_map(mask)
    expected = full if clip is None else np.minimum(full, np.float32(clip))
    if not mask.any() or mask.all():
        expected = np.zeros(mask.shape, np.float32)
    np.testing.assert_array_equal(fast_signed_distance_map(mask, clip), expected)


def test_hand_computed_map():
    mask = np.zeros((5, 7), bool)
    mask[1:4, 1:4] = True
    got = fast_signed_distance_map(mask, max_dist=2.5)
    assert got[2, 2] == -1.0 and got[1, 1] == 0.0 and got[2, 4] == 1.0
    assert got[2, 5] == 2.0 and got[2, 6] == 2.5 and got[0, 0] == pytest.approx(np.sqrt(2))
    assert not fast_signed_distance_map(np.zeros((4, 4), bool)).any()
    assert not fast_signed_distance_map(np.ones((4, 4), bool)).any()


def test_fast_map_equals_the_formula_on_large_masks():
    """Distances of hundreds of pixels (OpenCV's float32 values squared back to exact integers)."""
    yy, xx = np.mgrid[:700, :900]
    mask = ((yy - 350) / 300.0) ** 2 + ((xx - 420) / 410.0) ** 2 <= 1
    mask[100:110, :] = False  # a gap, and a sliver along the border
    mask[:, 898] = True
    for clip in (None, 51.2):
        full = signed_distance_map(mask)
        expected = full if clip is None else np.minimum(full, np.float32(clip))
        np.testing.assert_array_equal(fast_signed_distance_map(mask, clip), expected)


def _shapes_image(tmp_path, h):
    """Clean convex shapes (no slivers)."""
    H, W = 120, 160
    masks = []
    for draw_fn in (lambda d: d.ellipse([20, 15, 80, 70], fill=1), lambda d: d.rectangle([90, 60, 150, 110], fill=1),
                    lambda d: d.polygon([(30, 100), (70, 80), (60, 115)], fill=1)):
        canvas = Image.new("L", (W, H), 0)
        draw_fn(ImageDraw.Draw(canvas))
        masks.append(np.asarray(canvas).astype(bool))
    h.write_pair(tmp_path / "data", "shapes", h.random_image(H, W), [h.annotation(k, m) for k, m in enumerate(masks)])
    return tmp_path / "data"


def _reference(item, clip_share):
    """scipy's full-frame map of each served mask, clipped, on the unpadded frame."""
    hh, ww = item["meta"]["input_size"]
    clip = np.float32(clip_share * item["masks"].shape[-1])
    return np.stack([np.minimum(signed_distance_map(m), clip) for m in item["masks"].numpy()[:, :hh, :ww]])


def _served(item):
    hh, ww = item["meta"]["input_size"]
    dist = item["dist_maps"].numpy()
    assert (dist[:, hh:] == 0).all() and (dist[:, :, ww:] == 0).all()  # padding carries no distances
    return dist[:, :hh, :ww]


def _close_to_float16(served, reference):
    """Equal but for float16 storage: half a unit in the last place, 2^-11 of the value (1/32 px
    or less in the clip band, which is 51 px wide at 1024 px; more only deep inside large masks)."""
    error = np.abs(served - reference)
    return bool((error <= np.abs(reference) * 2.0 ** -11).all())


@pytest.mark.parametrize("image_size", [64, 128, 333])
def test_served_maps_are_the_maps_of_the_served_real_masks(coco_train, tmp_path, image_size):
    """Real COCO masks: the map served after resizing (cached or not) is the served mask's own map.

    The old cache resampled maps computed at the original size: at 128 px, 10 of 36 real masks were
    off by more than 1.5 px (a 1-px background column at the image border vanishes when downscaled)."""
    cache = tmp_path / "cache"
    counts = precompute_distance_maps(coco_train, cache, image_size=image_size, progress=False)
    assert counts["failed"] == 0
    common = dict(image_size=image_size, with_dist_maps=True, max_masks=64)
    cached = SA1BDataset(coco_train, dist_map_cache=cache, **common)
    online = SA1BDataset(coco_train, **common)
    masks = 0
    for i in range(len(cached)):
        with_cache, without = cached[i], online[i]
        reference = _reference(with_cache, 0.05)
        assert _close_to_float16(_served(with_cache), reference)
        np.testing.assert_array_equal(_served(without), reference)
        np.testing.assert_array_equal(with_cache["masks"].numpy(), without["masks"].numpy())
        masks += len(reference)
    assert masks >= 25


@pytest.mark.parametrize("flip", ["HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90"])
def test_cached_maps_follow_flips_exactly(coco_train, tmp_path, flip):
    precompute_distance_maps(coco_train, tmp_path / "cache", image_size=96, progress=False)
    ds = SA1BDataset(coco_train, image_size=96, with_dist_maps=True, dist_map_cache=tmp_path / "cache",
                     transforms=[{"name": flip, "p": 1.0}])
    assert ds._use_cache()
    for i in range(len(ds)):
        item = ds[i]
        assert _close_to_float16(_served(item), _reference(item, 0.05))


@pytest.mark.parametrize("augment", [
    {"name": "Affine", "rotate": [20, 20], "scale": [0.8, 0.8], "p": 1.0},
    {"name": "Affine", "scale": [1.3, 1.3], "translate_px": [5, 5], "p": 1.0},
    {"name": "RandomScale", "scale_limit": [0.5, 0.5], "p": 1.0},  # changes the size: resized back to S
])
def test_other_geometric_augmentations_recompute_maps_on_the_augmented_masks(coco_train, tmp_path, augment):
    precompute_distance_maps(coco_train, tmp_path / "cache", image_size=128, progress=False)
    ds = SA1BDataset(coco_train, image_size=128, with_dist_maps=True, dist_map_cache=tmp_path / "cache",
                     transforms=[augment])
    assert not ds._use_cache()
    for i in range(3):
        item = ds[i]
        if "skipped" not in item:
            np.testing.assert_array_equal(_served(item), _reference(item, 0.05))


def test_cache_is_recomputed_only_when_data_or_settings_change(tmp_path, h, demo_data):
    root = tmp_path / "train"
    root.mkdir()
    for p in (demo_data / "train").glob("sa_*"):
        (root / p.name).write_bytes(p.read_bytes())
    cache = tmp_path / "cache"
    n = len(list(root.glob("*.json")))
    assert precompute_distance_maps(root, cache, progress=False, workers=2) == {"computed": n, "reused": 0, "failed": 0}
    assert precompute_distance_maps(root, cache, progress=False) == {"computed": 0, "reused": n, "failed": 0}
    path = root / "sa_1.json"
    data = json.loads(path.read_text())
    data["annotations"] = data["annotations"][:1]
    path.write_text(json.dumps(data))
    assert precompute_distance_maps(root, cache, progress=False) == {"computed": 1, "reused": n - 1, "failed": 0}
    assert precompute_distance_maps(root, cache, clip=0.1, progress=False)["computed"] == n
    assert precompute_distance_maps(root, cache, image_size=512, progress=False)["computed"] == n
    stored = DistanceMapCache(cache, 1024, 0.05).compute(path.read_bytes())
    assert stored["boxes"].shape == (1, 3) and stored["m0"].dtype == np.float16


def test_missing_cache_entries_fall_back_to_computing(tmp_path, h, caplog):
    root = _shapes_image(tmp_path, h)
    ds = SA1BDataset(root, image_size=64, with_dist_maps=True, dist_map_cache=tmp_path / "empty_cache")
    with caplog.at_level("WARNING", logger="samft.data"):
        item = ds[0]
    assert "precompute_distance_maps.py" in caplog.text and "--image-size 64" in caplog.text
    expected = np.stack([fast_signed_distance_map(m, 0.05 * 64) for m in item["masks"].numpy()[:, :48, :64]])
    np.testing.assert_array_equal(item["dist_maps"].numpy()[:, :48, :64], expected)


def _tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_precompute_tool(tmp_path, h, capsys, monkeypatch):
    """The README's `precompute_distance_maps.py DATASET` (no --cache) writes where training looks."""
    from samft.entry import run_cli

    root = _shapes_image(tmp_path, h)
    tool = _tool("precompute_distance_maps")
    args = [str(root), "--image-size", "64", "--no-progress", "--workers", "1"]
    assert run_cli(tool.main, args) == 0
    assert "1 computed, 0 reused" in capsys.readouterr().out
    assert run_cli(tool.main, args) == 0
    assert "0 computed, 1 reused" in capsys.readouterr().out
    assert run_cli(tool.main, args + ["--input-frame", "square"]) == 0  # SAM 2.1's maps: other files
    assert "1 computed, 0 reused" in capsys.readouterr().out
    assert len(list((root / ".samft_dist_maps").rglob("*.npz"))) == 2
    assert default_cache_dir(root) == root / ".samft_dist_maps" and (root / ".samft_dist_maps").is_dir()
    ds = SA1BDataset(root, image_size=64, with_dist_maps=True)  # data.dist_map_cache not set
    looked_up = []
    monkeypatch.setattr(DistanceMapCache, "lookup", lambda self, *a: looked_up.append(1) or None)
    ds[0]
    assert looked_up and ds.dist_cache.folder == root / ".samft_dist_maps"
    assert SA1BDataset(tmp_path / "data", image_size=64, with_dist_maps=True).dist_cache is not None
    assert run_cli(tool.main, [str(root), "--cache", str(tmp_path / "c"), "--no-progress", "--workers", "1"]) == 0
    assert "1 computed" in capsys.readouterr().out
    assert run_cli(tool.main, [str(tmp_path / "nope"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "Traceback" not in err
