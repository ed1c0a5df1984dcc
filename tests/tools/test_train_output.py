"""What `tools/train.py` prints in a batch job (no terminal) and how its runs are named."""

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
def runs(tmp_path_factory, demo_data: Path, tool_env, tiny_train) -> tuple[Path, str, str]:
    cwd = tmp_path_factory.mktemp("train-output")
    first = train(cwd, tool_env, demo_data, tiny_train)
    second = train(cwd, tool_env, demo_data, tiny_train, "train.run_name=named")
    return cwd, first, second


def test_batch_job_log_has_step_lines_at_log_every(runs):
    _, output, _ = runs
    steps = re.findall(r"step (\d+)/4  loss [0-9.]+  lr [0-9.e+-]+  images/s [0-9.]+", output)
    assert steps == ["2", "4"]


def test_validation_line_is_rounded(runs):
    _, output, _ = runs
    (line,) = [ln for ln in output.splitlines() if "step 4 validation:" in ln]
    assert re.search(r"miou_point \d\.\d+, miou_box ", line) and "num_masks " in line
    assert "{" not in line and not re.search(r"\d\.\d{6,}", line)  # no raw dict, no 16-digit floats


def test_mlflow_ui_hint_once_and_threads_printed(runs):
    _, output, _ = runs
    assert output.count("mlflow ui") == 1
    assert "intra-op CPU threads: 1 (train.threads)" in output


def test_runs_are_named_in_folder_and_mlflow(runs):
    cwd, _, _ = runs
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("samft-demo")
    names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    folders = sorted(p.name for p in (cwd / "outputs").iterdir())
    assert names == folders
    assert names[0] == "named" or names[1] == "named"
    default = [n for n in names if n != "named"][0]
    assert re.fullmatch(r"demo-\d{8}-\d{6}", default)


def test_end_of_run_points_to_evaluate_compare_export(runs, tool_env, tiny_eval):
    cwd, output, _ = runs
    nexts = dict(re.findall(r"^  (evaluate|export|compare): +(.+)$", output, flags=re.M))
    assert set(nexts) == {"evaluate", "export", "compare"}
    assert "--experiment samft-demo" in nexts["compare"]
    # The evaluate pointer works as printed (the run's own config: the model always fits).
    cmd = shlex.split(nexts["evaluate"])
    assert cmd[1] == "tools/evaluate.py" and cmd[2].endswith("/config.yaml")
    cmd = [sys.executable, str(REPO / cmd[1]), *cmd[2:], *tiny_eval]
    done = subprocess.run(cmd, cwd=cwd, env=tool_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^miou_point +\d\.\d{4}$", done.stdout, flags=re.M)
