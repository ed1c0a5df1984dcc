"""What `tools/train.py` prints in a batch job (no terminal) and how its run is named. One tiny run;
tests/tools/test_readme.py runs more (a named one, evaluate as the summary prints it)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def train(cwd: Path, env: dict[str, str], demo_data: Path, tiny: list[str], *extra: str) -> str:
    """Run tools/train.py on the demo config as a user would, output captured (so: no terminal)."""
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(REPO / "configs" / "demo.yaml"),
           f"data.train={demo_data / 'train'}", f"data.val={demo_data / 'val'}", *tiny, *extra]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_data: Path, tool_env, tiny_train) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("train-output")
    return cwd, train(cwd, tool_env, demo_data, tiny_train)


def test_batch_job_log_has_step_lines_at_log_every(runs):
    _, output = runs
    steps = re.findall(r"step (\d+)/4  loss [0-9.]+  lr [0-9.e+-]+  images/s [0-9.]+", output)
    assert steps == ["2", "4"]


def test_validation_line_is_rounded(runs):
    _, output = runs
    (line,) = [ln for ln in output.splitlines() if "step 4 validation:" in ln]
    assert re.search(r"miou_point \d\.\d+, miou_box ", line) and "num_masks " in line
    assert "{" not in line and not re.search(r"\d\.\d{6,}", line)  # no raw dict, no 16-digit floats


def test_mlflow_ui_hint_once_and_threads_printed(runs):
    _, output = runs
    assert output.count("mlflow ui") == 1
    assert "intra-op CPU threads: 1 (train.threads)" in output


def test_run_is_named_after_config_and_time_in_folder_and_mlflow(runs):
    cwd, output = runs
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("samft-demo")
    (run,) = client.search_runs([experiment.experiment_id])
    (folder,) = (cwd / "outputs").iterdir()
    # Before: MLflow drew the name from the seeded `random`, the same for every run.
    assert run.info.run_name == folder.name and re.fullmatch(r"demo-\d{8}-\d{6}", folder.name)
    assert f"MLflow run '{folder.name}' of experiment 'samft-demo': http://127.0.0.1:5000/#/" in output


def test_end_of_run_points_to_evaluate_compare_export(runs):
    cwd, output = runs
    (folder,) = (cwd / "outputs").iterdir()
    run = f"outputs/{folder.name}"
    nexts = {k: shlex.split(v) for k, v in re.findall(r"^  (evaluate|export|compare): +(.+)$", output, flags=re.M)}
    # The run's own config: model and input size always fit the checkpoint (the README runs this form).
    assert nexts["evaluate"][1:] == ["tools/evaluate.py", f"{run}/config.yaml",
                                     f"model.checkpoint={run}/checkpoints/best.pt", "--json", f"{run}/eval.json"]
    assert nexts["export"][1:] == ["tools/export.py", run, "--format", "sam", "--out", f"{run}/sam_finetuned.pth"]
    assert nexts["compare"][1:] == ["tools/compare_runs.py", "--experiment", "samft-demo", "--out", "outputs/compare"]
    assert (folder / "config.yaml").is_file() and (folder / "checkpoints" / "best.pt").is_file()
