"""Training state: exact resume, preemption, non-finite losses, freezing, DDP loss normalisation."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from samft.config import load
from samft.engine.trainer import Trainer, TrainingError
from samft.losses import call_loss

REPO = Path(__file__).resolve().parents[2]
# A schedule that does not depend on train.steps, so a shorter first run shares the longer run's lr.
SCHEDULE = "schedule={name: warmup, warmup_steps: 2, after: {name: cosine, start: 1.0, end: 0.1, total_steps: 8}}"


def tiny_config(data, root, *overrides):
    return load(REPO / "configs" / "demo.yaml", [
        f"data.train={data / 'train'}", "data.val=null", "data.num_workers=0", "data.max_masks=3",
        "model.image_size=64", "prompts.correction_clicks=1", "prompts.extra_rounds=1",
        "train.progress=false", "tracking.enabled=false", f"train.output_dir={root / 'out'}", SCHEDULE,
        *overrides,
    ])


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_exact_across_an_epoch_boundary(demo_data, tmp_path):
    """4 steps, stop, resume to 8 == 8 uninterrupted steps (12 images, 2 per batch: epoch = 6 steps)."""
    straight = Trainer(tiny_config(demo_data, tmp_path, "train.steps=8", "train.run_name=straight")).fit()
    Trainer(tiny_config(demo_data, tmp_path, "train.steps=4", "train.run_name=split")).fit()
    resumed = Trainer(tiny_config(demo_data, tmp_path, "train.steps=8", "train.run_name=split",
                                  "train.resume=auto")).fit()
    assert resumed.steps == 8
    assert_same_weights(weights(straight.checkpoint), weights(resumed.checkpoint))
    a, b = (torch.load(r.checkpoint, weights_only=True) for r in (straight, resumed))
    assert (a["epoch"], a["position"]) == (b["epoch"], b["position"]) == (1, 2)
    assert torch.equal(a["ranks"][0]["rng"]["generators"][0], b["ranks"][0]["rng"]["generators"][0])


def test_frozen_parts_stay_bit_identical(demo_data, tmp_path):
    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=3", "model.freeze_image_encoder=true",
                                  "model.freeze_prompt_encoder=true"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    for key in before:
        if key.startswith(("image_encoder.", "prompt_encoder.")):
            assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))


class NaNOnCalls:
    """Wraps a loss and poisons its result on the given call numbers (1-based)."""

    def __init__(self, loss, calls):
        self.loss, self.calls, self.count = loss, set(calls), 0

    def __call__(self, logits, target, **extras):
        self.count += 1
        out = call_loss(self.loss, logits, target, **extras)
        if self.count in self.calls:
            out = {**out, "focal": out["focal"] * float("nan")}
        return out


def test_nonfinite_loss_skips_the_step(demo_data, tmp_path):
    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=4", "tracking.log_every=1",
                                  "prompts.correction_clicks=0", "prompts.extra_rounds=0"))
    trainer.loss_fn = NaNOnCalls(trainer.loss_fn, calls=[3])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = next(trainer._batches(trainer._loader(trainer.train_set, trainer.sampler)))
    trainer.train_step(batch)  # lr 0 in the first warmup step
    trainer.train_step(batch)
    after_first = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    schedule = trainer.lr_scheduler.state_dict()
    skipped = trainer.train_step(batch)
    assert not skipped.stepped and skipped.values == {}
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, after_first[key]), key  # the poisoned step changed nothing
    assert trainer.lr_scheduler.state_dict() == schedule  # nor advanced the schedule
    assert any(not torch.equal(before[k], after_first[k]) for k in before)
    again = trainer.train_step(batch)
    assert again.stepped and "loss/total" in trainer.record(again) and trainer.nonfinite_in_row == 0


def test_too_many_nonfinite_losses_stop_with_a_clear_error(demo_data, tmp_path):
    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=10", "train.max_nonfinite_steps=3",
                                  "prompts.correction_clicks=0", "prompts.extra_rounds=0"))
    trainer.loss_fn = NaNOnCalls(trainer.loss_fn, calls=range(1, 100))
    with pytest.raises(TrainingError, match="3 non-finite losses in a row at step 0"):
        trainer.fit()


def test_sigterm_writes_a_loadable_checkpoint_and_exits_cleanly(demo_data, tmp_path):
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(REPO / "configs" / "demo.yaml"),
           f"data.train={demo_data / 'train'}", "data.val=null", "data.num_workers=0", "model.image_size=64",
           "train.steps=100000", "train.checkpoint_every=100000", "train.run_name=preempted",
           f"train.output_dir={tmp_path / 'out'}", "tracking.enabled=false", "train.progress=false"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "out" / "preempted" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not (tmp_path / "out" / "preempted" / "config.yaml").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # let it run some steps
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "train.resume=auto" in out
    state = torch.load(last, weights_only=True)
    assert state["step"] > 0 and "optimizer" in state
    assert not list(last.parent.glob("*.tmp"))  # no half-written file left behind


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_match_one_process_on_the_same_images(demo_data, tmp_path):
    """2 ranks x 1 image == 1 process x 2 images: with SAM 2's all-reduced mask-count normaliser the
    gradients DDP averages equal the single-process gradients of the same two images."""
    helper = Path(__file__).with_name("ddp_grads.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for launcher, out, batch in (([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=2"], "ddp.pt", 1), ([sys.executable], "single.pt", 2)):
        proc = subprocess.run([*launcher, str(helper), str(demo_data / "train"), str(tmp_path / out), str(batch)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, single = (torch.load(tmp_path / f, weights_only=True) for f in ("ddp.pt", "single.pt"))
    counts = ddp["masks_per_rank"].tolist()
    assert counts[0] != counts[1], counts  # unequal ranks: a per-rank normaliser would give other gradients
    assert single["masks_per_rank"].tolist() == [sum(counts)]
    ddp, single = ddp["grads"], single["grads"]
    assert ddp.keys() == single.keys() and len(ddp) > 50
    scale = max(float(g.abs().max()) for g in single.values())
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5 * scale, rtol=1e-4, msg=key)


def gradients_of_one_step(trainer, batches):
    captured = {}

    def capture_instead_of_stepping(*args, **kwargs):
        captured.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                         if p.grad is not None})

    trainer.optimizer.step = capture_instead_of_stepping
    result = trainer.train_step(batches)
    return captured, trainer.record(result)


def test_gradient_accumulation_equals_the_larger_batch(demo_data, tmp_path):
    """2 accumulated batches of 1 image == 1 batch of the same 2 images (masks counted over both)."""
    settings = ["train.steps=1", "prompts.correction_clicks=0", "prompts.extra_rounds=0", "data.max_masks=16"]
    big = Trainer(tiny_config(demo_data, tmp_path, *settings, "data.batch_size=2"))
    small = Trainer(tiny_config(demo_data, tmp_path, *settings, "data.batch_size=1", "train.grad_accum=2"))
    pair = next(big._batches(big._loader(big.train_set, big.sampler)))
    stream = small._batches(small._loader(small.train_set, small.sampler))
    singles = [next(stream), next(stream)]
    assert [s.meta[0]["file"] for s in singles] == [m["file"] for m in pair.meta]
    assert singles[0].masks.shape[0] != singles[1].masks.shape[0]  # unequal: normalisation matters
    grads_big, record_big = gradients_of_one_step(big, pair)
    grads_small, record_small = gradients_of_one_step(small, singles)
    assert record_small["masks"] == record_big["masks"]
    assert abs(record_small["loss/total"] - record_big["loss/total"]) < 1e-5
    scale = max(float(g.abs().max()) for g in grads_big.values())
    for key in grads_big:
        torch.testing.assert_close(grads_small[key], grads_big[key], atol=1e-5 * scale, rtol=1e-4, msg=key)


def test_grad_accum_must_be_positive(demo_data, tmp_path):
    from samft.config import ConfigError

    with pytest.raises(ConfigError, match="grad_accum"):
        Trainer(tiny_config(demo_data, tmp_path, "train.grad_accum=0"))


def test_bf16_autocast_trains_with_finite_fp32_losses(demo_data, tmp_path):
    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=3", "train.precision=bf16",
                                  "tracking.log_every=1"))
    assert trainer.runtime.amp_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.fit().history
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(r["loss/total"])) for r in history)
    assert all(v.dtype == torch.float32 for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_resumed_run_continues_the_same_mlflow_run(demo_data, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = ["tracking.enabled=true", f"tracking.uri={uri}", "tracking.system_metrics=false",
                "tracking.log_every=1", "train.run_name=continued"]
    first = Trainer(tiny_config(demo_data, tmp_path, "train.steps=2", *tracking)).fit()
    second = Trainer(tiny_config(demo_data, tmp_path, "train.steps=4", "train.resume=auto", *tracking)).fit()
    assert second.run_id == first.run_id
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    steps = [m.step for m in client.get_metric_history(first.run_id, "loss/total")]
    assert steps == [1, 2, 3, 4]
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_resume_from_a_checkpoint_taken_at_the_end_of_an_epoch(demo_data, tmp_path):
    """A checkpoint at an epoch's last step saves position == epoch length; resuming used to find no
    batch left and stop with "No usable mask ... every image was skipped"."""
    straight = Trainer(tiny_config(demo_data, tmp_path, "train.steps=8", "train.run_name=straight")).fit()
    first = Trainer(tiny_config(demo_data, tmp_path, "train.steps=6", "train.run_name=split")).fit()
    state = torch.load(first.checkpoint, weights_only=True)
    assert (state["epoch"], state["position"]) == (0, 6)
    resumed = Trainer(tiny_config(demo_data, tmp_path, "train.steps=8", "train.run_name=split",
                                  "train.resume=auto")).fit()
    assert_same_weights(weights(straight.checkpoint), weights(resumed.checkpoint))


def test_a_run_folder_appears_only_after_the_data_and_model_were_accepted(tmp_path):
    from samft.data import DataError

    with pytest.raises(DataError, match="does not exist"):
        Trainer(tiny_config(tmp_path / "missing", tmp_path, "train.steps=1"))
    assert not (tmp_path / "out").exists()


def test_an_overflow_the_grad_scaler_finds_skips_the_step_and_the_schedules(demo_data, tmp_path):
    """fp16's GradScaler skips a step whose gradients overflowed; the step count, the lr schedule and
    GradNorm's own update must skip it too (a GradScaler on the CPU and one overflowing gradient, as
    fp16 backward produces: the same logic)."""
    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=3", "weighting={name: gradnorm}",
                                  "prompts.correction_clicks=0", "prompts.extra_rounds=0"))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=1000)
    batch = next(trainer._batches(trainer._loader(trainer.train_set, trainer.sampler)))
    model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    schedule, weighting = trainer.lr_scheduler.state_dict(), copy.deepcopy(trainer.weighting.state_dict())
    hook = trainer.model.mask_decoder.iou_token.weight.register_hook(lambda grad: grad * float("inf"))
    result = trainer.train_step(batch)
    hook.remove()
    assert not result.stepped
    assert trainer.scaler.get_scale() == 2.0 ** 15  # backed off
    assert trainer.lr_scheduler.state_dict() == schedule
    assert_same_weights(model, trainer.model.state_dict())
    assert int(trainer.weighting.initial_count) == 0 and torch.equal(trainer.weighting.weights, weighting["weights"])
    assert trainer.train_step(batch).stepped and int(trainer.weighting.initial_count) == 1
    assert trainer.lr_scheduler.state_dict() != schedule


def test_a_checkpoint_of_the_previous_layout_still_resumes(demo_data, tmp_path):
    """samft 0.1.0 saved one rank's random state under "rng" and float epoch sums."""
    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=2", "train.run_name=old"))
    trainer.fit()
    state = torch.load(trainer.run_dir / "checkpoints" / "last.pt", weights_only=True)
    own = state.pop("ranks")[0]
    old = {**state, "rng": own["rng"], "epoch_sums": {k: float(v) for k, v in own["epoch_sums"].items()}}
    fresh = Trainer(tiny_config(demo_data, tmp_path, "train.steps=4", "train.run_name=new"))
    fresh.load_state_dict(old)
    assert fresh.step == 2 and torch.equal(fresh.click_generator.get_state(), own["rng"]["generators"][0])
    assert set(fresh.epoch_sums) == set(own["epoch_sums"])


