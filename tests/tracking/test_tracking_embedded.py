"""Tracker against the embedded SQLite store (no server): what lands where."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from samft.config import TrackingConfig  # noqa: E402
from samft.tracking import Tracker, TrackingError  # noqa: E402
from samft.tracking.params import MAX_PARAM_VALUE_LENGTH, config_params, flatten  # noqa: E402

CONFIG = {
    "model": {"type": "vit_b", "freeze": {"image_encoder": True}},
    "loss": {"terms": [{"name": "focal", "weight": 20.0}, {"name": "dice", "weight": 1.0}]},
    "optim": {"lr": 8e-4, "betas": [0.9, 0.999]},
    "notes": "x" * (MAX_PARAM_VALUE_LENGTH + 50),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git work tree holding the embedded store; shared so the DB is migrated once."""
    root = tmp_path_factory.mktemp("project")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    (root / "README").write_text("x")
    subprocess.run([*git, "add", "README"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=root, check=True)
    return root


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_default_store_gets_params_config_tags_metrics(project: Path) -> None:
    tracker = Tracker.start(TrackingConfig(experiment="embedded", run_name="r1", system_metrics=False),
                            config=CONFIG, project_root=project,
                            tags={"samft.dataset_fingerprint": "fp123"})
    assert tracker.uri == f"sqlite:///{project.resolve()}/mlflow.db"
    assert "mlflow ui --backend-store-uri" in tracker.ui_hint and tracker.run_id in tracker.ui_hint
    for step in range(0, 30, 10):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "val/iou": step / 100}, step)
    tracker.close()

    client = MlflowClient(tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "r1"
    assert run.data.params["model.freeze.image_encoder"] == "True"
    assert run.data.params["optim.betas"] == "[0.9, 0.999]"
    assert run.data.params["optim.lr"] == "0.0008"
    assert len(run.data.params["notes"]) == MAX_PARAM_VALUE_LENGTH
    assert run.data.params["notes"].endswith("[truncated]")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags["samft.dataset_fingerprint"] == "fp123"
    assert run.data.tags["samft.version"]
    history = client.get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (10, 1 / 11), (20, 1 / 21)]
    # Artifacts sit beside the database, whatever the current directory.
    config_file = project / "mlruns" / "embedded" / tracker.run_id / "artifacts" / "config.yaml"
    assert yaml.safe_load(config_file.read_text()) == CONFIG


def test_overlays_and_curves_are_uploaded_as_png(project: Path) -> None:
    tracker = Tracker.start(TrackingConfig(experiment="embedded", overlays=2), config={"a": 1},
                            project_root=project)
    for step in range(5):
        tracker.log_metrics({"loss/dice": 0.5 - 0.1 * step}, step)
    images = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    gt = np.zeros((3, 32, 32), bool)
    gt[:, 8:24, 8:24] = True
    logits = np.where(gt[:, None, ::4, ::4], 5.0, -5.0)  # (3, 1, 8, 8) low-res logits
    tracker.log_overlays(images, gt, logits, np.full((3, 2, 2), 16.0), np.array([[1, -1]] * 3),
                         step=4, tag="val")
    tracker.log_curves()
    tracker.close()
    root = project / "mlruns" / "embedded" / tracker.run_id / "artifacts"
    png = (root / "overlays" / "val" / "step_0000004.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    curves = sorted(p.name for p in (root / "curves").iterdir())
    assert "loss__dice.png" in curves and "all_metrics.png" in curves


def test_resume_continues_the_same_run(project: Path) -> None:
    cfg = TrackingConfig(experiment="embedded", system_metrics=False)
    first = Tracker.start(cfg, config={"steps": 10, "lr": 0.1}, project_root=project)
    first.log_metrics({"loss": 3.0}, 0)
    first.log_metrics({"loss": 2.0}, 5)
    first.close("KILLED")
    with pytest.warns(UserWarning, match="steps"):
        again = Tracker.start(cfg, config={"steps": 20, "lr": 0.1}, project_root=project,
                              resume_run_id=first.run_id)
    assert again.run_id == first.run_id
    assert again.history["loss"] == ([0, 5], [3.0, 2.0])  # curves cover the whole run
    again.log_metrics({"loss": 1.0}, 10)
    again.close()
    run = MlflowClient(again.uri).get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["steps"] == "10"
    assert run.data.tags["samft.resume_changed_params"] == "steps"
    steps = [m.step for m in MlflowClient(again.uri).get_metric_history(first.run_id, "loss")]
    assert steps == [0, 5, 10]


def test_resume_of_unknown_run_is_a_tracking_error(project: Path) -> None:
    with pytest.raises(TrackingError, match="Cannot resume"):
        Tracker.start(TrackingConfig(experiment="embedded"), config={}, project_root=project,
                      resume_run_id="0" * 32)


def test_unwritable_store_is_a_tracking_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"
    with pytest.raises(TrackingError, match=r"cannot be created") as err:
        Tracker.start(TrackingConfig(uri=uri), config={}, project_root=tmp_path)
    assert uri in str(err.value)


def test_env_uri_is_used_when_config_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              project: Path) -> None:
    uri = f"sqlite:///{project.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker.start(TrackingConfig(experiment="embedded"), config={}, project_root=tmp_path)
    tracker.close()
    assert tracker.uri == uri
    assert not (tmp_path / "mlflow.db").exists()


