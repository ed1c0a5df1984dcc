"""Augmentations: the whitelist and its errors, and image, masks, valid area, distance maps and
keypoints staying consistent through geometric transforms."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import ndimage

from samft.data import DataError, SA1BDataset
from samft.data.distance_maps import fast_signed_distance_map
from samft.data.transforms import build_augmentation, pad_bottom_right, resized_shape


def test_whitelist_and_did_you_mean():
    aug = build_augmentation([{"name": "HorizontalFlip", "p": 0.5}, {"name": "ColorJitter"}])
    assert aug.names == ["HorizontalFlip", "ColorJitter"] and aug.permutation_only
    assert build_augmentation(None) is None and build_augmentation([]) is None
    with pytest.raises(DataError, match="HorizontalFlip") as info:
        build_augmentation([{"name": "HorizontalFlipp"}])
    assert "data.augment[0]" in str(info.value)
    with pytest.raises(DataError, match="unknown augmentation 'Normalize'"):
        build_augmentation([{"name": "Normalize"}])  # the model normalises; not allowed here
    with pytest.raises(DataError, match="rotate") as info:
        build_augmentation([{"name": "Affine", "rotat": 10}])
    assert "no argument 'rotat'" in str(info.value)
    with pytest.raises(DataError, match="invalid arguments for Affine"):
        build_augmentation([{"name": "Affine", "rotate": "lots"}])
    with pytest.raises(DataError, match="mapping"):
        build_augmentation(["HorizontalFlip"])


def test_compositions_and_omegaconf_specs():
    cfg = OmegaConf.create({"augment": [
        {"name": "OneOf", "p": 1.0, "transforms": [{"name": "Affine", "scale": [0.9, 1.1]}, {"name": "VerticalFlip"}]},
        {"name": "RandomBrightnessContrast", "p": 0.2}]})
    aug = build_augmentation(list(cfg.augment))
    assert aug.names == ["Affine", "VerticalFlip", "RandomBrightnessContrast"] and not aug.permutation_only
    with pytest.raises(DataError, match="transforms"):
        build_augmentation([{"name": "OneOf"}])
    with pytest.raises(DataError, match=r"data.augment\[0\].transforms\[0\]"):
        build_augmentation([{"name": "OneOf", "transforms": [{"name": "Flip"}]}])


def test_resize_and_pad_helpers():
    assert resized_shape(1500, 2250, 1024) == (683, 1024)  # SAM's ResizeLongestSide rounding
    assert resized_shape(240, 320, 256) == (192, 256)
    padded = pad_bottom_right(np.ones((2, 3, 4), np.uint8), 5)
    assert padded.shape == (2, 5, 5) and padded[:, :3, :4].all() and padded.sum() == 24
    with pytest.raises(ValueError):
        pad_bottom_right(np.ones((6, 2)), 5)


def _rect_folder(tmp_path, h):
    H, W = 90, 120
    masks = [h.rect(H, W, 10, 40, 15, 60), h.rect(H, W, 50, 85, 70, 110)]
    anns = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        # point_coords: the centre pixel, as SA-1B's generating point
        anns.append(h.annotation(k, m, point_coords=[[float(np.median(xs)), float(np.median(ys))]]))
    h.write_pair(tmp_path, "r", h.random_image(H, W), anns)
    return tmp_path


def test_flip_moves_everything_together(tmp_path, h):
    root = _rect_folder(tmp_path, h)
    plain = SA1BDataset(root, image_size=120, prompt="point")[0]
    flipped = SA1BDataset(root, image_size=120, prompt="point", transforms=[{"name": "HorizontalFlip", "p": 1}])[0]
    assert torch.equal(flipped["masks"][:, :90], plain["masks"][:, :90].flip(-1))
    assert torch.equal(flipped["image"][:, :90], plain["image"][:, :90].flip(-1))
    assert torch.equal(flipped["valid"], plain["valid"])
    pc, fc = plain["meta"]["point_coords"], flipped["meta"]["point_coords"]
    assert torch.equal(fc[:, 0], 119 - pc[:, 0]) and torch.equal(fc[:, 1], pc[:, 1])


@pytest.mark.parametrize("seed", range(4))
def test_affine_keeps_masks_valid_area_keypoints_prompts_and_maps_consistent(tmp_path, h, seed):
    root = _rect_folder(tmp_path, h)
    spec = [{"name": "Affine", "rotate": [-30, 30], "scale": [0.7, 1.2], "translate_percent": [-0.1, 0.1], "p": 1.0}]
    ds = SA1BDataset(root, image_size=128, transforms=spec, with_dist_maps=True, prompt="point_or_box",
                     box_noise=0.0, seed=seed)
    item = ds[0]
    masks, valid, image = item["masks"].numpy(), item["valid"].numpy(), item["image"].numpy()
    assert item["meta"]["input_size"] == (96, 128)
    assert not (masks & ~valid).any()  # masks never reach the fill or the padding
    assert not valid[96:].any()
    far_outside = ~ndimage.binary_dilation(valid, iterations=2)
    assert (image[:, far_outside] == 0).all()  # image content only where valid
    for mask, point, prompt, label, dist in zip(masks, item["meta"]["point_coords"], item["points"],
                                                item["point_labels"], item["dist_maps"].numpy()):
        x, y = np.round(point.numpy()).astype(int)
        assert mask[y, x]  # the json's centre point follows the mask
        if label[0] == 1:
            assert mask[int(prompt[0, 1]), int(prompt[0, 0])]  # prompts come from the augmented mask
        else:
            ys, xs = np.nonzero(mask)
            assert prompt.tolist() == [[xs.min(), ys.min()], [xs.max(), ys.max()]]
        np.testing.assert_array_equal(dist[:96], fast_signed_distance_map(mask[:96], 0.05 * 128))


def test_augmentations_are_deterministic_per_seed_and_epoch(tmp_path, h):
    root = _rect_folder(tmp_path, h)
    spec = [{"name": "Affine", "rotate": [-30, 30], "p": 1.0}, {"name": "ColorJitter", "p": 1.0}]
    ds = SA1BDataset(root, image_size=64, transforms=spec)
    first = ds[0]
    assert torch.equal(ds[0]["image"], first["image"]) and torch.equal(ds[0]["masks"], first["masks"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["image"], first["image"])


def test_size_changing_augmentation_is_brought_back_to_the_input_size(tmp_path, h):
    root = _rect_folder(tmp_path, h)
    ds = SA1BDataset(root, image_size=64, transforms=[{"name": "RandomCrop", "height": 40, "width": 40, "p": 1.0}])
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["meta"]["input_size"] == (64, 64)
    assert item["valid"].all()


def test_augmentation_that_removes_every_mask_skips_even_in_raise_mode(tmp_path, h):
    root = _rect_folder(tmp_path, h)
    spec = [{"name": "Affine", "translate_px": {"x": [500, 500], "y": [0, 0]}, "p": 1.0}]
    item = SA1BDataset(root, image_size=64, transforms=spec, on_error="raise")[0]
    assert "no mask left" in item["skipped"]["reason"]
