"""Region losses: hand-computed values, empty-target behaviour and the Lovasz reference algorithm."""

import math

import numpy as np
import pytest
import torch

from samft.losses.overlap import dice, generalized_dice, lovasz_grad, lovasz_hinge, soft_iou
from samft.registry import LOSSES

PERFECT = 30.0  # logits of a confident, correct prediction


def test_registered_names():
    for name in ("dice", "generalized_dice", "soft_iou", "lovasz_hinge"):
        assert name in LOSSES.names()


def test_dice_hand_computed():
    # p = [0.5, 0.5], t = [1, 0]: I = 0.5, sum p = 1, sum t = 1.
    logits, target = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    assert dice(logits, target).item() == pytest.approx(1 - 2 / 3)  # (2*0.5 + 1) / (2 + 1)
    assert dice(logits, target, smooth=0.0).item() == pytest.approx(0.5)
    assert dice(logits, target, squared=True).item() == pytest.approx(1 - 2 / 2.5)  # sum p^2 = 0.5


def test_dice_reductions_are_per_mask():
    logits = torch.zeros(2, 2)
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    per = dice(logits, target, smooth=0.0, reduction="none")
    assert per.tolist() == pytest.approx([0.5, 1 - 2 / 3])
    assert dice(logits, target, smooth=0.0, reduction="sum").item() == pytest.approx(per.sum().item())


def test_dice_empty_target_behaviour():
    target = torch.zeros(1, 4)
    # smooth 1: 1 - 1 / (sum p + 1) with sum p = 2.
    assert dice(torch.zeros(1, 4), target).item() == pytest.approx(1 - 1 / 3)
    # Confident empty prediction: ~0. smooth 0 and nothing predicted: defined as 0.
    assert dice(torch.full((1, 4), -PERFECT), target).item() == pytest.approx(0.0, abs=1e-9)
    assert dice(torch.full((1, 4), -1e4), target, smooth=0.0).item() == 0.0
    # smooth 0 with a non-empty prediction: 1, with zero gradient.
    logits = torch.zeros(1, 4, requires_grad=True)
    loss = dice(logits, target, smooth=0.0)
    loss.backward()
    assert loss.item() == 1.0 and logits.grad.abs().max() == 0


def test_dice_ignore_and_valid():
    logits = torch.tensor([[0.0, 0.0, 5.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, -1.0]])
    loss = dice(logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(1 - 2 / 3)
    assert logits.grad[0, 2] == 0
    valid = torch.tensor([[True, True, False]])
    assert dice(logits, target.clamp(min=0), valid=valid).item() == pytest.approx(1 - 2 / 3)


def test_soft_iou_hand_computed():
    logits, target = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    # I = 0.5, union = 1 + 1 - 0.5 = 1.5.
    assert soft_iou(logits, target).item() == pytest.approx(1 - 1.5 / 2.5)
    assert soft_iou(logits, target, smooth=0.0).item() == pytest.approx(1 - 0.5 / 1.5)
    assert soft_iou(torch.full((1, 4), -1e4), torch.zeros(1, 4), smooth=0.0).item() == 0.0


def test_generalized_dice_hand_computed_with_an_empty_class():
    # Class 0 fills both pixels (w = 1/4), class 1 is empty (inf -> the largest finite weight, 1/4).
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # num = 2 * (1 * 1/4 + 0), den = (1 + 2) / 4 + (1 + 0) / 4 = 1.
    assert generalized_dice(logits, target, smooth=0.0).item() == pytest.approx(0.5)
    assert generalized_dice(logits, target).item() == pytest.approx(1 - (0.5 + 1e-5) / (1 + 1e-5))


def test_generalized_dice_softmax_hand_computed():
    # p = softmax([ln 3, 0]) = [0.75, 0.25] on both pixels; targets one-hot, w = [1, 1].
    logits = torch.tensor([[[math.log(3.0)] * 2, [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # num = 2 * (0.75 + 0.25) = 2, den = (1.5 + 1) + (0.5 + 1) = 4.
    assert generalized_dice(logits, target, activation="softmax", smooth=0.0).item() == pytest.approx(0.5)
    # sigmoid: p = [0.75, 0.75] and [0.5, 0.5]: num = 2 * (0.75 + 0.5), den = (1.5 + 1) + (1 + 1).
    assert generalized_dice(logits, target, smooth=0.0).item() == pytest.approx(1 - 2.5 / 4.5)


def test_generalized_dice_all_empty_sample_is_zero_and_options_checked():
    assert generalized_dice(torch.randn(2, 3, 4), torch.zeros(2, 3, 4), reduction="none").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="activation"):
        generalized_dice(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), activation="relu")
    with pytest.raises(ValueError, match="at least 3"):
        generalized_dice(torch.zeros(1, 2), torch.zeros(1, 2))


def test_generalized_dice_softmax_ignores_a_pixel_in_all_classes():
    logits = torch.randn(1, 2, 3, requires_grad=True)
    target = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]])
    generalized_dice(logits, target, activation="softmax").backward()
    assert logits.grad[0, :, 2].abs().max() == 0
    expected = generalized_dice(logits[:, :, :2], target[:, :, :2], activation="softmax")
    torch.testing.assert_close(generalized_dice(logits, target, activation="softmax"), expected)


