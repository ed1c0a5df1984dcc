"""Shared loss helpers: reductions, ignore handling, per-mask means and call_loss dispatch."""

import functools

import pytest
import torch

from samft.losses import call_loss, per_mask
from samft.losses._common import broadcast_valid, check_pair, reduce, reduce_pixels, safe_ratio, split_ignore
from samft.registry import LOSSES


def test_reduce_modes_and_bad_reduction():
    values = torch.tensor([1.0, 2.0, 6.0])
    assert reduce(values, "mean").item() == 3.0
    assert reduce(values, "sum").item() == 9.0
    assert reduce(values, "none") is values
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce(values, "avg")


def test_reduce_pixels_mean_counts_only_kept_pixels_and_is_zero_without_any():
    values = torch.tensor([[2.0, 0.0, 4.0]])
    weight = torch.tensor([[1.0, 0.0, 1.0]])
    assert reduce_pixels(values, weight, "mean").item() == 3.0
    assert reduce_pixels(torch.zeros(1, 3), torch.zeros(1, 3), "mean").item() == 0.0


def test_split_ignore_marks_negative_targets_and_invalid_pixels():
    target = torch.tensor([[1.0, -1.0, 0.0, 1.0]])
    valid = torch.tensor([[True, True, True, False]])
    clean, weight = split_ignore(target, valid, torch.float32)
    assert clean.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert weight.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_broadcast_valid_accepts_channel_forms_and_rejects_mismatch():
    assert broadcast_valid(torch.ones(2, 1, 3, 4, dtype=torch.bool), torch.Size([2, 3, 4])).shape == (2, 3, 4)
    assert broadcast_valid(torch.ones(2, 3, 4), torch.Size([2, 5, 3, 4])).shape == (2, 5, 3, 4)
    with pytest.raises(ValueError, match="does not broadcast"):
        broadcast_valid(torch.ones(2, 5, 5, dtype=torch.bool), torch.Size([2, 3, 4]))


def test_per_mask_means_over_valid_pixels_and_skips_nan_in_invalid_ones():
    values = torch.tensor([[1.0, 3.0, float("nan")], [2.0, 2.0, 2.0], [5.0, 5.0, 5.0]])
    valid = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert per_mask(values, valid).tolist() == [2.0, 2.0, 0.0]
    assert per_mask(values[1:]).tolist() == [2.0, 5.0]


def test_safe_ratio_gives_the_empty_value_and_finite_gradient_at_zero_denominator():
    num = torch.tensor([1.0, 0.0], requires_grad=True)
    den = torch.tensor([2.0, 0.0], requires_grad=True)
    out = safe_ratio(num, den, empty=1.0)
    out.sum().backward()
    assert out.tolist() == [0.5, 1.0]
    assert torch.isfinite(num.grad).all() and torch.isfinite(den.grad).all()


def test_check_pair_errors_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        check_pair(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="floating-point"):
        check_pair(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        check_pair(torch.zeros(3), torch.zeros(3), min_dim=2)


EXTRAS = dict(iou_pred=1, candidates=2, valid=3, dist_map=4, num_masks=5, epoch=6, step=7)


def test_call_loss_passes_only_declared_keywords():
    def loss(logits, target, *, valid=None, epoch=0):
        return {"valid": valid, "epoch": epoch}

    assert call_loss(loss, 0, 0, **EXTRAS) == {"valid": 3, "epoch": 6}


def test_call_loss_passes_everything_to_var_keyword_losses():
    def loss(logits, target, **kwargs):
        return kwargs

    assert call_loss(loss, 0, 0, **EXTRAS) == EXTRAS


def test_call_loss_keeps_config_bound_options_over_extras():
    def loss(logits, target, *, num_masks=None, step=0):
        return num_masks, step

    assert call_loss(functools.partial(loss, num_masks=99), 0, 0, **EXTRAS) == (99, 7)


def test_call_loss_inspects_module_forward():
    class Loss(torch.nn.Module):
        def forward(self, logits, target, step=0):
            return step

    assert call_loss(Loss(), 0, 0, **EXTRAS) == 7


def test_call_loss_reports_a_missing_required_extra():
    def loss(logits, target, *, iou_pred):
        return iou_pred

    with pytest.raises(ValueError, match="requires iou_pred"):
        call_loss(loss, 0, 0, epoch=1)


def test_call_loss_with_registry_built_losses_and_real_tensors():
    logits, target = torch.zeros(2, 4, 4), torch.ones(2, 4, 4)
    dice = LOSSES.build({"name": "dice", "smooth": 0.0})
    # dice accepts valid but not iou_pred or epoch: an all-False valid mask makes every mask empty.
    out = call_loss(dice, logits, target, valid=torch.zeros(2, 4, 4, dtype=torch.bool), epoch=3, iou_pred=None)
    assert out.item() == 0.0
    sam = LOSSES.build({"name": "sam"})
    result = call_loss(sam, torch.zeros(2, 3, 4, 4), target, iou_pred=torch.zeros(2, 3), epoch=1, dist_map=None)
    assert set(result) == {"loss", "focal", "dice", "iou", "selected"}


def test_loss_terms_and_stats_split_a_loss_result():
    from samft.losses import loss_stats, loss_terms

    x = torch.ones(2, requires_grad=True)
    out = {"loss": x.sum() * 3, "focal": x.sum(), "dice": x.mean(), "coverage": torch.tensor(0.5),
           "boundary_weight": 0.01, "selected": torch.tensor([1, 2])}
    assert set(loss_terms(out)) == {"focal", "dice"}
    assert loss_stats(out) == {"coverage": 0.5, "boundary_weight": 0.01}
    assert set(loss_terms(x.sum())) == {"loss"} and loss_stats(x.sum()) == {}
    assert set(loss_terms({"loss": x.sum(), "coverage": torch.tensor(1.0)})) == {"loss"}  # no terms: the total
