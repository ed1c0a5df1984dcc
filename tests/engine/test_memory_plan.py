"""The memory planner: its estimate against the measured peak of real steps, its choices, its command line."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samft.config import load
from samft.engine.memory import allocated_bytes, step_peak, with_masks
from samft.engine.memory_plan import estimate, plan
from samft.engine.plan_cli import parse_budget
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
SMALL = ["model.name=vit_tiny", "model.image_size=512", "data.max_masks=4", "prompts.correction_clicks=1",
         "prompts.extra_rounds=0", "train.device=cpu"]


def _config(demo_data: Path, tmp_path: Path, *overrides: str):
    return load(REPO / "configs" / "sam_ft.yaml", [
        f"data.train={demo_data / 'train'}", "data.val=null", "data.num_workers=0", "tracking.enabled=false",
        "train.progress=false", f"train.output_dir={tmp_path}", "train.steps=1000",
        "schedule={name: constant, value: 1.0}", *SMALL, *overrides])


def _measured(cfg, tmp_path: Path) -> int:
    """The step's peak on top of what the process held before its model was built.

    A throw-away step of the same config runs first: the CPU kernel libraries allocate per-process
    scratch at the first matmul / attention of a size (~22 MiB at 1 thread: the matmul kernels' (bmm, addmm) and the
    flash attention's buffers) and keep it for good. The planner does not count it (it is no tensor of
    the step and does not grow with the model); without the warm-up, whichever config ran first in the
    process carried it: ~25% of a vit_tiny step at 512 px, 0.2% of ViT-B's.
    """
    def trainer_and_batch():
        trainer = Trainer(cfg, project_root=tmp_path)
        batch = with_masks(next(trainer._batches(trainer._loader(trainer.train_set, trainer.sampler))),
                           cfg.data.max_masks * cfg.data.batch_size)
        return trainer, batch

    trainer, batch = trainer_and_batch()
    trainer.train_step(batch)
    del trainer, batch
    gc.collect()
    base = allocated_bytes("cpu")
    trainer, batch = trainer_and_batch()
    return step_peak(trainer.train_step, batch, "cpu", base)


@pytest.mark.parametrize("overrides", [
    ("model.attention=eager",),
    ("model.attention=sdpa", "model.activation_checkpointing=true"),
    ("model.attention=eager", "train.precision=bf16"),
    ("model.freeze_image_encoder=true", "prompts.correction_clicks=2", "prompts.extra_rounds=1"),
    ("model.attention=sdpa", "model.activation_checkpointing=true", "model.decoder_checkpointing=true",
     "data.max_masks=16"),
    ("model.attention=eager", "model.decoder_checkpointing=true", "train.precision=bf16"),
    ("model.attention=sdpa", "model.peft={name: lora}"),
], ids=["eager-fp32", "sdpa-checkpointing", "eager-bf16", "frozen-encoder-4-rounds", "sdpa-checkpointing-decoder-too",
        "eager-bf16-decoder-checkpointing", "sdpa-lora"])
def test_estimate_within_25_percent_of_a_measured_step(demo_data, tmp_path, overrides):
    torch.manual_seed(0)
    cfg = _config(demo_data, tmp_path, *overrides)
    predicted = estimate(cfg, "cpu").peak
    measured = _measured(cfg, tmp_path)
    assert 0.75 <= predicted / measured <= 1.25, (predicted / 2**20, measured / 2**20)


def test_estimate_follows_what_the_config_builds(demo_data, tmp_path):
    full = estimate(_config(demo_data, tmp_path, "model.attention=eager"), "cpu")
    lean = estimate(_config(demo_data, tmp_path, "model.attention=sdpa"), "cpu")
    frozen = estimate(_config(demo_data, tmp_path, "model.freeze_image_encoder=true"), "cpu")
    from samft.models import build_model

    model = build_model("vit_tiny", 512)
    assert full.total == frozen.total == sum(p.numel() for p in model.parameters())
    assert full.trainable == full.total
    assert frozen.trainable == full.total - sum(p.numel() for p in model.image_encoder.parameters())
    assert frozen.gradients == 4 * frozen.trainable and frozen.optimizer == 8 * frozen.trainable
    assert lean.attention < full.attention / 1.5  # no [heads, N, N] matrix kept
    assert frozen.attention == 0 and frozen.encoder == 0  # nothing of a frozen encoder is kept for backward
    more_rounds = estimate(_config(demo_data, tmp_path, "prompts.correction_clicks=3"), "cpu")
    assert more_rounds.decoder > lean.decoder
    recomputed = estimate(_config(demo_data, tmp_path, "model.decoder_checkpointing=true"), "cpu")
    assert recomputed.decoder < lean.decoder / 3 and recomputed.recompute > 0 and lean.recompute == 0
    assert recomputed.peak < lean.peak and recomputed.trainable == lean.trainable


def test_plan_picks_the_cheapest_settings_that_fit(demo_data, tmp_path):
    args = [f"data.train={demo_data / 'train'}", *SMALL, "model.attention=eager", "data.max_masks=16"]
    base = estimate(load(REPO / "configs" / "sam_ft.yaml", args), "cpu").peak
    result = plan(REPO / "configs" / "sam_ft.yaml", args, budget=int(base * 0.8), device="cpu")
    assert result.estimate.peak == base and result.fitting
    best = result.fitting[0]
    assert best.estimate.peak <= base * 0.8
    assert [c.cost for c in result.fitting] == sorted(c.cost for c in result.fitting)
    budget = int(base * 0.8)
    cfg_path = REPO / "configs" / "sam_ft.yaml"
    assert estimate(load(cfg_path, [*args, *best.overrides]), "cpu").peak <= budget
    for dropped in best.overrides:  # minimal: without any one of its changes it would not fit
        rest = [o for o in best.overrides if o != dropped]
        assert estimate(load(cfg_path, [*args, *rest]), "cpu").peak > budget
    peft_known = "peft" in load(REPO / "configs" / "sam_ft.yaml", args).model
    assert any(c.startswith("model.peft=") for c in result.refused) != peft_known


@pytest.mark.parametrize(("text", "size"), [("24GB", 24 * 2**30), ("16 GiB", 16 * 2**30), ("8000MB", 8000 * 2**20),
                                           ("1.5T", int(1.5 * 2**40)), ("512", 512)])
def test_budget_sizes(text, size):
    assert parse_budget(text) == size


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", str(REPO / "tools" / "plan_memory.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_help_answers_before_torch_loads():
    run = _tool("--help")
    assert run.returncode == 0 and "--budget" in run.stdout
    assert not [line for line in run.stderr.splitlines() if line.rstrip().endswith("| torch")]


@pytest.mark.parametrize("budget", ["24XB", "0GB", "lots"])
def test_bad_budget_is_one_line(budget):
    run = _tool("configs/demo.yaml", "--budget", budget)
    errors = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-2000:]
    assert errors[0].startswith(f"error: --budget '{budget}': use a memory size such as 24GB")
    assert not [line for line in run.stderr.splitlines() if line.rstrip().endswith("| torch")]


def test_tool_prints_the_breakdown_and_the_cheapest_fitting_settings(capsys):
    from samft.engine.plan_cli import main

    assert main([str(REPO / "configs" / "demo.yaml"), "model.attention=eager", "--budget", "30MB",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for row in ("| parameters |", "| gradients |", "| optimizer state |", "| activations |", "| attention |",
                "**peak**", "does not fit as configured", "cheapest settings that fit"):
        assert row in out
    rows = [line.split("|")[2].split() for line in out.splitlines() if line.startswith("| 1 |") or
            line.startswith("| 2 |") or line.startswith("| 3 |")]
    assert rows and all(not set(a) < set(b) for a in rows for b in rows)  # no listed set contains another


def test_estimate_counts_what_peft_trains(demo_data, tmp_path):
    """The planner builds the model as training does: LoRA's frozen base weights get no gradient or
    optimiser state in the estimate."""
    from samft.engine.build import model_from_config
    from samft.models import parameter_counts

    cfg = _config(demo_data, tmp_path, "model.peft={name: lora, rank: 4}", "model.freeze_prompt_encoder=true")
    trainable, total = parameter_counts(model_from_config(cfg, tmp_path))
    est = estimate(cfg, "cpu")
    assert (est.trainable, est.total) == (trainable, total)
    assert est.gradients == 4 * trainable and est.optimizer == 8 * trainable


@pytest.mark.parametrize("overrides", [
    ("model.name=vit_t", "model.image_size=256"),
    ("model.name=vit_t", "model.image_size=256", "model.activation_checkpointing=true", "train.precision=bf16"),
    ("model.name=hq_vit_tiny", "prompts.correction_clicks=2", "prompts.extra_rounds=1"),
], ids=["mobile-sam-fp32", "mobile-sam-checkpointing-bf16", "hq-sam-4-rounds"])
def test_estimate_of_mobile_sam_and_hq_sam_within_25_percent(demo_data, tmp_path, overrides):
    """MobileSAM: TinyViT's blocks (convolutional and windowed-attention) from its entry's encoder_blocks;
    HQ-SAM: its frozen encoder keeps nothing, its decoder reads the wider embedding (SAM's + the ViT feature)."""
    torch.manual_seed(0)
    cfg = _config(demo_data, tmp_path, *overrides)
    est = estimate(cfg, "cpu")
    if "model.name=vit_t" in overrides:
        assert est.encoder > 0 and (est.attention == 0) == ("model.activation_checkpointing=true" in overrides)
    else:  # HQ-SAM's encoder is frozen: nothing of it is kept for backward
        assert est.attention == est.encoder == 0
    measured = _measured(cfg, tmp_path)
    assert 0.75 <= est.peak / measured <= 1.25, (est.peak / 2**20, measured / 2**20)


def test_models_the_planner_does_not_model_are_refused_in_one_line(monkeypatch, tmp_path):
    """An encoder the planner does not walk (a plugin's, e.g. SAM 2's Hiera) is refused, not misestimated."""
    import dataclasses

    from samft.config import ConfigError
    from samft.engine import memory_plan

    cfg = load(REPO / "configs" / "sam_ft.yaml", [f"data.train={tmp_path}", *SMALL])
    monkeypatch.setitem(memory_plan.ARCHS, "vit_tiny", dataclasses.replace(memory_plan.ARCHS["vit_tiny"],
                                                                           encoder="hiera"))
    with pytest.raises(ConfigError, match="model.name=vit_tiny: the memory planner models the built-in models'"):
        estimate(cfg, "cpu")
