"""Fixed weighting: SAM's defaults, scheduled weights, a warmup-then-ramp loss-weight scheduler through config."""

from __future__ import annotations

import pickle

import pytest
import torch
from omegaconf import OmegaConf

from samft.registry import WEIGHTINGS, RegistryError
from samft.weighting import FixedWeighting

SAM_TERMS = ["focal", "dice", "iou"]


def scalars(**values):
    return {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}


def test_sam_default_is_20_1_1_and_other_terms_get_1():
    strategy = WEIGHTINGS.build({"name": "fixed"}, terms=["focal", "dice", "iou", "boundary"])
    losses = scalars(focal=0.1, dice=0.5, iou=0.25, boundary=2.0)
    total, weights = strategy(losses, step=0)
    assert weights == {"focal": 20.0, "dice": 1.0, "iou": 1.0, "boundary": 1.0}
    assert total.item() == pytest.approx(20 * 0.1 + 0.5 + 0.25 + 2.0)
    total.backward()
    assert losses["focal"].grad.item() == 20.0 and losses["boundary"].grad.item() == 1.0
    assert total.dtype == torch.float32


def test_partial_weights_override_sam_defaults_and_default_option():
    strategy = FixedWeighting(["focal", "dice", "extra"], weights={"dice": 3.0}, default=0.5)
    assert strategy.weights_at(0) == {"focal": 20.0, "dice": 3.0, "extra": 0.5}
    assert FixedWeighting(["focal", "dice"], weights=2.0).weights_at(7) == {"focal": 2.0, "dice": 2.0}


def test_bf16_losses_are_summed_in_fp32():
    strategy = FixedWeighting(SAM_TERMS)
    losses = {k: torch.tensor(v, dtype=torch.bfloat16) for k, v in {"focal": 0.01, "dice": 0.3, "iou": 0.2}.items()}
    total, _ = strategy(losses, 0)
    assert total.dtype == torch.float32
    expected = 20 * float(losses["focal"]) + float(losses["dice"]) + float(losses["iou"])
    assert total.item() == pytest.approx(expected, rel=1e-6)


def dynamic_loss_weights(step, total_steps, focal_range, dice_range, iou_range, warmup_steps):
    """A warmup-then-ramp loss-weight scheduler written directly, the reference for the config below.

    Focal and dice ramp linearly from their start to their end values between the warmup's end and
    ``total_steps``; the IoU weight ramps towards the value it hands over to at the warmup's end
    (``iou_range[0]`` for a non-zero span), then on to its end value. A zero-length warmup or ramp
    (``warmup_steps`` 0, or equal to ``total_steps``) is a jump, not a division by zero.
    """
    warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    span = total_steps - warmup_steps

    def progress(s):
        p = min(1.0, (s - warmup_steps) / span) if span > 0 else float(s >= warmup_steps)
        return max(0.0, p)

    focal = focal_range[0] + progress(step) * (focal_range[1] - focal_range[0])
    dice = dice_range[0] + progress(step) * (dice_range[1] - dice_range[0])
    iou = warmup * (iou_range[0] + progress(max(step, warmup_steps)) * (iou_range[1] - iou_range[0]))
    return {"focal": focal, "dice": dice, "iou": iou}


def dynamic_loss_config(total_steps, focal_range, dice_range, iou_range, warmup_steps):
    """The same weights as a samft config: linear ramps after the warmup, the IoU weight warmed up."""
    def ramp(lo, hi):
        return {"name": "linear", "start": lo, "end": hi, "total_steps": total_steps - warmup_steps,
                "begin_step": warmup_steps}

    return {"name": "fixed", "weights": {
        "focal": ramp(*focal_range),
        "dice": ramp(*dice_range),
        "iou": {"name": "warmup", "warmup_steps": warmup_steps, "after": ramp(*iou_range)},
    }}


