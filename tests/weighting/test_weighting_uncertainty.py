"""Uncertainty weighting: hand-computed totals and gradients, convergence to s = log L, the floor."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samft.registry import WEIGHTINGS, RegistryError
from samft.weighting import UncertaintyWeighting

TERMS = ["focal", "dice", "iou"]


def test_total_weights_and_gradients_by_hand():
    strategy = UncertaintyWeighting(["a", "b"], kinds={"b": "classification"}, init_log_var={"a": 0.3, "b": -0.2})
    la = torch.tensor(2.0, requires_grad=True)
    lb = torch.tensor(3.0, requires_grad=True)
    total, weights = strategy({"a": la, "b": lb}, step=0)
    expected = 0.5 * math.exp(-0.3) * 2.0 + 0.5 * 0.3 + math.exp(0.2) * 3.0 + 0.5 * -0.2
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert weights == pytest.approx({"a": 0.5 * math.exp(-0.3), "b": math.exp(0.2)}, rel=1e-6)
    total.backward()
    assert la.grad.item() == pytest.approx(float(weights["a"]), rel=1e-6)
    ds = strategy.log_vars.grad.tolist()
    assert ds == pytest.approx([-0.5 * math.exp(-0.3) * 2.0 + 0.5, -math.exp(0.2) * 3.0 + 0.5], rel=1e-5)


def test_param_groups_own_lr_and_no_weight_decay():
    strategy = UncertaintyWeighting(TERMS, lr=0.05)
    (group,) = strategy.param_groups(base_lr=1e-4)
    assert group["params"] == [strategy.log_vars] and group["lr"] == 0.05 and group["weight_decay"] == 0.0
    assert UncertaintyWeighting(TERMS).param_groups(1e-4)[0]["lr"] == 1e-4


def test_log_vars_converge_to_the_optimum_on_fixed_losses():
    # regression: s* = log L; classification: s* = log(2 L). Both give weight 0.5 / L.
    values = {"focal": 0.05, "dice": 2.0, "iou": 7.0}
    strategy = UncertaintyWeighting(TERMS, kinds={"iou": "classification"})
    opt = torch.optim.Adam(strategy.param_groups(base_lr=0.05))
    losses = {k: torch.tensor(v) for k, v in values.items()}
    for step in range(1500):
        total, weights = strategy(losses, step)
        opt.zero_grad()
        total.backward()
        opt.step()
    s = dict(zip(TERMS, strategy.log_vars.tolist()))
    assert s["focal"] == pytest.approx(math.log(0.05), abs=0.02)
    assert s["dice"] == pytest.approx(math.log(2.0), abs=0.02)
    assert s["iou"] == pytest.approx(math.log(14.0), abs=0.02)
    assert weights == pytest.approx({k: 0.5 / v for k, v in values.items()}, rel=0.03)


def test_log_var_tracks_log_loss_of_a_learned_problem():
    # y = 3 x + noise(std 0.5): the fitted squared error settles at ~0.25, and s follows log L.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1, generator=g)
    y = 3 * x + 0.5 * torch.randn(512, 1, generator=g)
    model = torch.nn.Linear(1, 1)
    strategy = UncertaintyWeighting(["mse"])
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 0.05}, *strategy.param_groups(0.05)])
    for step in range(600):
        loss = torch.nn.functional.mse_loss(model(x), y)
        total, _ = strategy({"mse": loss}, step)
        opt.zero_grad()
        total.backward()
        opt.step()
    assert loss.item() == pytest.approx(0.25, rel=0.15)
    assert strategy.log_vars.item() == pytest.approx(math.log(loss.item()), abs=0.1)


def test_floor_bounds_total_and_weights_and_keeps_a_gradient():
    strategy = UncertaintyWeighting(["a"], min_log_var=-2.0, init_log_var=-6.0)
    s_eff = strategy.effective_log_vars().item()
    assert s_eff == pytest.approx(-2.0 + math.log1p(math.exp(-4.0)), rel=1e-6)
    total, weights = strategy({"a": torch.tensor(0.0)}, 0)
    assert weights["a"] <= 0.5 * math.exp(2.0)
    assert total.item() >= 0.5 * -2.0
    total.backward()
    assert strategy.log_vars.grad.item() > 0  # still pushes s down, but it is finite and non-zero...
    strategy.log_vars.grad = None
    total, _ = strategy({"a": torch.tensor(50.0)}, 0)
    total.backward()
    assert strategy.log_vars.grad.item() < 0  # ...and a growing loss pulls s back up through the floor
    # Far above the floor the floor is invisible.
    high = UncertaintyWeighting(["a"], min_log_var=-10.0, init_log_var=1.0)
    assert high.effective_log_vars().item() == pytest.approx(1.0, abs=1e-4)


def test_without_floor_the_total_runs_negative():
    strategy = UncertaintyWeighting(["a"], init_log_var=-20.0)
    total, _ = strategy({"a": torch.tensor(0.0)}, 0)
    assert total.item() == pytest.approx(-10.0)


@settings(max_examples=50, deadline=None)
@given(s=st.lists(st.floats(-30, 30), min_size=3, max_size=3), loss=st.lists(st.floats(0, 1e3), min_size=3, max_size=3))
def test_softplus_regulariser_keeps_total_non_negative(s, loss):
    strategy = UncertaintyWeighting(TERMS, regulariser="softplus", init_log_var=dict(zip(TERMS, s)))
    total, _ = strategy({t: torch.tensor(v) for t, v in zip(TERMS, loss)}, 0)
    assert torch.isfinite(total) and total.item() >= 0.0


def test_bad_options():
    with pytest.raises(ValueError, match="kinds.dice must be one of regression, classification"):
        UncertaintyWeighting(TERMS, kinds={"dice": "poisson"})
    with pytest.raises(ValueError, match="kinds names 'dise'"):
        UncertaintyWeighting(TERMS, kinds={"dise": "regression"})
    with pytest.raises(ValueError, match="regulariser must be one of log, softplus"):
        UncertaintyWeighting(TERMS, regulariser="l2")
    with pytest.raises(ValueError, match="lr must be > 0"):
        UncertaintyWeighting(TERMS, lr=0.0)
    with pytest.raises(RegistryError, match="no option 'min_logvar'.*Did you mean 'min_log_var'"):
        WEIGHTINGS.build({"name": "uncertainty", "min_logvar": -3}, terms=TERMS)
    strategy = UncertaintyWeighting(TERMS)
    with pytest.raises(ValueError, match="missing term\\(s\\) 'iou'"):
        strategy({"focal": torch.tensor(1.0), "dice": torch.tensor(1.0)}, 0)
