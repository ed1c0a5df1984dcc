"""Distance maps: the fast bounding-box computation equals the full-frame formula, cached maps
follow resizing and flips, and the cache is recomputed exactly when the data or settings change."""

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
    DistanceMapCache, fast_signed_distance_map, precompute_distance_maps, rescale_values,
)
from samft.losses.boundary import signed_distance_map

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


def test_rescaled_values_keep_the_boundary_half_pixel_offsets():
    # a 1-D half-plane: outside pixel centres at edt 1, 2, 3 are 0.5, 1.5, 2.5 from the boundary
    np.testing.assert_allclose(rescale_values(np.array([1.0, 2.0, 3.0]), 2.0), [1.5, 3.5, 5.5])
    np.testing.assert_allclose(rescale_values(np.array([0.0, -1.0]), 2.0), [-0.5, -2.5])


def _shapes_image(tmp_path, h):
    """Clean convex shapes (no slivers), so resampling cannot change a mask's topology."""
    H, W = 120, 160
    masks = []
    for draw_fn in (lambda d: d.ellipse([20, 15, 80, 70], fill=1), lambda d: d.rectangle([90, 60, 150, 110], fill=1),
                    lambda d: d.polygon([(30, 100), (70, 80), (60, 115)], fill=1)):
        canvas = Image.new("L", (W, H), 0)
        draw_fn(ImageDraw.Draw(canvas))
        masks.append(np.asarray(canvas).astype(bool))
    h.write_pair(tmp_path / "data", "shapes", h.random_image(H, W), [h.annotation(k, m) for k, m in enumerate(masks)])
    return tmp_path / "data"


@pytest.mark.parametrize("image_size", [64, 128, 160, 256, 512])
def test_cached_maps_match_maps_of_the_resized_masks(tmp_path, h, image_size):
    """Tolerance: a resampled mask's boundary sits within half an output pixel of the scaled
    boundary when shrinking, within half a source pixel (= scale/2 output pixels) when enlarging
    (bilinear rounding of the source staircase), plus <= 0.25 px for the half-pixel model of
    pixel-centre distances on slanted boundaries and float16 storage."""
    root = _shapes_image(tmp_path, h)
    precompute_distance_maps(root, tmp_path / "cache", progress=False)
    cached = SA1BDataset(root, image_size=image_size, with_dist_maps=True, dist_map_cache=tmp_path / "cache")
    item = cached[0]
    s = image_size / 160
    hh, ww = item["meta"]["input_size"]
    masks = item["masks"].numpy()[:, :hh, :ww]
    reference = np.stack([fast_signed_distance_map(m, 0.05 * image_size) for m in masks])
    error = np.abs(item["dist_maps"].numpy()[:, :hh, :ww] - reference)
    assert error.max() <= 0.5 * max(s, 1.0) + 0.75, error.max()
    assert np.quantile(error, 0.99) <= 0.25 * max(s, 1.0) + 0.5
    assert (item["dist_maps"][:, hh:] == 0).all() and (item["dist_maps"][:, :, ww:] == 0).all()
    online = SA1BDataset(root, image_size=image_size, with_dist_maps=True)[0]
    np.testing.assert_array_equal(online["dist_maps"].numpy()[:, :hh, :ww], reference)
    if image_size == 160:  # no resampling: exact but for float16 storage
        assert error.max() <= 0.02


@pytest.mark.parametrize("flip", ["HorizontalFlip", "VerticalFlip", "Transpose"])
def test_cached_maps_follow_flips_exactly(tmp_path, h, flip):
    root = _shapes_image(tmp_path, h)
    precompute_distance_maps(root, tmp_path / "cache", progress=False)
    common = dict(image_size=128, with_dist_maps=True, dist_map_cache=tmp_path / "cache")
    plain = SA1BDataset(root, **common)[0]
    flipped = SA1BDataset(root, transforms=[{"name": flip, "p": 1.0}], **common)[0]
    assert flipped["meta"]["annotation_ids"] == plain["meta"]["annotation_ids"]
    hh, ww = plain["meta"]["input_size"]
    op = {"HorizontalFlip": lambda a: a[..., ::-1], "VerticalFlip": lambda a: a[..., ::-1, :],
          "Transpose": lambda a: np.swapaxes(a, -1, -2)}[flip]
    fh, fw = flipped["meta"]["input_size"]
    np.testing.assert_array_equal(flipped["masks"].numpy()[:, :fh, :fw], op(plain["masks"].numpy()[:, :hh, :ww]))
    np.testing.assert_array_equal(flipped["dist_maps"].numpy()[:, :fh, :fw], op(plain["dist_maps"].numpy()[:, :hh, :ww]))


def test_other_geometric_augmentations_recompute_maps_on_the_augmented_masks(tmp_path, h):
    root = _shapes_image(tmp_path, h)
    precompute_distance_maps(root, tmp_path / "cache", progress=False)
    ds = SA1BDataset(root, image_size=128, with_dist_maps=True, dist_map_cache=tmp_path / "cache",
                     transforms=[{"name": "Affine", "rotate": [20, 20], "scale": [0.8, 0.8], "p": 1.0}])
    assert not ds._use_cache()
    item = ds[0]
    expected = np.stack([fast_signed_distance_map(m, 0.05 * 128) for m in item["masks"].numpy()[:, :96, :128]])
    np.testing.assert_array_equal(item["dist_maps"].numpy()[:, :96, :128], expected)


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
    stored = DistanceMapCache(cache, 0.05).compute(path.read_bytes())
    assert stored["boxes"].shape == (1, 3) and stored["m0"].dtype == np.float16


def test_missing_cache_entries_fall_back_to_computing(tmp_path, h, caplog):
    root = _shapes_image(tmp_path, h)
    ds = SA1BDataset(root, image_size=64, with_dist_maps=True, dist_map_cache=tmp_path / "empty_cache")
    with caplog.at_level("WARNING", logger="samft.data"):
        item = ds[0]
    assert "precompute_distance_maps.py" in caplog.text
    expected = np.stack([fast_signed_distance_map(m, 0.05 * 64) for m in item["masks"].numpy()[:, :48, :64]])
    np.testing.assert_array_equal(item["dist_maps"].numpy()[:, :48, :64], expected)


def _tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_precompute_tool(tmp_path, h, capsys):
    from samft.cli import run_cli

    root = _shapes_image(tmp_path, h)
    tool = _tool("precompute_distance_maps")
    args = [str(root), "--cache", str(tmp_path / "c"), "--no-progress", "--workers", "1"]
    assert run_cli(tool.main, args) == 0
    assert "1 computed, 0 reused" in capsys.readouterr().out
    assert run_cli(tool.main, args) == 0
    assert "0 computed, 1 reused" in capsys.readouterr().out
    assert run_cli(tool.main, [str(tmp_path / "nope"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "Traceback" not in err
