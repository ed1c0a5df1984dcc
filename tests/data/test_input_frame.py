"""The square input frame (SAM 2.1: images stretched to S x S, as SAM 2 trains and predicts): a real
non-square COCO photo is served as a direct resize of the photo and its masks, with no padding, prompts
from the stretched masks, the annotations' own points moved per axis, distance maps of the served masks
(with and without the cache) and augmentations that change the size brought back to the square."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO

from samft.data import SA1BDataset
from samft.data.coco import CocoDataset
from samft.data.distance_maps import DistanceMapCache, precompute_distance_maps
from samft.data.errors import DataError
from samft.data.transforms import served_shape
from samft.signed_distance import signed_distance_map

S = 384  # both sides of a 640 x 480 photo shrink by more than half: bilinear masks, no area averaging


@pytest.fixture(scope="module")
def coco_val(shared_dir):
    tiny = shared_dir / "data" / "coco_tiny"
    if not tiny.is_dir():
        pytest.skip(f"{tiny} is absent: real-COCO test skipped")
    return tiny / "annotations" / "instances_val2017.json", tiny / "val2017"


def _photo_items(coco_val, count=3, **settings):
    """The first ``count`` non-square photos (landscape and portrait) served in the square frame."""
    ds = CocoDataset(*coco_val, image_size=S, input_frame="square", **settings)
    chosen = [i for i, r in enumerate(ds.records) if r["height"] != r["width"] and r["n"]]
    portrait = [i for i in chosen if ds.records[i]["height"] > ds.records[i]["width"]]
    assert portrait and len(chosen) > len(portrait)
    picks = chosen[:count - 1] + portrait[:1]
    return ds, [(i, ds[i]) for i in picks]


def test_square_frame_is_a_direct_resize_of_the_photo_and_its_masks(coco_val):
    ds, items = _photo_items(coco_val, prompt="box", box_noise=0.0)
    api = COCO(str(coco_val[0]))
    for index, item in items:
        rec = ds.records[index]
        H, W = item["meta"]["original_size"]
        assert (H, W) == (rec["height"], rec["width"]) and H != W
        assert item["meta"]["input_size"] == (S, S) and item["valid"].all()
        assert item["image"].shape == (3, S, S)
        # image: OpenCV's area-averaging stretch of the photo as PIL decodes it, and (looser: another kernel)
        # torch's antialiased bilinear stretch, which is SAM2Transforms' Resize((S, S))
        photo = np.array(Image.open(coco_val[1] / api.imgs[rec["image_id"]]["file_name"]).convert("RGB"))
        area = torch.from_numpy(cv2.resize(photo, (S, S), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
        diff = (item["image"].float() - area.float()).abs()
        assert diff.mean() < 0.1 and diff.max() <= 2, (diff.mean(), diff.max())
        ref = F.interpolate(torch.from_numpy(photo).permute(2, 0, 1)[None].float(), size=(S, S), mode="bilinear",
                            align_corners=False, antialias=True)[0]
        assert (item["image"].float() - ref).abs().mean() < 3.0  # of 255
        # the padded frame would leave a band of zeros: a stretched image has content on every row and column
        assert item["image"].float().mean(dim=(0, 2)).min() > 0 and item["image"].float().mean(dim=(0, 1)).min() > 0
        # masks: each annotation decoded by pycocotools and stretched by OpenCV's bilinear resize (run on the
        # transpose, as the reader resizes pycocotools' Fortran-order masks); torch's bilinear resize rounded at
        # 0.5 agrees but on a few edge pixels (OpenCV's fixed-point weights)
        for mask, ann_id in zip(item["masks"], item["meta"]["annotation_ids"]):
            full = api.annToMask(api.anns[ann_id])
            direct = cv2.resize(np.ascontiguousarray(full.T), (S, S), interpolation=cv2.INTER_LINEAR).T
            np.testing.assert_array_equal(mask.numpy(), direct.astype(bool))
            soft = F.interpolate(torch.from_numpy(full).float()[None, None], size=(S, S), mode="bilinear",
                                 align_corners=False)[0, 0]
            differs = mask != (soft >= 0.5)
            assert differs.sum() <= 0.01 * mask.sum() + 1 and bool(((soft[differs] > 0) & (soft[differs] < 1)).all())
        # box prompts (no noise) are the stretched masks' tight boxes, x then y
        for mask, points, labels in zip(item["masks"], item["points"], item["point_labels"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert labels.tolist() == [2, 3]
            assert points.tolist() == [[xs.min().item(), ys.min().item()], [xs.max().item(), ys.max().item()]]


def test_click_prompts_land_on_the_stretched_masks(coco_val):
    _, items = _photo_items(coco_val, prompt="point")
    for _, item in items:
        for mask, points, labels in zip(item["masks"], item["points"], item["point_labels"]):
            x, y = points[0].round().long().tolist()
            assert labels[0] == 1 and mask[y, x]


def test_annotation_points_and_crops_follow_each_axis(tmp_path, h):
    """SA-1B's own point per mask, hand-computed: x scales by S/W, y by S/H (pixel centres)."""
    H, W = 60, 200
    m = h.rect(H, W, 10, 30, 40, 90)
    h.write_pair(tmp_path / "d", "sa_1", h.random_image(H, W), [h.annotation(1, m, point_coords=[[50.0, 20.0]])])
    item = SA1BDataset(tmp_path / "d", image_size=64, input_frame="square", prompt="box", box_noise=0.0)[0]
    expected = [(50.0 + 0.5) * 64 / W - 0.5, (20.0 + 0.5) * 64 / H - 0.5]
    np.testing.assert_allclose(item["meta"]["point_coords"][0].numpy(), expected, rtol=1e-6)
    # the 50 x 20 rectangle at (40, 10) becomes x 12.8..28.8, y 10.67..32: pixel centres inside it
    assert item["points"][0].tolist() == [[13.0, 11.0], [28.0, 31.0]]
    # an evaluation tile of a cropped large image (96 x 60 original pixels: cut by the image) is stretched too
    (tile,) = SA1BDataset(tmp_path / "d", image_size=64, input_frame="square", prompt=None,
                          crop={"multiple": 1.5})[0]["tiles"]
    assert tile["meta"]["crop"] == (0, 0, 96, 60) and tile["meta"]["input_size"] == (64, 64) and tile["valid"].all()
    ys, xs = np.nonzero(tile["masks"][0].numpy())  # x 40..90 -> 26.67..60, y 10..30 -> 10.67..32
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (27, 59, 11, 31)


