"""End to end: the small SAM trains on demo data, the loss falls, and MLflow holds the run."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from samft.config import load
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def demo_config(data, tmp_path, *overrides):
    return load(REPO / "configs" / "demo.yaml", [
        f"data.train={data / 'train'}", f"data.val={data / 'val'}", "data.num_workers=0",
        "model.image_size=128", "train.steps=40", "train.val_every=40", "train.checkpoint_every=20",
        "train.progress=false", "train.run_name=smoke", "tracking.log_every=5",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.system_metrics=false",
        "tracking.overlays=1", "eval.max_images=4", *overrides,
    ])


@pytest.mark.slow
def test_small_sam_learns_demo_data_and_mlflow_holds_the_run(demo_data, tmp_path):
    cfg = demo_config(demo_data, tmp_path)
    result = Trainer(cfg, project_root=tmp_path).fit()

    losses = [r["loss/total"] for r in result.history]
    assert len(losses) == 8
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, losses
    assert {"loss/focal", "loss/dice", "loss/iou", "weight/focal", "grad_norm"} <= set(result.history[-1])
    assert result.history[-1]["weight/focal"] == 20.0
    assert 0.0 <= result.val_metrics["val/miou_point"] <= 1.0
    assert result.val_metrics["val/num_masks"] > 0

    state = torch.load(result.checkpoint, weights_only=True)
    assert state["step"] == 40 and "optimizer" in state and "model" in state
    assert (result.run_dir / "config.yaml").is_file()

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.name"] == "sam" and run.data.params["train.steps"] == "40"
    focal = client.get_metric_history(result.run_id, "loss/focal")
    assert [m.step for m in focal] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert "val/miou_point" in run.data.metrics and "lr/decoder" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "config.yaml" in artifacts


def run_train(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_paragraph_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in error[0], error[0]


def test_cli_bad_input_gives_one_paragraph_errors(tmp_path, demo_data):
    demo = REPO / "configs" / "demo.yaml"
    tracking = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "train.progress=false"]
    assert_one_paragraph_error(run_train(demo, f"data.train={tmp_path / 'nowhere'}", *tracking, cwd=tmp_path),
                               str(tmp_path / "nowhere"), "make_demo_data.py")
    (tmp_path / "empty").mkdir()
    assert_one_paragraph_error(run_train(demo, f"data.train={tmp_path / 'empty'}", *tracking, cwd=tmp_path),
                               str(tmp_path / "empty"))
    assert_one_paragraph_error(run_train(demo, "train.stepz=3", cwd=tmp_path), "train.stepz", "steps")
    assert_one_paragraph_error(run_train(demo, "loss.name=dcie", cwd=tmp_path), "dcie", "dice")
    bad_ckpt = tmp_path / "vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, bad_ckpt)
    proc = run_train(demo, f"data.train={demo_data / 'train'}", f"data.val={demo_data / 'val'}",
                     f"model.checkpoint={bad_ckpt}", *tracking, cwd=tmp_path)
    assert_one_paragraph_error(proc, str(bad_ckpt), "model.name=vit_b")


def test_cli_help_and_missing_config():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage:" in proc.stdout
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "nope.yaml"], capture_output=True,
                          text=True)
    assert_one_paragraph_error(proc, "nope.yaml", "does not exist")


def test_boundary_term_trains_with_distance_maps_from_the_data(demo_data, tmp_path):
    """A seed loss joins SAM's objective through config alone: data serves maps, the weighting weighs."""
    cfg = demo_config(demo_data, tmp_path, "train.steps=2", "data.val=null", "model.image_size=64",
                      "tracking.log_every=1", "data.with_dist_maps=true",
                      "loss.extra_terms={boundary: {name: boundary}}", "weighting.weights.boundary=0.5")
    history = Trainer(cfg, project_root=tmp_path).fit().history
    assert [r["weight/boundary"] for r in history] == [0.5, 0.5]
    assert all(r["loss/boundary"] != 0.0 for r in history)
    total = 20 * history[-1]["loss/focal"] + history[-1]["loss/dice"] + history[-1]["loss/iou"]
    assert abs(history[-1]["loss/total"] - (total + 0.5 * history[-1]["loss/boundary"])) < 1e-4


def test_per_term_gradient_norms_are_logged_at_the_shared_layer(demo_data, tmp_path):
    cfg = demo_config(demo_data, tmp_path, "train.steps=4", "data.val=null", "model.image_size=64",
                      "tracking.log_every=1", "train.grad_analysis_every=2", "optim.grad_clip=0.01")
    history = Trainer(cfg, project_root=tmp_path).fit().history
    analysed = [r for r in history if "grad_norm/focal" in r]
    assert [r["step"] for r in analysed] == [1.0, 3.0]  # steps 0 and 2, logged after the step as 1 and 3
    for r in analysed:
        assert r["grad_norm/focal"] > 0 and r["grad_norm/dice"] > 0 and r["grad_norm/iou"] >= 0
    assert all(r["grad_norm"] > 0.01 for r in history)  # the pre-clip norm is what is logged
