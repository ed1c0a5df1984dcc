"""The data path on real photos, end to end: image/mask alignment after resize and pad, EXIF
orientation, grayscale and CMYK JPEGs, and masks of a few pixels at small input sizes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from samft.data import DataError, SA1BDataset
from samft.data.rle import checked_rle

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2

RED, GREEN = (220, 30, 40), (20, 180, 90)


def _two_colour_photo(h, w):
    """Green photo with a red rectangle on rows h/4..h/2, columns w/8..w/2; the mask is the rectangle."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = GREEN
    mask = np.zeros((h, w), bool)
    mask[h // 4:h // 2, w // 8:w // 2] = True
    image[mask] = RED
    return image, mask


def _write(h, folder, stem, image_file, json_hw, mask, **save):
    """Save ``image_file`` (a PIL image) as stem.jpg and a json stating size ``json_hw`` with ``mask``."""
    folder.mkdir(parents=True, exist_ok=True)
    image_file.save(folder / f"{stem}.jpg", quality=95, **save)
    path = h.write_pair(folder / "tmp", stem, np.zeros(json_hw + (3,), np.uint8), [h.annotation(1, mask)])
    (folder / f"{stem}.json").write_text(path.read_text())


def _red_share(item, mask_index=0):
    """Share of the served mask's inner pixels (one pixel in from its edge, where resampling blends
    the two colours) that look red, the photo's object."""
    from scipy.ndimage import binary_erosion

    image = item["image"].numpy().transpose(1, 2, 0).astype(int)
    red = np.abs(image - RED).sum(-1) < np.abs(image - GREEN).sum(-1)
    inner = binary_erosion(item["masks"][mask_index].numpy())
    assert inner.sum() >= 4
    return red[inner].mean()


@pytest.mark.parametrize("image_size", [64, 100, 256])
@pytest.mark.parametrize("shape", [(120, 200), (200, 120)])
def test_mask_stays_on_its_object_after_resize_and_pad(tmp_path, h, image_size, shape):
    image, mask = _two_colour_photo(*shape)
    _write(h, tmp_path / "d", "a", Image.fromarray(image), shape, mask)
    item = SA1BDataset(tmp_path / "d", image_size=image_size, prompt="point")[0]
    hh, ww = item["meta"]["input_size"]
    assert max(hh, ww) == image_size and item["valid"][:hh, :ww].all() and not item["valid"][hh:].any()
    assert (item["image"][:, hh:] == 0).all() and (item["image"][:, :, ww:] == 0).all()  # padding
    assert _red_share(item) > 0.97
    ys, xs = np.nonzero(item["masks"][0].numpy())
    scale = image_size / max(shape)
    expected = np.array([shape[0] // 4, shape[0] // 2, shape[1] // 8, shape[1] // 2]) * scale
    assert np.abs(np.array([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1]) - expected).max() <= 1.0


def test_exif_turned_photo_annotated_upright_is_turned(tmp_path, h):
    """A phone photo: stored landscape with orientation 6, annotated in the upright (portrait) frame."""
    upright, mask = _two_colour_photo(200, 120)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # EXIF 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    _write(h, tmp_path / "d", "phone", stored, (200, 120), mask, exif=exif.tobytes())
    item = SA1BDataset(tmp_path / "d", image_size=100, prompt="point")[0]
    assert item["meta"]["input_size"] == (100, 60)
    assert _red_share(item) > 0.97


def test_exif_ignored_when_annotations_are_on_the_stored_pixels(tmp_path, h):
    """COCO's convention: the json states the stored size, the masks are on the stored pixels."""
    image, mask = _two_colour_photo(120, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    _write(h, tmp_path / "d", "coco", Image.fromarray(image), (120, 200), mask, exif=exif.tobytes())
    item = SA1BDataset(tmp_path / "d", image_size=100, prompt="point")[0]
    assert item["meta"]["input_size"] == (60, 100) and _red_share(item) > 0.97


def test_size_that_fits_no_orientation_is_a_clear_error(tmp_path, h):
    image, mask = _two_colour_photo(120, 200)
    _write(h, tmp_path / "d", "bad", Image.fromarray(image), (200, 120), mask.T.copy())  # no EXIF to turn it
    with pytest.raises(DataError, match="image is 200x120 but its json says 120x200"):
        SA1BDataset(tmp_path / "d", image_size=64, on_error="raise")[0]


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_are_read_as_rgb(tmp_path, h, mode):
    image, mask = _two_colour_photo(120, 200)
    _write(h, tmp_path / "d", mode, Image.fromarray(image).convert(mode), (120, 200), mask)
    item = SA1BDataset(tmp_path / "d", image_size=200, prompt="point")[0]
    served = item["image"].numpy().transpose(1, 2, 0)[:120, :200].astype(int)
    expected = np.asarray(Image.fromarray(image).convert(mode).convert("RGB")).astype(int)
    assert served.shape == (120, 200, 3)
    if mode == "L":
        assert (served[..., 0] == served[..., 1]).all() and (served[..., 1] == served[..., 2]).all()
    assert np.abs(served - expected)[10:-10, 10:-10].mean() < 3  # JPEG rounding only
    assert np.abs(served[45, 50] - np.asarray(RED if mode == "CMYK" else expected[45, 50])).max() < 12


def test_masks_of_a_few_pixels_at_small_input_sizes(tmp_path, h):
    """Masks smaller than a pixel of the input frame vanish (nothing to segment there) and are left
    out; larger ones keep at least their area's worth of pixels and a prompt inside."""
    H, W = 480, 640
    masks = [h.rect(H, W, 100, 101, 100, 101), h.rect(H, W, 200, 202, 300, 302), h.rect(H, W, 300, 312, 400, 412),
             h.rect(H, W, 50, 90, 500, 560)]
    h.write_pair(tmp_path / "d", "tiny", h.random_image(H, W), [h.annotation(k, m) for k, m in enumerate(masks)])
    small = SA1BDataset(tmp_path / "d", image_size=64, prompt="point", max_masks=8)[0]
    assert small["meta"]["annotation_ids"] == [2, 3]  # 1 and 4 px become 0.01 and 0.04 px at 1/10 scale
    assert small["masks"].flatten(1).sum(1).tolist() == [1, 24]  # 12x12 -> 1.2x1.2 px, 40x60 -> 4x6 px
    for k in range(2):
        x, y = small["points"][k, 0].long().tolist()
        assert small["masks"][k, y, x]
    full = SA1BDataset(tmp_path / "d", image_size=640, prompt="point", max_masks=8)[0]
    assert full["meta"]["annotation_ids"] == [0, 1, 2, 3]
    assert full["masks"].flatten(1).sum(1).tolist() == [1, 4, 144, 2400]


def test_all_masks_too_small_is_skipped_with_the_reason(tmp_path, h):
    h.write_pair(tmp_path / "d", "specks", h.random_image(480, 640), [h.annotation(0, h.rect(480, 640, 9, 11, 9, 11))])
    with pytest.raises(DataError, match="smaller than one pixel at image_size 32"):
        SA1BDataset(tmp_path / "d", image_size=32, on_error="raise")[0]


@pytest.mark.parametrize("image_size", [128, 333])
def test_real_photos_and_masks_match_an_independent_resize(coco_train, image_size):
    """Real COCO photos: the served image and masks agree with torch's own antialiased resize of
    the original photo and pycocotools' decode of the original masks."""
    import json

    ds = SA1BDataset(coco_train, image_size=image_size, prompt="point", max_masks=64)
    checked = 0
    for i in range(len(ds)):
        item = ds[i]
        hh, ww = item["meta"]["input_size"]
        record = json.loads((coco_train / ds.records[i]["json"]).read_text())
        H, W = record["image"]["height"], record["image"]["width"]
        photo = np.array(Image.open(item["meta"]["file"]).convert("RGB"))
        ref = F.interpolate(torch.from_numpy(photo).permute(2, 0, 1)[None].float(), size=(hh, ww), mode="bilinear",
                            antialias=True, align_corners=False)[0]
        served = item["image"][:, :hh, :ww].float()
        error = (served - ref).abs()[:, 1:-1, 1:-1].mean()
        assert error < 10  # the same picture (resampling filters differ a little)...
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):  # ...in the same place: a 1-px shift is worse
            shifted = torch.roll(ref, (dy, dx), (1, 2))
            assert (served - shifted).abs()[:, 1:-1, 1:-1].mean() > error
        anns = {a["id"]: a for a in record["annotations"]}
        for k, ann_id in enumerate(item["meta"]["annotation_ids"]):
            original = mask_utils.decode([checked_rle(anns[ann_id]["segmentation"], H, W)])[:, :, 0]
            soft = F.interpolate(torch.from_numpy(original)[None, None].float(), size=(hh, ww), mode="area")[0, 0]
            served = item["masks"][k, :hh, :ww]
            if soft.sum() >= 20:  # masks of a few pixels: rounding decides, checked above
                inter = (served & (soft >= 0.5)).sum().item()
                union = (served | (soft >= 0.5)).sum().item()
                assert inter / union > 0.85, (ann_id, inter / union)
                checked += 1
            assert not item["masks"][k, hh:].any() and not item["masks"][k, :, ww:].any()
    assert checked >= 15
