"""Pixel losses against torchvision / torch references and hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from samft.losses.pixel import bce, sigmoid_focal, weighted_bce
from samft.registry import LOSSES


def test_registered_names():
    for name in ("sigmoid_focal", "bce", "weighted_bce"):
        assert name in LOSSES.names()


def test_focal_hand_computed_values():
    # x=0,t=1: 0.25 * 0.5^2 * ln2; x=0,t=0: 0.75 * 0.5^2 * ln2; x=2,t=1 and x=-1,t=0 from the formula.
    logits = torch.tensor([[0.0, 0.0, 2.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    expected = [0.04332169878499658, 0.12996509635498973, 0.00045089070881009483, 0.016993543131350496]
    out = sigmoid_focal(logits, target, reduction="none")
    assert out[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert sigmoid_focal(logits, target).item() == pytest.approx(sum(expected) / 4, rel=1e-5)
    assert sigmoid_focal(logits, target, reduction="sum").item() == pytest.approx(sum(expected), rel=1e-5)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 0.0), (-1.0, 2.0), (0.25, 1.5), (0.9, 3.0)])
def test_focal_matches_torchvision(alpha, gamma):
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 8, 8) * 4
    target = torch.rand(4, 3, 8, 8)  # soft targets too
    ours = sigmoid_focal(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    ref = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        sigmoid_focal(logits, target, alpha=alpha, gamma=gamma),
        sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean"),
    )


def test_focal_gradient_matches_torchvision():
    torch.manual_seed(1)
    logits = (torch.randn(2, 16) * 3).requires_grad_()
    target = (torch.rand(2, 16) > 0.5).float()
    sigmoid_focal(logits, target, reduction="sum").backward()
    ours = logits.grad.clone()
    logits.grad = None
    sigmoid_focal_loss(logits, target, reduction="sum").backward()
    torch.testing.assert_close(ours, logits.grad)


def test_focal_ignored_pixels_have_no_value_and_no_gradient():
    logits = torch.tensor([[3.0, -2.0, 5.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, -1.0, 0.0, 1.0]])
    valid = torch.tensor([[True, True, True, False]])
    loss = sigmoid_focal(logits, target, valid=valid)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 3] == 0 and logits.grad[0, 2] != 0
    # Mean over the two counted pixels only.
    ref = sigmoid_focal_loss(logits[:, [0, 2]], torch.tensor([[1.0, 0.0]]), reduction="mean")
    torch.testing.assert_close(loss, ref)


def test_focal_rejects_negative_gamma():
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal(torch.zeros(1, 2), torch.zeros(1, 2), gamma=-1.0)


def test_bce_matches_torch_and_hand_value():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    # ln 2 and softplus(2) = ln(1 + e^2).
    expected = [math.log(2.0), math.log1p(math.exp(2.0))]
    assert bce(logits, target, reduction="none")[0].tolist() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(0)
    x, t = torch.randn(3, 10), torch.rand(3, 10)
    torch.testing.assert_close(bce(x, t), F.binary_cross_entropy_with_logits(x, t))


def test_weighted_bce_with_given_pos_weight_matches_torch():
    torch.manual_seed(0)
    x, t = torch.randn(3, 10), (torch.rand(3, 10) > 0.7).float()
    ref = F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(4.0))
    torch.testing.assert_close(weighted_bce(x, t, pos_weight=4.0), ref)
    per_class = torch.arange(1.0, 11.0)
    ref = F.binary_cross_entropy_with_logits(x, t, pos_weight=per_class)
    torch.testing.assert_close(weighted_bce(x, t, pos_weight=per_class), ref)


def test_weighted_bce_batch_weight_is_negatives_per_positive():
    # 1 positive, 3 negatives (one more pixel ignored) -> pos_weight 3.
    x = torch.zeros(1, 5)
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0, -1.0]])
    out = weighted_bce(x, t, reduction="none")
    assert out[0].tolist() == pytest.approx([3 * math.log(2.0)] + [math.log(2.0)] * 3 + [0.0], rel=1e-6)


def test_weighted_bce_clamps_batch_weight_without_foreground_or_background():
    x = torch.zeros(1, 4)
    no_fg = weighted_bce(x, torch.zeros(1, 4), reduction="none")
    assert no_fg[0].tolist() == pytest.approx([math.log(2.0)] * 4)  # pos weight irrelevant, finite
    no_bg = weighted_bce(x, torch.ones(1, 4), reduction="none", max_pos_weight=10.0)
    assert no_bg[0].tolist() == pytest.approx([0.1 * math.log(2.0)] * 4, rel=1e-6)
    with pytest.raises(ValueError, match="max_pos_weight"):
        weighted_bce(x, torch.ones(1, 4), max_pos_weight=0.5)
