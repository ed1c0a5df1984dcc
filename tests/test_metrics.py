"""Metrics against segment_anything's stability score, hand-computed IoUs and the boundary-IoU reference."""

import cv2
import numpy as np
import pytest
import torch
from segment_anything.utils.amg import calculate_stability_score

from samft.metrics import boundary_iou, mask_iou, stability_score
from samft.registry import METRICS


def test_registered():
    for name in ("stability_score", "mask_iou", "boundary_iou"):
        assert name in METRICS.names()
    assert METRICS.get("mask_iou") is mask_iou


def test_stability_score_equals_segment_anything():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 16, 16, generator=gen) * 3 + 1
    for threshold, offset in [(0.0, 1.0), (0.5, 0.25), (-1.0, 2.0)]:
        ref = calculate_stability_score(logits, threshold, offset)
        ours = stability_score(logits, mask_threshold=threshold, offset=offset)
        assert ours.shape == (5, 3) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref.float())


def test_stability_score_hand_computed_and_zero_over_zero():
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    # Mask 0: 1 pixel > 1, 3 pixels > -1 -> 1/3. Mask 1: 0/0 (SAM: NaN) -> 0.
    assert stability_score(logits).tolist() == pytest.approx([1 / 3, 0.0])
    assert torch.isnan(calculate_stability_score(logits, 0.0, 1.0)[1])


def test_mask_iou_hand_computed_with_logits_masks_ignore_and_empty():
    pred = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert mask_iou(pred, target).item() == pytest.approx(1 / 4)
    assert mask_iou(pred > 0, target).item() == pytest.approx(1 / 4)  # bool masks
    assert mask_iou((pred > 0).float(), target).item() == pytest.approx(1 / 4)  # 0/1 masks
    ignored = target.clone()
    ignored[0, 0, 1] = -1  # a false positive is ignored: 1 / 3
    assert mask_iou(pred, ignored).item() == pytest.approx(1 / 3)
    valid = torch.tensor([[[True, True], [False, True]]])
    assert mask_iou(pred, target, valid=valid).item() == pytest.approx(1 / 3)
    assert mask_iou(-torch.ones(2, 3, 3), torch.zeros(2, 3, 3)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="shape"):
        mask_iou(pred, target[:, :1])


def reference_mask_to_boundary(mask: np.ndarray, dilation_ratio: float) -> np.ndarray:
    """Cheng et al. 2021 (boundary-iou-api ``mask_to_boundary``), written out with OpenCV."""
    h, w = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)[1 : h + 1, 1 : w + 1]
    return mask - eroded


def reference_boundary_iou(gt: np.ndarray, dt: np.ndarray, dilation_ratio: float) -> float:
    gt_b = reference_mask_to_boundary(gt, dilation_ratio)
    dt_b = reference_mask_to_boundary(dt, dilation_ratio)
    inter = ((gt_b * dt_b) > 0).sum()
    union = ((gt_b + dt_b) > 0).sum()
    return inter / union


@pytest.mark.parametrize("ratio", [0.02, 0.05, 0.1])
def test_boundary_iou_matches_reference(ratio):
    rng = np.random.default_rng(0)
    preds, targets = [], []
    for _ in range(4):
        gt = np.zeros((40, 56), np.uint8)
        dt = np.zeros((40, 56), np.uint8)
        y, x = rng.integers(0, 20, 2)
        gt[y : y + rng.integers(5, 25), x : x + rng.integers(5, 40)] = 1
        dt[y + 2 : y + 22, x - 3 if x >= 3 else 0 : x + 30] = 1
        cv2.circle(dt, (int(rng.integers(0, 56)), int(rng.integers(0, 40))), 6, 1, -1)
        preds.append(dt)
        targets.append(gt)
    ours = boundary_iou(torch.from_numpy(np.stack(preds)).float(), torch.from_numpy(np.stack(targets)).float(),
                        dilation_ratio=ratio)
    ref = [reference_boundary_iou(g, d, ratio) for g, d in zip(targets, preds)]
    assert ours.tolist() == pytest.approx(ref, rel=1e-6)


def test_boundary_iou_hand_computed_border_and_empty():
    # 10x10 image, diag 14.1 -> band max(1, round(0.02 * 14.1)) = 1.
    target = torch.zeros(1, 10, 10)
    target[0, 2:8, 2:8] = 1  # boundary: 36 - 16 = 20 pixels
    pred = torch.zeros(1, 10, 10)
    pred[0, 2:8, 2:9] = 1  # boundary: 42 - 20 = 22 pixels, shares the left, top and bottom sides
    # Shared: left column 6 + top/bottom rows x=3..7 (5 each) = 16; union = 20 + 22 - 16 = 26.
    assert boundary_iou(pred, target).item() == pytest.approx(16 / 26)
    full = torch.ones(1, 10, 10)
    # A mask filling the image is all boundary along the border: 36 border pixels, matched exactly.
    assert boundary_iou(full, full).item() == 1.0
    assert boundary_iou(torch.zeros(2, 10, 10), torch.zeros(2, 10, 10)).tolist() == [1.0, 1.0]
    assert boundary_iou(pred * 5 - 1, target).item() == pytest.approx(16 / 26)  # logits work too
    with pytest.raises(ValueError, match="dilation_ratio"):
        boundary_iou(pred, target, dilation_ratio=0.0)
