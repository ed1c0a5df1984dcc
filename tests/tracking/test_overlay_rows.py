"""Validation overlays: one image per row, and a prediction colour that stays visible on its object."""

import numpy as np
import torch

from samft.data import SA1BDataset, collate_masks
from samft.engine.evaluate import evaluate
from samft.engine.runtime import make_runtime
from samft.models import build_model
from samft.tracking import plots


def test_each_overlay_row_shows_another_image(demo_data):
    dataset = SA1BDataset(demo_data / "val", image_size=64, max_masks=4, prompt="point")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_masks)
    result = evaluate(build_model("vit_tiny", 64), loader, make_runtime("cpu"), max_images=4, max_masks=4,
                      keep_examples=4)
    images = [ex["image"] for ex in result.examples]
    assert len(images) == 4  # the 4 validation images, 2 per batch
    assert all(not torch.equal(a, b) for i, a in enumerate(images) for b in images[i + 1:])


def _object_image(colour) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((32, 32, 3), 0.5, np.float32)
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 8:24, 8:24] = True
    image[mask[0]] = colour
    return image, mask


def test_prediction_stays_visible_on_an_object_of_its_colour():
    image, mask = _object_image(plots.PRED_COLOR)  # a pink object: magenta on it was invisible
    colors = plots._mask_colors(1, plots.PRED_COLOR, image, mask)
    drawn = plots.tint(image, mask, colors)
    change = np.abs(drawn[mask[0]] - image[mask[0]]).sum(axis=1)
    assert change.min() > 0.3  # every covered pixel visibly changes colour
    assert np.abs(drawn[~mask[0]] - image[~mask[0]]).max() <= 1 / 255  # outside: untouched (uint8 rounding)


def test_usual_colour_is_kept_where_it_is_visible():
    image, mask = _object_image((0.1, 0.3, 0.9))  # a blue object
    assert np.allclose(plots._mask_colors(1, plots.PRED_COLOR, image, mask)[0], plots.PRED_COLOR)


def test_prompt_panel_draws_points_and_boxes_where_they_are():
    image = np.zeros((64, 64, 3), np.float32)
    points = np.array([[[10.0, 20.0], [40.0, 50.0], [0.0, 0.0], [5.0, 30.0], [25.0, 60.0]]], np.float32)
    labels = np.array([[1, 0, -1, 2, 3]])  # positive, negative, padding, box corners
    drawn = plots.prompt_panel(image, points, labels, np.array([[50.0, 2.0, 62.0, 12.0]], np.float32), count=1)
    positive = np.round(np.asarray(plots._mask_colors(1, (0.2, 1.0, 0.2))[0]) * 255) / 255
    assert np.allclose(drawn[20, 10], positive, atol=1 / 255)  # (row y, column x)
    assert np.allclose(drawn[50, 40], (1.0, 0.0, 0.0))
    assert not drawn[0:2, 0:2].any()  # the padding point is not drawn
    assert drawn[45, 5].any() and drawn[45, 15].sum() == 0  # the corner box's left edge, not its inside
    assert np.allclose(drawn[2, 56], (1.0, 1.0, 0.0))  # the yellow box's top edge
    assert drawn.shape == image.shape and not image.any()  # the input is left untouched
