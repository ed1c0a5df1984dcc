"""DWA: weights 1 for two epochs, then T softmax(ratio / temperature); epoch_end checks."""

from __future__ import annotations

import math

import pytest
import torch

from samft.registry import WEIGHTINGS
from samft.weighting import DynamicWeightAverage

TERMS = ["focal", "dice", "iou"]
LOSSES = {t: torch.tensor(1.0) for t in TERMS}


def test_first_two_epochs_use_weight_one():
    dwa = WEIGHTINGS.build({"name": "dwa"}, terms=TERMS)
    assert dwa(LOSSES, 0)[1] == {t: 1.0 for t in TERMS}
    dwa.epoch_end({"focal": 0.2, "dice": 0.5, "iou": 0.1})
    assert dwa(LOSSES, 10)[1] == {t: 1.0 for t in TERMS}


def test_weights_follow_the_formula_by_hand():
    dwa = DynamicWeightAverage(TERMS)  # temperature 2
    dwa.epoch_end({"focal": 0.2, "dice": 0.5, "iou": 0.1})
    dwa.epoch_end({"focal": 0.1, "dice": 0.5, "iou": 0.2})
    ratios = [0.5, 1.0, 2.0]
    e = [math.exp(r / 2.0) for r in ratios]
    expected = {t: 3 * v / sum(e) for t, v in zip(TERMS, e)}
    losses = {"focal": torch.tensor(0.3), "dice": torch.tensor(0.4), "iou": torch.tensor(0.5)}
    total, weights = dwa(losses, 20)
    assert weights == pytest.approx(expected, rel=1e-12)
    assert sum(weights.values()) == pytest.approx(3.0)
    assert total.item() == pytest.approx(sum(expected[t] * float(losses[t]) for t in TERMS), rel=1e-6)
    # the next epoch slides the window: ratios are now L(e-1) / L(e-2) of the last two epochs
    dwa.epoch_end({"focal": 0.1, "dice": 0.25, "iou": 0.2})
    e = [math.exp(r / 2.0) for r in (1.0, 0.5, 1.0)]
    assert dwa(losses, 30)[1] == pytest.approx({t: 3 * v / sum(e) for t, v in zip(TERMS, e)}, rel=1e-12)


def test_temperature_and_zero_previous_loss():
    hot = DynamicWeightAverage(["a", "b"], temperature=1e6)
    cold = DynamicWeightAverage(["a", "b"], temperature=0.01)
    for dwa in (hot, cold):
        dwa.epoch_end({"a": 1.0, "b": 1.0})
        dwa.epoch_end({"a": 0.5, "b": 1.0})
    assert hot.current_weights().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert cold.current_weights().tolist() == pytest.approx([0.0, 2.0], abs=1e-6)
    zero = DynamicWeightAverage(["a", "b"])
    zero.epoch_end({"a": 0.0, "b": 1.0})
    zero.epoch_end({"a": 0.0, "b": 1.0})
    assert zero.current_weights().tolist() == pytest.approx([1.0, 1.0])


def test_epoch_end_checks_terms_and_values():
    dwa = DynamicWeightAverage(TERMS)
    with pytest.raises(ValueError, match="epoch losses do not match.*missing term\\(s\\) 'iou'"):
        dwa.epoch_end({"focal": 0.1, "dice": 0.2})
    with pytest.raises(ValueError, match="non-finite epoch losses \\{'dice': nan\\}"):
        dwa.epoch_end({"focal": 0.1, "dice": float("nan"), "iou": 0.2})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DynamicWeightAverage(TERMS, temperature=0.0)
    assert int(dwa.epochs_seen) == 0


def test_other_strategies_accept_epoch_end_as_a_no_op():
    for name in ("fixed", "uncertainty", "gradnorm"):
        strategy = WEIGHTINGS.build({"name": name}, terms=TERMS)
        before = {k: v.clone() for k, v in strategy.state_dict().items() if isinstance(v, torch.Tensor)}
        strategy.epoch_end({"focal": 0.1, "dice": 0.2, "iou": 0.3})
        after = strategy.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items())