@pytest.mark.parametrize(
    ("total_steps", "warmup_steps", "focal_range", "dice_range", "iou_range"),
    [
        (10_000, 1000, (10.0, 20.0), (1.0, 1.0), (0.0, 1.0)),  # focal 10 -> 20, IoU 0 -> 1 after a warmup
        (5_000, 500, (20.0, 5.0), (0.5, 2.0), (0.2, 1.5)),  # decreasing focal, iou starting above 0
        (3_000, 0, (10.0, 20.0), (1.0, 1.0), (0.0, 1.0)),  # no warmup (step / warmup_steps would divide by 0)
        (800, 800, (10.0, 20.0), (1.0, 1.0), (0.3, 1.0)),  # warmup = whole run (a zero-length ramp)
    ],
)
def test_fixed_with_schedules_reproduces_dynamic_loss_scheduler(total_steps, warmup_steps, focal_range,
                                                                dice_range, iou_range):
    spec = OmegaConf.create(dynamic_loss_config(total_steps, focal_range, dice_range, iou_range, warmup_steps))
    OmegaConf.set_readonly(spec, True)
    strategy = WEIGHTINGS.build(spec, terms=SAM_TERMS)
    steps = sorted({0, 1, warmup_steps // 2, warmup_steps - 1, warmup_steps, warmup_steps + 1,
                    (warmup_steps + total_steps) // 2, total_steps - 1, total_steps, 2 * total_steps} - {-1})
    for step in steps:
        expected = dynamic_loss_weights(step, total_steps, focal_range, dice_range, iou_range, warmup_steps)
        got = strategy.weights_at(step)
        assert got == pytest.approx(expected, abs=1e-12), f"step {step}"
    if warmup_steps == 1000:  # spot values of the first case, by hand
        assert strategy.weights_at(500) == pytest.approx({"focal": 10.0, "dice": 1.0, "iou": 0.0})
        assert strategy.weights_at(5500) == pytest.approx({"focal": 15.0, "dice": 1.0, "iou": 0.5})
    pickle.loads(pickle.dumps(strategy))


def test_boundary_transfer_through_fixed():
    spec = {"name": "fixed", "weights": {
        "dice": {"name": "boundary_transfer", "role": "region", "steps_per_epoch": 10},
        "boundary": {"name": "boundary_transfer", "role": "boundary", "steps_per_epoch": 10}}}
    strategy = WEIGHTINGS.build(spec, terms=["focal", "dice", "boundary"])
    assert strategy.weights_at(0) == pytest.approx({"focal": 20.0, "dice": 1.0, "boundary": 0.01})
    assert strategy.weights_at(25) == pytest.approx({"focal": 20.0, "dice": 0.98, "boundary": 0.03})
    assert strategy.weights_at(2000) == pytest.approx({"focal": 20.0, "dice": 0.1, "boundary": 2.01})


def test_term_mismatch_and_bad_options():
    strategy = FixedWeighting(SAM_TERMS)
    with pytest.raises(ValueError, match="missing term\\(s\\) 'iou'"):
        strategy(scalars(focal=1.0, dice=1.0), 0)
    with pytest.raises(ValueError, match="unknown term 'dise'. Did you mean 'dice'"):
        strategy(scalars(focal=1.0, dise=1.0, iou=1.0, dice=1.0), 0)
    with pytest.raises(ValueError, match="'dice' must be a scalar tensor, got \\(2,\\)"):
        strategy({"focal": torch.tensor(1.0), "dice": torch.ones(2), "iou": torch.tensor(1.0)}, 0)
    with pytest.raises(ValueError, match="weights names 'focall'.*Did you mean 'focal'"):
        FixedWeighting(SAM_TERMS, weights={"focall": 3.0})
    with pytest.raises(ValueError, match="weights.dice must be a number or a schedule spec"):
        FixedWeighting(SAM_TERMS, weights={"dice": "high"})
    with pytest.raises(RegistryError, match="no option 'weight'.*Did you mean 'weights'"):
        WEIGHTINGS.build({"name": "fixed", "weight": 1.0}, terms=SAM_TERMS)
    with pytest.raises(ValueError, match="unique"):
        FixedWeighting(["dice", "dice"])
    with pytest.raises(ValueError, match="non-empty list"):
        FixedWeighting([])
    with pytest.raises(RegistryError, match="Did you mean 'gradnorm'"):
        WEIGHTINGS.build({"name": "gradnrom"}, terms=SAM_TERMS)


def test_one_schedule_spec_weights_every_term():
    """A mapping with ``name`` is one schedule for all terms, as the docstring and the config check read it."""
    spec = {"name": "linear", "start": 0.0, "end": 2.0, "total_steps": 4}
    strategy = WEIGHTINGS.build({"name": "fixed", "weights": spec}, terms=SAM_TERMS)
    assert strategy.weights_at(0) == {"focal": 0.0, "dice": 0.0, "iou": 0.0}
    assert strategy.weights_at(2) == {"focal": 1.0, "dice": 1.0, "iou": 1.0}
    total, _ = strategy(scalars(focal=1.0, dice=2.0, iou=3.0), 4)
    assert total.item() == pytest.approx(2.0 * (1.0 + 2.0 + 3.0))
