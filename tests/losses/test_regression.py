"""Regression losses: mse, masked_mse, spectral_angle, acb_mse, against hand-computed values and loops."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samft.losses.regression import acb_mse, masked_mse, mse, spectral_angle
from samft.registry import LOSSES

FAST = settings(max_examples=30, deadline=None)


def test_registered_names():
    for name in ("mse", "masked_mse", "spectral_angle", "acb_mse"):
        assert name in LOSSES.names()


# -- mse -------------------------------------------------------------------------------------
def test_mse_values_and_reductions():
    pred = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert mse(pred, target).item() == pytest.approx((1 + 4 + 4 + 0) / 4)
    assert mse(pred, target, reduction="sum").item() == pytest.approx(9.0)
    assert torch.equal(mse(pred, target, reduction="none"), torch.tensor([[1.0, 4.0], [4.0, 0.0]]))
    with pytest.raises(ValueError, match="same shape"):
        mse(pred, target[:1])
    with pytest.raises(ValueError, match="reduction"):
        mse(pred, target, reduction="avg")


# -- masked_mse ------------------------------------------------------------------------------
def test_masked_mse_hand_computed():
    # channel 0 errors (1, 2), channel 1 errors (3, 5); only pixel 0 is masked
    pred = torch.tensor([[[[1.0, 2.0]], [[3.0, 5.0]]]])  # [1, 2, 1, 2]
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[[0.6, 0.4]]]])  # [1, 1, 1, 2], binarised at 0.5 -> (1, 0)
    out = masked_mse(pred, target, mask=mask)
    assert out["mse_c0"].item() == pytest.approx(1.0)
    assert out["mse_c1"].item() == pytest.approx(9.0)
    assert out["loss"].item() == pytest.approx(5.0)
    assert out["coverage"].item() == pytest.approx(0.5)
    assert out["valid_pixels"].item() == 1 and out["total_pixels"].item() == 2


def test_masked_mse_pools_pixels_over_the_batch():
    pred = torch.tensor([[[[2.0, 0.0]]], [[[1.0, 3.0]]]])  # [2, 1, 1, 2]
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # [N, H, W] form
    out = masked_mse(pred, target, mask=mask)
    assert out["loss"].item() == pytest.approx((4 + 1 + 9) / 3)
    assert out["valid_pixels"].item() == 3 and out["total_pixels"].item() == 4


def test_masked_mse_without_mask_is_channel_mean_of_mse():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    out = masked_mse(pred, target)
    ref = ((pred - target) ** 2).mean(dim=(0, 2, 3))
    torch.testing.assert_close(out["loss"], ref.mean())
    assert out["coverage"].item() == 1.0


def test_masked_mse_channel_mask_skips_empty_channel():
    pred = torch.tensor([[[[1.0]], [[7.0]]]])  # [1, 2, 1, 1]
    mask = torch.tensor([[[[1.0]], [[0.0]]]])  # channel 1 has no masked pixel
    out = masked_mse(pred, torch.zeros_like(pred), mask=mask)
    assert out["loss"].item() == pytest.approx(1.0)
    assert out["mse_c1"].item() == 0.0


def test_masked_mse_empty_mask_zero_with_graph_and_nan_outside_mask():
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 3, 4, 4), float("nan"))
    out = masked_mse(pred, target, mask=torch.zeros(2, 1, 4, 4))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert pred.grad is not None and torch.all(pred.grad == 0)
    # NaN padding outside a non-empty mask must not reach value or gradient
    pred.grad = None
    target[:, :, :2] = 0.5
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1.0
    out = masked_mse(pred, target, mask=mask)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(pred.grad).all()
    assert torch.all(pred.grad[:, :, 2:] == 0)


def test_masked_mse_only_loss_carries_grad_and_bad_mask_shape():
    pred = torch.randn(1, 2, 3, 3, requires_grad=True)
    out = masked_mse(pred, torch.zeros(1, 2, 3, 3))
    assert out["loss"].requires_grad and not out["mse_c0"].requires_grad
    with pytest.raises(ValueError, match="mask"):
        masked_mse(pred, torch.zeros(1, 2, 3, 3), mask=torch.ones(1, 3, 3, 3))


# -- spectral_angle --------------------------------------------------------------------------
def _pixels(*vectors):
    """[1, C, 1, P] from P spectra of C channels."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, len(vectors[0]), 1, len(vectors))


@pytest.mark.parametrize(
    "p, t, angle",
    [((1.0, 0.0), (0.0, 1.0), math.pi / 2), ((1.0, 1.0), (3.0, 0.0), math.pi / 4),
     ((-2.0, -1.0), (4.0, 2.0), math.pi), ((0.5, 0.25), (2.0, 1.0), 0.0), ((0.0, 0.0), (1.0, 2.0), math.pi / 2)],
)
def test_spectral_angle_hand_computed(p, t, angle):
    assert spectral_angle(_pixels(p), _pixels(t)).item() == pytest.approx(angle, abs=1e-6)


def test_spectral_angle_mean_over_valid_pixels_only():
    pred = _pixels((1.0, 0.0), (1.0, 1.0), (5.0, 5.0))
    target = _pixels((0.0, 1.0), (1.0, 0.0), (0.0, 0.0))  # last target has no direction
    assert spectral_angle(pred, target).item() == pytest.approx((math.pi / 2 + math.pi / 4) / 2, abs=1e-6)
    mask = torch.tensor([[[1.0, 0.0, 1.0]]])  # [N, H, W]: drop the pi/4 pixel
    assert spectral_angle(pred, target, mask=mask).item() == pytest.approx(math.pi / 2, abs=1e-6)
    amap = spectral_angle(pred, target, reduction="none")
    assert amap.shape == (1, 1, 3) and amap[0, 0, 2].item() == 0.0


