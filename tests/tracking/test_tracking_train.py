"""``tools/train.py`` with the demo config, run exactly as the Docker image runs it, logs to a
real MLflow server given by ``$MLFLOW_TRACKING_URI`` (as docker/compose.yaml sets it)."""

from __future__ import annotations

import json
import logging
import re
import runpy
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def image_command() -> list[str]:
    """ENTRYPOINT and CMD of the trainer image (the last stage); ``python`` -> this interpreter."""
    text = DOCKERFILE.read_text()
    trainer = text[text.rindex("\nFROM "):]
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", trainer, flags=re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", trainer, flags=re.M).group(1))
    assert entry[0] == "python"
    return [sys.executable, *entry[1:]], cmd


def test_demo_training_logs_to_the_server(mlflow_server, demo_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    entry, default_cmd = image_command()
    script = REPO / entry[1]
    if not script.is_file() or not (REPO / "configs" / "demo.yaml").is_file():
        pytest.skip("tools/train.py or configs/demo.yaml is missing")
    assert (REPO / default_cmd[0]).is_file()
    overrides = [f"data.train={demo_data / 'train'}", f"data.val={demo_data / 'val'}",
                 "train.steps=2", "train.val_every=2", "train.checkpoint_every=2",
                 "eval.max_images=1", "eval.max_masks=4", "tracking.overlays=1",
                 "tracking.log_every=1", "tracking.experiment=train-demo", "train.progress=false",
                 f"train.output_dir={tmp_path / 'outputs'}"]
    # In-process (runpy) rather than a subprocess: the same script and argv, without paying
    # for a second interpreter importing torch and mlflow.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), str(REPO / "configs" / "demo.yaml"), *overrides])
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))  # basicConfig
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    stdout, stderr = capsys.readouterr()
    assert done.value.code == 0, stdout[-2000:] + stderr[-4000:]
    assert not (tmp_path / "mlflow.db").exists()  # the env URI won over the embedded store

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("train-demo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id in stdout
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "vit_tiny"
    assert run.data.params["train.steps"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")] == [1, 2]
    assert any(k.startswith("val/") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves", "overlays"} <= artifacts
