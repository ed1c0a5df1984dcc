"""Prompt sampling: points, noisy boxes, correction clicks, appending and padding."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import samft.prompting as prompts
from samft.prompting import (
    append_clicks,
    pad_prompts,
    sample_boxes,
    sample_correction_clicks,
    sample_points,
    sample_prompts,
    tight_boxes,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_points_are_uniform_over_the_mask():
    mask = torch.zeros(6, 7, dtype=torch.bool)
    cells = [(0, 0), (2, 3), (5, 6), (4, 1)]
    for y, x in cells:
        mask[y, x] = True
    points, labels = sample_points(mask.expand(4000, 6, 7), gen())
    assert points.shape == (4000, 1, 2) and labels.shape == (4000, 1) and (labels == 1).all()
    xy = points[:, 0].long()
    counts = {c: int(((xy[:, 1] == c[0]) & (xy[:, 0] == c[1])).sum()) for c in cells}
    assert sum(counts.values()) == 4000
    assert all(880 < v < 1120 for v in counts.values()), counts  # ~ 1000 +- 3.5 sigma


def test_points_on_empty_masks_and_the_non_cpu_path(monkeypatch):
    masks = torch.zeros(3, 5, 8, dtype=torch.bool)
    masks[0, 4, 7] = True
    masks[2, 1:3, 2:4] = True
    points, labels = sample_points(masks, gen())
    assert points[0, 0].tolist() == [7.0, 4.0]
    assert labels[:, 0].tolist() == [1, -1, 1]
    assert points[1, 0].tolist() == [0.0, 0.0]
    x, y = points[2, 0].long()
    assert masks[2, y, x]
    # the torch reductions used on accelerators give the same draws as the CPU ones
    many = torch.rand(6, 9, 11, generator=gen(5)) > 0.6
    cpu = sample_points(many, gen(7))[0], sample_boxes(many, generator=gen(7))[0]
    monkeypatch.setattr(prompts, "_row_counts", lambda m: m.sum(2))
    monkeypatch.setattr(prompts, "_any", lambda m, dim: m.any(dim))
    assert torch.equal(sample_points(many, gen(7))[0], cpu[0])
    assert torch.equal(sample_boxes(many, generator=gen(7))[0], cpu[1])
    assert sample_points(torch.zeros(0, 4, 4, dtype=torch.bool))[0].shape == (0, 1, 2)


def test_points_are_reproducible_with_a_generator():
    masks = torch.rand(5, 20, 20, generator=gen(1)) > 0.5
    assert torch.equal(sample_points(masks, gen(3))[0], sample_points(masks, gen(3))[0])
    assert not torch.equal(sample_points(masks, gen(3))[0], sample_points(masks, gen(4))[0])


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12))), st.integers(0, 99))
def test_property_points_fall_inside_non_empty_masks(masks, seed):
    masks = torch.from_numpy(masks)
    points, labels = sample_points(masks, gen(seed))
    for mask, pt, label in zip(masks, points, labels):
        if mask.any():
            assert label.item() == 1 and mask[pt[0, 1].long(), pt[0, 0].long()]
        else:
            assert label.item() == -1


def test_boxes_without_noise_are_tight():
    masks = torch.zeros(2, 30, 40, dtype=torch.bool)
    masks[0, 5:11, 7:20] = True
    points, labels = sample_boxes(masks, noise_std=0.0, generator=gen())
    assert points[0].tolist() == [[7.0, 5.0], [19.0, 10.0]]
    assert labels.tolist() == [[2, 3], [-1, -1]]
    assert tight_boxes(masks)[1].tolist() == [True, False]


@pytest.mark.parametrize("side, expected_std", [(50, 5.0), (600, 20.0)])
def test_box_noise_is_ten_percent_of_the_side_capped_at_20px(side, expected_std):
    frame, at = side + 200, 100  # room for the noise on every side: no clipping
    mask = torch.zeros(1, frame, frame, dtype=torch.bool)
    mask[0, at:at + side, at:at + side] = True
    points, _ = sample_boxes(mask.expand(800, -1, -1), generator=gen())
    noise = points.reshape(800, 4) - torch.tensor([at, at, at + side - 1, at + side - 1]).float()
    # re-ordering the corners only matters when noise swaps them, which never happens here
    assert noise.std().item() == pytest.approx(expected_std, rel=0.06)
    assert noise.mean().abs().item() < 0.1 * expected_std


def test_uniform_box_noise_is_bounded_and_boxes_are_clipped_and_ordered():
    mask = torch.zeros(1, 100, 100, dtype=torch.bool)
    mask[0, 0:5, 0:90] = True
    points, _ = sample_boxes(mask.expand(2000, -1, -1), noise_std=0.1, max_noise=20, generator=gen(),
                             image_size=(60, 95), distribution="uniform")
    x, y = points[..., 0], points[..., 1]
    assert x.min() >= 0 and y.min() >= 0 and x.max() <= 94 and y.max() <= 59
    assert (points[:, 0] <= points[:, 1]).all()  # top-left stays top-left
    dx = points[:, 1, 0] - 89  # x1 moves uniformly within +-9 (10% of 90), then clipped at 94
    assert dx.min() >= -9 and dx.max() <= 5 and (dx < -8).any()
    with pytest.raises(ValueError, match="distribution"):
        sample_boxes(mask, distribution="laplace")


def test_sample_prompts_mixes_points_and_boxes():
    masks = torch.zeros(400, 10, 10, dtype=torch.bool)
    masks[:, 2:6, 3:8] = True
    points, labels = sample_prompts(masks, "point_or_box", 0.25, gen())
    assert points.shape == (400, 2, 2)
    is_box = labels[:, 0] == 2
    assert 60 < int(is_box.sum()) < 140
    assert (labels[is_box] == torch.tensor([2, 3])).all()
    assert (labels[~is_box] == torch.tensor([1, -1])).all()
    only_points, point_labels = sample_prompts(masks, "point", generator=gen())
    assert only_points.shape == (400, 1, 2) and (point_labels == 1).all()
    with pytest.raises(ValueError, match="prompt mode"):
        sample_prompts(masks, "scribble")


def test_correction_clicks_come_from_the_errors_with_the_right_label():
    gt = torch.zeros(3, 8, 8, dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    pred = gt.clone()
    pred[0, 2:6, 2:4] = False  # false negatives only
    pred[1, 0, :] = True  # false positives only
    points, labels = sample_correction_clicks(pred, gt, generator=gen())
    assert labels[:, 0].tolist() == [1, 0, -1]
    x, y = points[0, 0].long()
    assert gt[0, y, x] and not pred[0, y, x]
    x, y = points[1, 0].long()
    assert pred[1, y, x] and not gt[1, y, x] and y == 0


def test_correction_clicks_pick_false_negatives_in_proportion_to_their_area():
    gt = torch.zeros(1, 10, 10, dtype=torch.bool)
    gt[0, :, :6] = True
    pred = torch.zeros_like(gt)
    pred[0, :, 3:8] = True  # 30 false-negative pixels, 20 false-positive pixels
    _, labels = sample_correction_clicks(pred.expand(5000, -1, -1), gt.expand(5000, -1, -1), generator=gen())
    assert (labels[:, 0] == 1).float().mean().item() == pytest.approx(0.6, abs=0.025)


def test_correction_clicks_ignore_invalid_pixels_and_accept_logits():
    gt = torch.zeros(2, 6, 6, dtype=torch.bool)
    logits = torch.full((2, 6, 6), -5.0)
    logits[:, 5, :] = 5.0  # false positives on the last row only
    valid = torch.ones(6, 6, dtype=torch.bool)
    valid[5] = False
    _, labels = sample_correction_clicks(logits, gt, valid, gen())
    assert labels[:, 0].tolist() == [-1, -1]
    _, labels = sample_correction_clicks(logits, gt, None, gen())
    assert labels[:, 0].tolist() == [0, 0]
    with pytest.raises(ValueError, match="same shape"):
        sample_correction_clicks(logits[:1], gt)


def test_append_and_pad_prompts():
    points = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    labels = torch.tensor([[2, 3]])
    new_points, new_labels = torch.tensor([[[5.0, 6.0]]]), torch.tensor([[0]])
    p, lab = append_clicks(points, labels, new_points, new_labels)
    assert p.tolist() == [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]] and lab.tolist() == [[2, 3, 0]]
    with pytest.raises(ValueError, match="same N"):
        append_clicks(points, labels, new_points.expand(2, 1, 2), new_labels.expand(2, 1))
    padded, padded_labels = pad_prompts([(points, labels), (new_points, new_labels)])
    assert padded.shape == (2, 2, 2) and padded_labels.tolist() == [[2, 3], [0, -1]]
    empty_points, empty_labels = pad_prompts([])
    assert empty_points.shape == (0, 1, 2) and empty_labels.shape == (0, 1)


def test_prompt_functions_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        sample_points(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="image_size"):
        sample_boxes(torch.ones(2, 4, 4, dtype=torch.bool), image_size=torch.ones(3, 2))