def reference_lovasz_hinge_flat(logits: np.ndarray, labels: np.ndarray) -> float:
    """Berman et al. 2018, Alg. 1, written straightforwardly (loops, no vectorisation)."""
    if len(labels) == 0:
        return 0.0
    errors = [1.0 - x * (2.0 * y - 1.0) for x, y in zip(logits, labels)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    gts = sum(labels)
    loss, previous, seen_fg, seen_bg = 0.0, 0.0, 0, 0
    for i in order:
        seen_fg += labels[i]
        seen_bg += 1 - labels[i]
        jaccard = 1.0 - (gts - seen_fg) / (gts + seen_bg)
        loss += max(errors[i], 0.0) * (jaccard - previous)
        previous = jaccard
    return loss


def test_lovasz_hand_computed():
    # errors [-1, 0, 1.5]; sorted: 1.5 (bg), 0 (bg), -1 (fg); J = [1/2, 2/3, 1] -> loss = 1.5 / 2.
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    assert lovasz_hinge(logits, target).item() == pytest.approx(0.75)
    assert reference_lovasz_hinge_flat([2.0, -1.0, 0.5], [1, 0, 0]) == pytest.approx(0.75)


def test_lovasz_grad_first_entries():
    grad = lovasz_grad(torch.tensor([[False, False, True]]))
    assert grad[0].tolist() == pytest.approx([0.5, 1 / 6, 1 / 3])
    assert grad.sum().item() == pytest.approx(1.0)  # telescopes to J_last = 1


def test_lovasz_matches_reference_per_image_and_per_batch_with_ignore():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 6, generator=gen) * 2
    target = (torch.rand(3, 5, 6, generator=gen) > 0.6).float()
    target[0, 0, :3] = -1.0
    target[2] = 0.0
    keep = target >= 0
    per = lovasz_hinge(logits, target, reduction="none")
    for i in range(3):
        ref = reference_lovasz_hinge_flat(logits[i][keep[i]].tolist(), target[i][keep[i]].int().tolist())
        assert per[i].item() == pytest.approx(ref, rel=1e-5)
    batch = lovasz_hinge(logits, target, per_image=False)
    ref = reference_lovasz_hinge_flat(logits[keep].tolist(), target[keep].int().tolist())
    assert batch.item() == pytest.approx(ref, rel=1e-5)
    assert lovasz_hinge(logits, target).item() == pytest.approx(per.mean().item())


def test_lovasz_ignored_pixels_get_no_gradient_and_empty_image_is_zero():
    logits = torch.randn(2, 8, requires_grad=True)
    target = torch.tensor([[1, 0, -1, 1, 0, -1, 0, 1], [-1] * 8]).float()
    per = lovasz_hinge(logits, target, reduction="none")
    per.sum().backward()
    assert per[1].item() == 0.0
    assert logits.grad[0, [2, 5]].abs().max() == 0 and logits.grad[1].abs().max() == 0


@pytest.mark.parametrize("loss", [dice, soft_iou, lovasz_hinge])
def test_perfect_prediction_gives_zero(loss):
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    logits = (2 * target - 1) * PERFECT
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_generalized_dice_perfect_prediction_gives_zero():
    target = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    assert generalized_dice((2 * target - 1) * PERFECT, target).item() == pytest.approx(0.0, abs=1e-6)
    assert generalized_dice(target * PERFECT, target, activation="softmax").item() == pytest.approx(0.0, abs=1e-6)
