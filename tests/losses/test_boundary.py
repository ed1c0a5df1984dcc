"""Signed distance maps, Kervadec's boundary loss and the scheduled region + boundary loss."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from samft.losses.boundary import boundary, region_boundary, signed_distance_map, signed_distance_maps
from samft.losses.overlap import dice
from samft.registry import LOSSES, SCHEDULES

FAST = settings(max_examples=30, deadline=None)
R2 = math.sqrt(2.0)


def kervadec_reference(mask: np.ndarray) -> np.ndarray:
    """The published formula, written out independently: edt(~m) * ~m - (edt(m) - 1) * m."""
    pos = mask.astype(bool)
    neg = ~pos
    return ndimage.distance_transform_edt(neg) * neg - (ndimage.distance_transform_edt(pos) - 1) * pos


# -- distance maps ---------------------------------------------------------------------------
def test_single_pixel_mask_hand_checked():
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    expected = np.array([[R2, 1, R2], [1, 0, 1], [R2, 1, R2]], dtype=np.float32)
    np.testing.assert_allclose(signed_distance_map(m), expected, rtol=1e-6)


def test_square_mask_hand_checked():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    expected = np.array(
        [[R2, 1, 1, 1, R2], [1, 0, 0, 0, 1], [1, 0, -1, 0, 1], [1, 0, 0, 0, 1], [R2, 1, 1, 1, R2]],
        dtype=np.float32,
    )
    out = signed_distance_map(m)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32 and not np.signbit(out[1, 1])  # 0, not -0


def test_empty_and_full_masks_give_zero_maps():
    assert np.array_equal(signed_distance_map(np.zeros((4, 6))), np.zeros((4, 6), np.float32))
    # scipy's transform of an all-foreground array is not a distance to anything: we return zeros
    assert ndimage.distance_transform_edt(np.ones((4, 6))).max() > 0
    assert np.array_equal(signed_distance_map(np.ones((4, 6))), np.zeros((4, 6), np.float32))


@FAST
@given(st.integers(2, 12), st.integers(2, 12), st.integers(0, 2**16), st.floats(0.05, 0.95))
def test_matches_independent_scipy_formula_and_sign_properties(h, w, seed, density):
    mask = np.random.default_rng(seed).random((h, w)) < density
    out = signed_distance_map(mask)
    if not mask.any() or mask.all():
        assert np.all(out == 0)
        return
    np.testing.assert_allclose(out, kervadec_reference(mask), rtol=1e-6, atol=1e-6)
    assert np.all(out[~mask] >= 1) and np.all(out[mask] <= 0)
    # 0 exactly on the inner boundary (foreground pixels with a 4-neighbour in the background)
    inner = mask & ~ndimage.binary_erosion(mask, border_value=1)
    assert np.all(out[inner] == 0)


def test_input_types_spacing_and_batch():
    m = np.zeros((6, 7), bool)
    m[2:5, 1:4] = True
    ref = signed_distance_map(m)
    for variant in (m.astype(np.float32), torch.from_numpy(m), np.where(m, 1.0, -1.0)):  # -1 = ignore -> background
        np.testing.assert_array_equal(signed_distance_map(variant), ref)
    spacing = (2.0, 0.5)
    expected = ndimage.distance_transform_edt(~m, sampling=spacing) * ~m - (
        ndimage.distance_transform_edt(m, sampling=spacing) - 0.5
    ) * m
    np.testing.assert_allclose(signed_distance_map(m, spacing=spacing), expected, rtol=1e-6)
    np.testing.assert_allclose(signed_distance_map(m, spacing=3.0), 3.0 * ref, rtol=1e-6)
    batch = np.stack([m, np.zeros_like(m), np.ones_like(m), ~m])
    maps = signed_distance_maps(torch.from_numpy(batch))
    assert maps.shape == batch.shape and maps.dtype == np.float32
    for i in range(4):
        np.testing.assert_array_equal(maps[i], signed_distance_map(batch[i]))
    with pytest.raises(ValueError, match="spacing"):
        signed_distance_map(m, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        signed_distance_maps(np.ones(3))


# -- boundary loss ---------------------------------------------------------------------------
def _one_pixel_case():
    target = torch.zeros(1, 3, 3)
    target[0, 1, 1] = 1.0
    dist = torch.from_numpy(signed_distance_maps(target))
    return target, dist


def test_boundary_hand_computed():
    target, dist = _one_pixel_case()
    logits = torch.zeros(1, 3, 3)
    assert boundary(logits, target, dist_map=dist).item() == pytest.approx(0.5 * (4 + 4 * R2) / 9)
    # corners ignored (target -1) -> only the 4 edge pixels (distance 1) and the centre count
    ignored = target.clone()
    ignored[0, ::2, ::2] = -1.0
    assert boundary(logits, ignored, dist_map=dist).item() == pytest.approx(0.5 * 4 / 5)
    # the same through an explicit valid mask
    valid = torch.ones(1, 3, 3, dtype=torch.bool)
    valid[0, ::2, ::2] = False
    assert boundary(logits, target, dist_map=dist, valid=valid).item() == pytest.approx(0.5 * 4 / 5)


def test_boundary_reductions_skip_masks_without_valid_pixels():
    target, dist = _one_pixel_case()
    target2 = torch.cat([target, torch.full_like(target, -1.0)])
    dist2 = torch.cat([dist, dist])
    logits = torch.zeros(2, 3, 3)
    per = boundary(logits, target2, dist_map=dist2, reduction="none")
    assert per.shape == (2,) and per[1].item() == 0.0
    expected = 0.5 * (4 + 4 * R2) / 9
    assert boundary(logits, target2, dist_map=dist2).item() == pytest.approx(expected)
    assert boundary(logits, target2, dist_map=dist2, reduction="sum").item() == pytest.approx(expected)


def test_boundary_perfect_prediction_is_the_minimum():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(3, 12, 12, generator=g) > 0.6).float()
    dist = torch.from_numpy(signed_distance_maps(target))
    perfect = torch.where(target > 0, 1e4, -1e4)
    best = boundary(perfect, target, dist_map=dist)
    assert best.item() == pytest.approx((dist.clamp(max=0).flatten(1).mean(1)).mean().item(), abs=1e-6)
    for _ in range(5):
        assert boundary(torch.randn(3, 12, 12, generator=g) * 3, target, dist_map=dist) >= best


def test_boundary_errors():
    target, dist = _one_pixel_case()
    with pytest.raises(ValueError, match="dist_map"):
        boundary(torch.zeros(1, 3, 3), target)
    with pytest.raises(ValueError, match="dist_map"):
        boundary(torch.zeros(1, 3, 3), target, dist_map=dist[:, :2])
    with pytest.raises(ValueError, match="same shape"):
        boundary(torch.zeros(1, 3, 4), target, dist_map=dist)


def test_boundary_non_finite_distance_at_ignored_pixel_keeps_grad_finite():
    target, dist = _one_pixel_case()
    target[0, 0, 0] = -1.0
    dist[0, 0, 0] = float("inf")
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    loss = boundary(logits, target, dist_map=dist)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad[0, 0, 0] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_extreme_logits_and_autocast_give_finite_grads(dtype):
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(2, 16, 16, generator=g) > 0.5).float()
    dist = torch.from_numpy(signed_distance_maps(target))
    logits = (torch.randn(2, 16, 16, generator=g).sign() * 1e4).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = region_boundary(logits.to(dtype), target, dist_map=dist, epoch=3)
        plain = boundary(logits.to(dtype), target, dist_map=dist)
    (out["loss"] + plain).backward()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"]) and torch.isfinite(plain)
    assert torch.isfinite(logits.grad).all()


@FAST
@given(st.integers(1, 5), st.integers(0, 2**16))
def test_boundary_invariant_to_batch_order(n, seed):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, 6, 6, generator=g) > 0.5).float()
    target[torch.rand(n, 6, 6, generator=g) > 0.8] = -1.0
    dist = torch.from_numpy(signed_distance_maps(target))
    logits = torch.randn(n, 6, 6, generator=g)
    perm = torch.randperm(n, generator=g)
    torch.testing.assert_close(
        boundary(logits[perm], target[perm], dist_map=dist[perm]), boundary(logits, target, dist_map=dist)
    )


# -- region + boundary -----------------------------------------------------------------------
def _weights(epoch, **options):
    target, dist = _one_pixel_case()
    out = region_boundary(torch.zeros(1, 3, 3), target, dist_map=dist, epoch=epoch, **options)
    return out["region_weight"].item(), out["boundary_weight"].item()


@pytest.mark.parametrize(
    "epoch, region, bound", [(0, 1.0, 0.01), (1, 0.99, 0.02), (50, 0.5, 0.51), (90, 0.1, 0.91), (150, 0.1, 1.51)]
)
def test_schedule_values(epoch, region, bound):
    r, b = _weights(epoch)
    assert r == pytest.approx(region) and b == pytest.approx(bound)


def test_schedule_constants_are_configurable():
    r, b = _weights(10, boundary_start=0.1, boundary_step=0.05, boundary_max=0.4,
                    region_start=2.0, region_step=0.5, region_floor=0.25)
    assert (r, b) == (pytest.approx(0.25), pytest.approx(0.4))
    with pytest.raises(ValueError, match="epoch"):
        _weights(-1)


def test_region_boundary_weights_are_the_boundary_transfer_schedule():
    """One implementation of Kervadec's transfer: the loss's weights at epoch e are the registered
    ``boundary_transfer`` schedule at step e with one step per epoch."""
    options = {"rate": 0.03, "region_start": 1.5, "region_floor": 0.2}
    region = SCHEDULES.build({"name": "boundary_transfer", "role": "region", "steps_per_epoch": 1, **options})
    bound = SCHEDULES.build({"name": "boundary_transfer", "role": "boundary", "steps_per_epoch": 1, "rate": 0.02,
                             "boundary_start": 0.05, "boundary_max": 0.5})
    for epoch in (0, 1, 7, 30, 60):
        r, b = _weights(epoch, region_step=0.03, region_start=1.5, region_floor=0.2, boundary_step=0.02,
                        boundary_start=0.05, boundary_max=0.5)
        assert r == pytest.approx(region(epoch), rel=1e-6) and b == pytest.approx(bound(epoch), rel=1e-6)


def test_region_boundary_combines_dice_and_boundary():
    g = torch.Generator().manual_seed(2)
    target = (torch.rand(2, 10, 10, generator=g) > 0.5).float()
    dist = torch.from_numpy(signed_distance_maps(target))
    logits = torch.randn(2, 10, 10, generator=g, requires_grad=True)
    valid = torch.ones(2, 10, 10, dtype=torch.bool)
    valid[:, :, 8:] = False
    out = region_boundary(logits, target, dist_map=dist, epoch=40, valid=valid)
    d = dice(logits, target, valid=valid)
    b = boundary(logits, target, dist_map=dist, valid=valid)
    torch.testing.assert_close(out["dice"], d.detach())
    torch.testing.assert_close(out["boundary"], b.detach())
    torch.testing.assert_close(out["loss"], 0.6 * d + 0.41 * b)
    assert out["region_weight"].item() == pytest.approx(0.6) and out["boundary_weight"].item() == pytest.approx(0.41)
    # only the scheduled total carries the gradient, so a trainer cannot re-weight the parts
    assert out["loss"].requires_grad and not out["dice"].requires_grad and not out["boundary"].requires_grad
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()


def test_region_boundary_needs_epoch_and_builds_from_registry():
    target, dist = _one_pixel_case()
    with pytest.raises(ValueError, match="epoch"):
        region_boundary(torch.zeros(1, 3, 3), target, dist_map=dist)
    loss = LOSSES.build({"name": "region_boundary", "region_floor": 0.5})
    assert loss(torch.zeros(1, 3, 3), target, dist_map=dist, epoch=80)["region_weight"].item() == 0.5
    assert "boundary" in LOSSES.names()
