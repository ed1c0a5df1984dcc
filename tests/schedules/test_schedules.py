"""Schedules: exact values at chosen steps, the recipes of SAM / SAM 2 / boundary loss, errors."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

import samft.config  # noqa: F401  (registers the ${frac:...} resolver used by the recipes)
from samft.registry import SCHEDULES, RegistryError
from samft.schedules import Constant, Linear, Schedule, as_schedule

REPO = Path(__file__).resolve().parents[2]

ALL_SPECS = [
    {"name": "constant", "value": 0.5},
    {"name": "linear", "start": 0.0, "end": 1.0, "total_steps": 10, "begin_step": 5},
    {"name": "cosine", "start": 1.0, "end": 0.1, "total_steps": 100},
    {"name": "step", "milestones": [10, 20], "gamma": 0.5, "value": 2.0},
    {"name": "exponential", "start": 1.0, "gamma": 0.9, "period": 2},
    {"name": "warmup", "warmup_steps": 4, "after": {"name": "constant", "value": 3.0}},
    {"name": "piecewise", "points": [[0, 1.0], [10, 2.0]]},
    {"name": "boundary_transfer", "role": "region", "steps_per_epoch": 3},
]


def build(**spec):
    return SCHEDULES.build(spec)


def test_constant_and_linear_exact_values():
    assert build(name="constant")(123) == 1.0
    lin = build(name="linear", start=2.0, end=4.0, total_steps=8, begin_step=4)
    assert [lin(s) for s in (-5, 0, 4, 6, 8, 12, 1000)] == [2.0, 2.0, 2.0, 2.5, 3.0, 4.0, 4.0]
    jump = build(name="linear", start=1.0, end=0.0, total_steps=0, begin_step=3)
    assert [jump(s) for s in (2, 3, 4)] == [1.0, 0.0, 0.0]


def test_cosine_matches_sam2_formula():
    # SAM 2 fine-tuning: fvcore CosineParamScheduler(start=base_lr, end=base_lr / 10) as a multiplier.
    cos = build(name="cosine", start=1.0, end=0.1, total_steps=1000)
    assert cos(0) == 1.0
    assert cos(500) == pytest.approx(0.55, abs=1e-12)
    assert cos(250) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)), abs=1e-12)
    assert cos(1000) == pytest.approx(0.1, abs=1e-12)
    assert cos(5000) == pytest.approx(0.1, abs=1e-12)
    shifted = build(name="cosine", start=2.0, end=0.0, total_steps=10, begin_step=10)
    assert shifted(5) == 2.0 and shifted(15) == pytest.approx(1.0) and shifted(20) == pytest.approx(0.0)


def test_sam_warmup_and_step_decay_from_yaml_recipe():
    cfg = OmegaConf.create(
        """
        train: {steps: 90000}
        schedule:
          name: warmup
          warmup_steps: 250
          after:
            name: step
            milestones: ["${frac:${train.steps},0.6667}", "${frac:${train.steps},0.96}"]
            gamma: 0.1
        """
    )
    OmegaConf.resolve(cfg)
    OmegaConf.set_readonly(cfg, True)
    lr = SCHEDULES.build(cfg.schedule)
    assert lr.after.milestones == (60003, 86400)
    assert lr(0) == 0.0
    assert lr(125) == pytest.approx(0.5)
    assert lr(249) == pytest.approx(249 / 250)
    assert lr(250) == 1.0
    assert lr(60002) == 1.0
    assert lr(60003) == pytest.approx(0.1)
    assert lr(86399) == pytest.approx(0.1)
    assert lr(86400) == pytest.approx(0.01)
    assert lr(89999) == pytest.approx(0.01)
    pickle.loads(pickle.dumps(lr))  # a read-only DictConfig spec must not leak into the schedule


def test_warmup_multiplies_towards_after_at_warmup_end():
    after = {"name": "linear", "start": 10.0, "end": 0.0, "total_steps": 100}
    w = build(name="warmup", warmup_steps=20, after=after, start_factor=0.5)
    # after(20) = 8: ramp from 0.5 * 8 = 4 at step 0 to 8 at step 20; then after(step).
    assert w(0) == pytest.approx(4.0)
    assert w(10) == pytest.approx(8.0 * 0.75)
    assert w(20) == pytest.approx(8.0)
    assert w(50) == pytest.approx(5.0)
    assert build(name="warmup", warmup_steps=0, after=3.0)(0) == 3.0


def test_step_exponential_piecewise():
    s = build(name="step", milestones=[10, 20], gamma=0.5, value=2.0)
    assert [s(x) for x in (0, 9, 10, 19, 20, 100)] == [2.0, 2.0, 1.0, 1.0, 0.5, 0.5]
    e = build(name="exponential", start=2.0, gamma=0.5, period=2, begin_step=1)
    assert [e(x) for x in (0, 1, 2, 3, 5)] == [2.0, 2.0, pytest.approx(2.0 * 0.5 ** 0.5), 1.0, 0.5]
    stair = build(name="exponential", start=1.0, gamma=0.1, period=10, staircase=True, min_value=0.05)
    assert [stair(x) for x in (9, 10, 19, 20, 30)] == [1.0, pytest.approx(0.1), pytest.approx(0.1), 0.05, 0.05]
    pts = build(name="piecewise", points=[[10, 1.0], [20, 3.0], [40, 0.0]])
    assert [pts(x) for x in (0, 10, 15, 20, 30, 40, 99)] == [1.0, 1.0, 2.0, 3.0, 1.5, 0.0, 0.0]
    held = build(name="piecewise", points=[[10, 1.0], [20, 3.0]], interpolation="constant")
    assert [held(x) for x in (0, 15, 20, 25)] == [1.0, 1.0, 3.0, 3.0]
    bv = build(name="piecewise", boundaries=[5, 8], values=[1.0, 2.0, 3.0])
    assert [bv(x) for x in (0, 4, 5, 7, 8, 100)] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]


def test_boundary_transfer_follows_kervadec_steal_weight():
    spe = 7
    boundary = build(name="boundary_transfer", role="boundary", steps_per_epoch=spe)
    region = build(name="boundary_transfer", role="region", steps_per_epoch=spe)
    # Independent reference: StealWeight(0.01) applied once per finished epoch to [1.0, 0.01].
    ref_region, ref_boundary = 1.0, 0.01
    for epoch in range(120):
        for step in (epoch * spe, epoch * spe + spe - 1):
            assert region(step) == pytest.approx(ref_region, abs=1e-12)
            assert boundary(step) == pytest.approx(ref_boundary, abs=1e-12)
        ref_region, ref_boundary = max(0.1, ref_region - 0.01), ref_boundary + 0.01
    assert region(10_000 * spe) == 0.1
    # The continuous variant is exactly the documented pair of linear schedules.
    epochs = 150
    smooth_b = build(name="boundary_transfer", role="boundary", steps_per_epoch=spe, per_epoch=False)
    smooth_r = build(name="boundary_transfer", role="region", steps_per_epoch=spe, per_epoch=False)
    lin_b = build(name="linear", start=0.01, end=0.01 + 0.01 * epochs, total_steps=epochs * spe)
    lin_r = build(name="linear", start=1.0, end=0.1, total_steps=90 * spe)
    for step in range(0, epochs * spe + 1, 13):
        assert smooth_b(step) == pytest.approx(lin_b(step), abs=1e-9)
        assert smooth_r(step) == pytest.approx(lin_r(step), abs=1e-9)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s["name"])
def test_schedules_are_pure_and_picklable(spec):
    sched = SCHEDULES.build(spec)
    before = repr(sched)
    values = [sched(s) for s in range(0, 40, 3)]
    assert repr(sched) == before
    clone = pickle.loads(pickle.dumps(sched))
    assert clone == sched and [clone(s) for s in range(0, 40, 3)] == values
    assert all(isinstance(v, float) for v in values)


@given(start=st.floats(-10, 10), end=st.floats(-10, 10), total=st.integers(0, 500),
       begin=st.integers(0, 500), step=st.integers(-100, 2000))
def test_linear_and_cosine_stay_between_start_and_end(start, end, total, begin, step):
    lo, hi = min(start, end) - 1e-9, max(start, end) + 1e-9
    for name in ("linear", "cosine"):
        v = build(name=name, start=start, end=end, total_steps=total, begin_step=begin)(step)
        assert lo <= v <= hi


@given(warm=st.integers(1, 300), factor=st.floats(0.0, 1.0), value=st.floats(-5, 5))
def test_warmup_is_continuous_at_its_end(warm, factor, value):
    after = {"name": "linear", "start": value, "end": 0.0, "total_steps": 1000}
    w = build(name="warmup", warmup_steps=warm, after=after, start_factor=factor)
    assert w(warm - 1e-9) == pytest.approx(w(warm), abs=1e-6)
    assert w(0) == pytest.approx(factor * Linear(value, 0.0, 1000)(warm))


def test_as_schedule_accepts_numbers_schedules_and_specs():
    assert as_schedule(2, "w") == Constant(2.0)
    lin = Linear(0, 1, 10)
    assert as_schedule(lin, "w") is lin
    assert as_schedule({"name": "linear", "start": 0, "end": 1, "total_steps": 10}, "w") == lin
    with pytest.raises(ValueError, match="weights.focal must be a number or a schedule spec"):
        as_schedule("fast", "weights.focal")
    assert isinstance(lin, Schedule)


@pytest.mark.parametrize(("steps", "milestones"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 3))])
def test_recipe_schedule_builds_for_very_short_runs(steps, milestones):
    """SAM's two lr drops at 2/3 and 96% of a run round to equal steps in runs of one step."""
    recipe = OmegaConf.load(REPO / "configs" / "sam_ft.yaml").schedule
    cfg = OmegaConf.create({"train": {"steps": steps}, "schedule": recipe})
    OmegaConf.resolve(cfg)
    lr = SCHEDULES.build(cfg.schedule)
    assert lr.after.milestones == milestones
    before_last = {1: 1.0, 2: 0.1, 3: 0.1}[steps]  # milestones <= steps - 1, counted by hand
    assert lr.after(steps - 1) == pytest.approx(before_last)
    assert lr.after(steps) == pytest.approx(0.01)


