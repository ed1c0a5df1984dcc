"""Composite losses: ``combined`` (weighted sum of named terms) and ``multi_granularity`` (levels of one mask loss)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samft.losses import regression  # noqa: F401 - registers masked_mse and mse used by name below
from samft.losses.boundary import signed_distance_maps
from samft.losses.composite import Combined, MultiGranularity
from samft.losses.overlap import dice
from samft.losses.pixel import sigmoid_focal
from samft.losses.sam import sam_mask
from samft.registry import LOSSES, RegistryError

FAST = settings(max_examples=25, deadline=None)


def _batch(seed=0, n=3, size=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, size, size, generator=g) * 2
    target = (torch.rand(n, size, size, generator=g) > 0.6).float()
    return logits, target


# -- combined --------------------------------------------------------------------------------
def test_combined_is_the_weighted_sum_of_its_terms():
    logits, target = _batch()
    loss = LOSSES.build({"name": "combined", "terms": {
        "focal": {"name": "sigmoid_focal", "weight": 20, "gamma": 2.0},
        "dice": {"weight": 1},  # name defaults to the key
    }})
    out = loss(logits, target)
    focal, d = sigmoid_focal(logits, target), dice(logits, target)
    torch.testing.assert_close(out["focal"], focal)
    torch.testing.assert_close(out["dice"], d)
    torch.testing.assert_close(out["loss"], 20 * focal + d)
    assert set(out) == {"loss", "focal", "dice"}
    # the terms keep their gradient: the trainer's weighting strategy recombines them
    assert out["focal"].requires_grad is False  # inputs carry no grad here
    leaf = logits.clone().requires_grad_()
    again = loss(leaf, target)
    assert again["focal"].requires_grad and again["dice"].requires_grad


def test_combined_passes_extras_only_to_terms_that_accept_them():
    logits, target = _batch(1)
    dist = torch.from_numpy(signed_distance_maps(target))
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[:, :, -2:] = False
    loss = Combined({"dice": {"weight": 1.0}, "boundary": {"weight": 0.5}, "rb": {"name": "region_boundary"}})
    out = loss(logits, target, dist_map=dist, valid=valid, epoch=10, step=7, iou_pred=torch.zeros(3))
    b = LOSSES.get("boundary")(logits, target, dist_map=dist, valid=valid)
    torch.testing.assert_close(out["dice"], dice(logits, target, valid=valid))
    torch.testing.assert_close(out["boundary"], b)
    torch.testing.assert_close(out["loss"], out["dice"] + 0.5 * b + out["rb"])
    # a dict-returning term contributes its loss; its parts are reported detached
    assert out["rb/region_weight"].item() == pytest.approx(0.9)
    assert not out["rb/dice"].requires_grad


def test_combined_dict_term_and_bare_name_and_weight_zero():
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = (torch.rand(2, 1, 4, 4) > 0.5).float()
    out = Combined({"mm": "masked_mse", "mse": {"weight": 0.0}})(pred, target, mask=mask)
    from samft.losses.regression import masked_mse, mse

    torch.testing.assert_close(out["mm"], masked_mse(pred, target, mask=mask)["loss"])
    torch.testing.assert_close(out["mse"], mse(pred, target))
    torch.testing.assert_close(out["loss"], out["mm"])
    assert {"mm/mse_c0", "mm/coverage", "mm/valid_pixels"} <= set(out)


@pytest.mark.parametrize(
    "terms, error, match",
    [
        ({}, ValueError, "non-empty"),
        ({"loss": {"name": "dice"}}, ValueError, "reserved"),
        ({"dice": {"weight": float("nan")}}, ValueError, "finite"),
        ({"dice": {"weight": "1"}}, ValueError, "finite"),
        ({"dcie": {}}, RegistryError, "Did you mean 'dice'"),
        ({"dice": {"smoth": 1.0}}, RegistryError, "smooth"),
        ({"dice": 3}, ValueError, "expected a loss name"),
    ],
)
def test_combined_config_errors(terms, error, match):
    with pytest.raises(error, match=match):
        Combined(terms)


def test_combined_term_returning_a_map_is_rejected():
    with pytest.raises(ValueError, match="scalar"):
        Combined({"dice": {"reduction": "none"}})(*_batch())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_combined_extreme_logits_under_autocast(dtype):
    logits, target = _batch(2)
    logits = (logits.sign() * 1e4).requires_grad_()
    dist = torch.from_numpy(signed_distance_maps(target))
    loss = Combined({"focal": {"name": "sigmoid_focal", "weight": 20}, "dice": {}, "boundary": {"weight": 0.01}})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(logits.to(dtype), target, dist_map=dist)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(logits.grad).all()


def test_combined_perfect_prediction_is_about_zero():
    _, target = _batch(3)
    perfect = torch.where(target > 0, 30.0, -30.0)
    out = Combined({"focal": {"name": "sigmoid_focal", "weight": 20}, "dice": {"smooth": 1.0}})(perfect, target)
    assert out["loss"].item() < 1e-6


# -- multi_granularity -----------------------------------------------------------------------
def test_multi_granularity_weighted_mean_over_levels():
    levels = [_batch(s, size=s + 4) for s in range(3)]  # levels may differ in resolution
    logits, targets = [lv[0] for lv in levels], [lv[1] for lv in levels]
    per_level = [sam_mask(x, t)["loss"] for x, t in levels]
    out = MultiGranularity(weights=[1.0, 2.0, 3.0])(logits, targets)  # default loss: sam_mask
    expected = (per_level[0] + 2 * per_level[1] + 3 * per_level[2]) / 6.0
    torch.testing.assert_close(out["loss"], expected)
    for i, v in enumerate(per_level):
        torch.testing.assert_close(out[f"level_{i}"], v)
    # normalising by the number of levels stays available (a mean only when the weights sum to it)
    counted = MultiGranularity(weights=[1.0, 2.0, 3.0], normalize="count")(logits, targets)
    torch.testing.assert_close(counted["loss"], expected * 6.0 / 3.0)


def test_multi_granularity_level_dim_and_weight_scale_invariance():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 6, 6, generator=g)  # [N, L, H, W]
    target = (torch.rand(2, 3, 6, 6, generator=g) > 0.5).float()
    loss = MultiGranularity(loss="dice", weights=[0.2, 0.3, 0.5])
    out = loss(logits, target)
    expected = sum(w * dice(logits[:, i], target[:, i]) for i, w in enumerate([0.2, 0.3, 0.5]))
    torch.testing.assert_close(out["loss"], expected)
    scaled = MultiGranularity(loss="dice", weights=[2.0, 3.0, 5.0])(logits, target)
    torch.testing.assert_close(scaled["loss"], out["loss"])
    # default weights: plain mean; level dim last
    last_dim = MultiGranularity(loss={"name": "dice", "smooth": 0.5}, level_dim=-1)
    last = last_dim(logits.movedim(1, -1), target.movedim(1, -1))
    mean = sum(dice(logits[:, i], target[:, i], smooth=0.5) for i in range(3)) / 3
    torch.testing.assert_close(last["loss"], mean)


def test_multi_granularity_passes_extras_and_keeps_gradient():
    logits, target = _batch(6)
    leaf = torch.stack([logits, logits]).requires_grad_()
    out = MultiGranularity(loss="sam_mask")(list(leaf), [target, target], num_masks=6.0)
    single = sam_mask(logits, target, num_masks=6.0)["loss"]
    torch.testing.assert_close(out["loss"], single)
    out["loss"].backward()
    assert torch.isfinite(leaf.grad).all() and not out["level_0"].requires_grad


@pytest.mark.parametrize(
    "kwargs, call, match",
    [
        ({"normalize": "sum"}, None, "normalize"),
        ({"weights": [1.0, -1.0]}, None, "weights"),
        ({"weights": [0.0, 0.0]}, None, "weights"),
        ({"weights": [1.0, 1.0, 1.0]}, 2, "3 weights for 2 levels"),
        ({}, "mismatch", "levels"),
        ({}, "scalar", "level dim"),
    ],
)
def test_multi_granularity_errors(kwargs, call, match):
    logits, target = _batch()
    with pytest.raises(ValueError, match=match):
        loss = MultiGranularity(loss="dice", **kwargs)
        if call == 2:
            loss([logits, logits], [target, target])
        elif call == "mismatch":
            loss([logits, logits], [target])
        elif call == "scalar":
            loss(torch.zeros(3), torch.zeros(3))


@FAST
@given(st.integers(1, 4), st.integers(0, 2**16))
def test_properties_non_negative_and_batch_order_invariant(n, seed):
    logits, target = _batch(seed, n=n, size=5)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    combined = Combined({"focal": {"name": "sigmoid_focal", "weight": 20}, "dice": {}})
    multi = MultiGranularity(loss="dice", weights=[1.0, 3.0])
    for fn in (lambda x, t: combined(x, t), lambda x, t: multi([x, x * 0.5], [t, t])):
        value = fn(logits, target)["loss"]
        assert value.item() >= 0
        torch.testing.assert_close(fn(logits[perm], target[perm])["loss"], value)