def test_spectral_angle_matches_acos_reference():
    torch.manual_seed(1)
    pred, target = torch.randn(3, 5, 4, 4, dtype=torch.float64), torch.randn(3, 5, 4, 4, dtype=torch.float64)
    cos = (pred * target).sum(1) / (pred.norm(dim=1) * target.norm(dim=1))
    ref = torch.acos(cos).mean()
    assert spectral_angle(pred, target).item() == pytest.approx(ref.item(), abs=1e-5)
    # gradients agree with the acos formula where acos is smooth
    p32 = pred.float().requires_grad_()
    spectral_angle(p32, target.float()).backward()
    p_ref = pred.clone().requires_grad_()
    c = (p_ref * target).sum(1) / (p_ref.norm(dim=1) * target.norm(dim=1))
    torch.acos(c).mean().backward()
    torch.testing.assert_close(p32.grad.double(), p_ref.grad, atol=1e-4, rtol=1e-3)


def test_spectral_angle_perfect_prediction_zero_with_finite_grad():
    target = torch.rand(2, 4, 3, 3) + 0.1
    pred = (target * 3.0).requires_grad_()
    loss = spectral_angle(pred, target)
    assert loss.item() < 1e-6
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_spectral_angle_no_valid_pixel_and_extremes():
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = spectral_angle(pred, torch.zeros(1, 3, 2, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)
    # huge, tiny and zero predictions, NaN targets at excluded pixels
    pred = torch.tensor([1e4, -1e4, 1e-30, 0.0]).reshape(1, 1, 1, 4).repeat(1, 3, 1, 1).requires_grad_()
    target = torch.rand(1, 3, 1, 4) + 0.1
    target[0, :, 0, 3] = float("nan")
    loss = spectral_angle(pred, target, mask=torch.tensor([[[1.0, 1.0, 1.0, 0.0]]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_spectral_angle_bf16_autocast():
    pred = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.rand(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = spectral_angle(pred.bfloat16(), target.bfloat16())
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(pred.grad).all()


# -- acb_mse ---------------------------------------------------------------------------------
def test_acb_mse_hand_computed_and_weights():
    pred = torch.tensor([1.0, 0.0, 1.0])
    target = torch.tensor([0.0, 0.0, 2.0])
    assert acb_mse(pred, target).item() == pytest.approx(0.5 + 1.0)
    assert acb_mse(pred, target, zero_weight=2.0, nonzero_weight=3.0).item() == pytest.approx(1.0 + 3.0)


def test_acb_mse_empty_class_contributes_zero():
    pred = torch.tensor([[1.0, 3.0]])
    assert acb_mse(pred, torch.zeros(1, 2)).item() == pytest.approx(5.0)  # no non-zero class
    assert acb_mse(pred, torch.ones(1, 2)).item() == pytest.approx(2.0)  # no zero class


def test_acb_mse_gradient_matches_hand_derivative():
    pred = torch.tensor([1.0, 0.5, 1.0, 4.0], requires_grad=True)
    target = torch.tensor([0.0, 0.0, 2.0, 0.0])
    acb_mse(pred, target, zero_weight=2.0, nonzero_weight=3.0).backward()
    # d/dp A/Nz sum (p - t)^2 = 2 A (p - t) / Nz, Nz = 3; non-zero class: 2 B (p - t) / 1
    expected = torch.tensor([2 * 2 * 1.0 / 3, 2 * 2 * 0.5 / 3, 2 * 3 * (1.0 - 2.0), 2 * 2 * 4.0 / 3])
    torch.testing.assert_close(pred.grad, expected)


def test_regression_losses_finite_under_bf16_autocast_and_large_values():
    pred = (torch.randn(2, 3, 4, 4) * 1e4).requires_grad_()
    target = torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [acb_mse(pred.bfloat16(), target), mse(pred.bfloat16(), target),
                  masked_mse(pred.bfloat16(), target)["loss"]]
    total = sum(losses)
    total.backward()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses)
    assert torch.isfinite(pred.grad).all()


# -- properties ------------------------------------------------------------------------------
@st.composite
def regression_batch(draw):
    n, c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, c, h, w, generator=g)
    target = torch.randn(n, c, h, w, generator=g) * (torch.rand(n, c, h, w, generator=g) > 0.5)
    mask = (torch.rand(n, 1, h, w, generator=g) > 0.3).float()
    perm = torch.randperm(n, generator=g)
    return pred, target, mask, perm


@FAST
@given(regression_batch())
def test_properties_non_negative_and_batch_order_invariant(batch):
    pred, target, mask, perm = batch
    results = {
        "masked_mse": lambda p, t, m: masked_mse(p, t, mask=m)["loss"],
        "spectral_angle": lambda p, t, m: spectral_angle(p, t, mask=m),
        "acb_mse": lambda p, t, m: acb_mse(p, t, zero_weight=0.7, nonzero_weight=1.3),
    }
    for name, fn in results.items():
        value = fn(pred, target, mask)
        assert value.item() >= 0, name
        torch.testing.assert_close(fn(pred[perm], target[perm], mask[perm]), value, msg=name)
    assert spectral_angle(pred, target, mask=mask).item() <= math.pi + 1e-6