def test_served_shape_and_bad_frame():
    assert served_shape(480, 640, 1024, "longest_side") == (768, 1024)
    assert served_shape(480, 640, 1024, "square") == (1024, 1024)
    with pytest.raises(DataError, match="input_frame must be one of"):
        CocoDataset("a.json", ".", input_frame="stretch")  # refused before any file is read


def test_distance_maps_are_the_maps_of_the_stretched_masks(coco_train, tmp_path):
    """Cached (computed on the stretched masks) and on the fly: the served map is the served mask's own map."""
    counts = precompute_distance_maps(coco_train, tmp_path / "cache", image_size=96, progress=False,
                                      input_frame="square")
    assert counts["failed"] == 0
    common = dict(image_size=96, with_dist_maps=True, input_frame="square", max_masks=64)
    cached = SA1BDataset(coco_train, dist_map_cache=tmp_path / "cache", **common)
    online = SA1BDataset(coco_train, **common)
    assert cached.dist_cache.tag != DistanceMapCache(tmp_path / "cache", 96, 0.05).tag  # never SAM's frame maps
    for i in range(len(cached)):
        with_cache, without = cached[i], online[i]
        assert with_cache["masks"].shape[-2:] == (96, 96)
        clip = np.float32(0.05 * 96)
        reference = np.stack([np.minimum(signed_distance_map(m), clip) for m in with_cache["masks"].numpy()])
        np.testing.assert_array_equal(without["dist_maps"].numpy(), reference)
        served = with_cache["dist_maps"].numpy()
        assert (np.abs(served - reference) <= np.abs(reference) * 2.0 ** -11).all()  # float16 storage


def test_size_changing_augmentation_comes_back_to_the_square(coco_train):
    ds = SA1BDataset(coco_train, image_size=64, input_frame="square", with_dist_maps=True,
                     transforms=[{"name": "RandomScale", "scale_limit": [0.5, 0.5], "p": 1.0}])
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["valid"].all() and item["masks"].shape[-2:] == (64, 64)
    reference = np.stack([np.minimum(signed_distance_map(m), np.float32(3.2)) for m in item["masks"].numpy()])
    np.testing.assert_array_equal(item["dist_maps"].numpy(), reference)