def test_metric_values_must_be_numbers(project: Path) -> None:
    tracker = Tracker.start(TrackingConfig(experiment="embedded"), config={}, project_root=project)
    with pytest.raises(ValueError, match="'loss' must be a number"):
        tracker.log_metrics({"loss": "high"}, 0)
    with pytest.warns(UserWarning, match="logged as 'loss_dice_'"):
        tracker.log_metrics({"loss(dice)": np.float32(0.5)}, 1)
    tracker.close()
    assert MlflowClient(tracker.uri).get_run(tracker.run_id).data.metrics["loss_dice_"] == 0.5


def test_context_manager_marks_failed_runs(project: Path) -> None:
    with pytest.raises(RuntimeError):
        with Tracker.start(TrackingConfig(experiment="embedded"), config={}, project_root=project) as tracker:
            raise RuntimeError("boom")
    assert MlflowClient(tracker.uri).get_run(tracker.run_id).info.status == "FAILED"


def test_disabled_tracker_is_a_no_op(tmp_path: Path) -> None:
    tracker = Tracker.start(TrackingConfig(enabled=False, uri="http://127.0.0.1:9", log_every=5),
                            config={}, project_root=tmp_path)
    assert not tracker.enabled and tracker.run_id == ""
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.log_overlays(None, None, None, None, None, 0)
    tracker.log_artifact(tmp_path / "missing")
    tracker.log_curves()
    tracker.close("FAILED")
    assert list(tmp_path.iterdir()) == []
    assert isinstance(Tracker.disabled(), Tracker)


def test_flatten_and_params() -> None:
    assert flatten({"a": {"b": {"c": 1}, "d": {}}, "e": [1, {"f": 2}]}) == {
        "a.b.c": 1, "a.d": {}, "e": [1, {"f": 2}]}
    params = config_params({"k" * 300: 1, "sp ace/ok:x": None, "bad$": 2.5})
    long_key = next(k for k in params if k.startswith("k"))
    assert len(long_key) == 250
    assert params["sp ace/ok:x"] == "None" and params["bad_"] == "2.5"


def test_builtin_system_metrics_when_psutil_is_installed(project: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psutil", reason="MLflow's system metrics need psutil")
    import time

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = Tracker.start(TrackingConfig(experiment="embedded"), config={}, project_root=project)
    assert tracker._monitor is not None
    deadline = time.monotonic() + 60
    while tracker._monitor._logging_step < 1 and time.monotonic() < deadline:
        time.sleep(0.1)  # bounded wait for the monitor thread's first aggregate
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.close()
    metrics = MlflowClient(tracker.uri).get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics
    assert "system/process_rss_mb" not in metrics  # the fallback is only for missing psutil


def test_fallback_system_metrics_without_psutil(project: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("psutil hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    tracker = Tracker.start(TrackingConfig(experiment="embedded"), config={}, project_root=project)
    assert tracker._monitor is None
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.close()
    rss = MlflowClient(tracker.uri).get_run(tracker.run_id).data.metrics["system/process_rss_mb"]
    assert 10.0 < rss < 1e6  # MiB: a Python process with torch/mlflow loaded


def test_rejected_metrics_are_named_and_do_not_stop_training(project: Path) -> None:
    tracker = Tracker.start(TrackingConfig(experiment="embedded", system_metrics=False), config={},
                            project_root=project)
    tracker.log_metrics({"loss": 1.0}, 0)
    MlflowClient(tracker.uri).delete_run(tracker.run_id)  # someone deletes the run mid-training
    tracker.log_metrics({"loss": 0.5, "val/iou": 0.2}, 1)  # queued: returns at once
    tracker.log_metrics({"loss": 0.4}, 2)
    with pytest.warns(RuntimeWarning, match=r"Not logged: 3 metric values of loss, val/iou \(steps 1-2\)") as caught:
        tracker.close()
    message = next(str(w.message) for w in caught if "Not logged" in str(w.message))
    dump = Path(message.split("Unsent metrics are in ")[1].rstrip("."))
    assert sorted(json.loads(line)["step"] for line in dump.read_text().splitlines()) == [1, 1, 2]


def test_metrics_are_logged_asynchronously(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """log_metrics hands the batch to MLflow's logging thread (synchronous=False) and does not wait."""
    tracker = Tracker.start(TrackingConfig(experiment="embedded", system_metrics=False), config={},
                            project_root=project)
    calls = []
    real = tracker._client.log_batch
    monkeypatch.setattr(tracker._client, "log_batch", lambda *a, **k: (calls.append(k.get("synchronous")),
                                                                        real(*a, **k))[1])
    for step in range(3):
        tracker.log_metrics({"loss": float(step)}, step)
    tracker.close()
    assert calls == [False, False, False]
    history = MlflowClient(tracker.uri).get_metric_history(tracker.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 1.0), (2, 2.0)]