def test_weighting_gradients_are_averaged_over_ranks_before_the_scaler_checks_them(demo_data, tmp_path, monkeypatch):
    """The overflow check in ``unscale_`` must see the gradients that will be applied: reduced first."""
    from samft.engine import distributed
    from samft.engine.distributed import DistInfo

    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=1", "weighting={name: uncertainty}"))
    trainer.dist = DistInfo(0, 2)
    order = []
    for p in trainer.weighting.parameters():
        p.grad = torch.ones_like(p)
    monkeypatch.setattr(distributed, "device_sum_", lambda t: order.append("reduce") or t.mul_(2))
    unscale = trainer.scaler.unscale_
    monkeypatch.setattr(trainer.scaler, "unscale_", lambda opt: order.append("unscale") or unscale(opt))
    trainer._gradient_norm()
    n = len(list(trainer.weighting.parameters()))
    assert n > 0 and order == ["reduce"] * n + ["unscale"]
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in trainer.weighting.parameters())  # sum / 2 ranks


def test_micro_batches_move_to_the_device_one_at_a_time(demo_data, tmp_path, monkeypatch):
    """With gradient accumulation only one micro-batch is on the device at once: move, step, move, step."""
    import samft.engine.trainer as trainer_module

    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=1", "train.grad_accum=2"))
    events = []
    move, micro_step = trainer_module.to_device, trainer._micro_step
    monkeypatch.setattr(trainer_module, "to_device", lambda b, d: events.append("move") or move(b, d))
    monkeypatch.setattr(trainer, "_micro_step", lambda *a: events.append("step") or micro_step(*a))
    batches = trainer._batches(trainer._loader(trainer.train_set, trainer.sampler))
    assert trainer.train_step([next(batches), next(batches)]).stepped
    assert events == ["move", "step", "move", "step"]