def test_one_step_run_config_builds_its_schedule():
    """`train.steps=1` with the recipe's schedule used to stop with 'milestones must be strictly increasing'."""
    from samft.config import load

    cfg = load(REPO / "configs" / "demo.yaml", ["train.steps=1"])
    lr = SCHEDULES.build(cfg.schedule)
    assert lr(0) == 0.0 and lr(1) == pytest.approx(0.1 * 0.01)  # warmup 1/10 times both drops


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "linear", "start": 0, "end": 1, "total_step": 5}, "no option 'total_step'.*total_steps"),
        ({"name": "linaer", "start": 0}, "Did you mean 'linear'"),
        ({"name": "linear", "start": 0, "end": 1, "total_steps": -5}, "total_steps must be a non-negative"),
        ({"name": "linear", "start": float("nan"), "end": 1, "total_steps": 5}, "start must be a finite"),
        ({"name": "step", "milestones": [20, 10]}, "milestones must be non-decreasing"),
        ({"name": "piecewise", "boundaries": [2, 2], "values": [1, 2, 3]}, "boundaries must be strictly increasing"),
        ({"name": "step", "milestones": 10}, "milestones must be a list"),
        ({"name": "exponential", "start": 1, "gamma": 0}, "gamma must be > 0"),
        ({"name": "warmup", "warmup_steps": 5, "after": "cosine"}, "after must be a number or a schedule"),
        ({"name": "piecewise", "boundaries": [1, 2], "values": [1.0]}, "len\\(boundaries\\) \\+ 1 = 3"),
        ({"name": "piecewise", "points": [[0, 1.0]], "boundaries": [1], "values": [1, 2]}, "not both"),
        ({"name": "piecewise", "points": [[0, 1.0, 2.0]]}, "points\\[0\\] must be a \\[step, value\\] pair"),
        ({"name": "piecewise", "points": [[0, 1.0]], "interpolation": "cubic"}, "interpolation must be"),
        ({"name": "boundary_transfer", "role": "edge", "steps_per_epoch": 5}, "role must be one of"),
        ({"name": "boundary_transfer", "role": "region", "steps_per_epoch": 0}, "steps_per_epoch must be .* >= 1"),
    ],
)
def test_bad_options_raise_clear_errors(spec, message):
    with pytest.raises((ValueError, RegistryError), match=message):
        SCHEDULES.build(spec)


def test_bad_step_raises():
    with pytest.raises(ValueError, match="step must be a finite number"):
        Constant(1.0)(float("nan"))
    with pytest.raises(ValueError, match="step must be a finite number"):
        Constant(1.0)("10")
