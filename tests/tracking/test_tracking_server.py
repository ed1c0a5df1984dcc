"""Tracker and comparison against a real ``mlflow server`` (see conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from samft.config import TrackingConfig  # noqa: E402
from samft.tracking import Tracker, TrackingError  # noqa: E402
from samft.tracking.compare import CompareError, compare_runs, metric_direction  # noqa: E402
from samft.tracking.mlflow_tracker import HTTP_ENV_DEFAULTS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BASE = {"model": {"type": "vit_b"}, "optim": {"lr": 1e-4, "wd": 0.1}, "loss": {"name": "sam"}}


@pytest.fixture(autouse=True)
def _fast_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HTTP retries: a refused connection fails at once (the test of a hung server sets its own)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _session(uri: str, experiment: str, config: dict, losses: list[float], root: Path,
             run_name: str) -> Tracker:
    """A short logging session standing in for training."""
    tracker = Tracker.start(TrackingConfig(uri=uri, experiment=experiment, run_name=run_name,
                             overlays=1), config=config, project_root=root,
                            tags={"samft.dataset_fingerprint": "demo-fp"})
    for step, loss in enumerate(losses):
        tracker.log_metrics({"loss/total": loss, "val/miou_point": 1.0 - loss}, step * 10)
    gt = np.zeros((1, 16, 16), bool)
    gt[0, 4:12, 4:12] = True
    tracker.log_overlays(np.zeros((1, 16, 16, 3), np.uint8), gt, gt.astype(np.float32) - 0.5,
                         np.array([[[8.0, 8.0]]]), np.array([[1]]), step=10)
    tracker.log_curves()
    tracker.close()
    return tracker


def test_session_lands_params_metrics_artifacts(mlflow_server, tmp_path: Path) -> None:
    tracker = _session(mlflow_server.uri, "srv-land", BASE, [0.9, 0.5, 0.6], tmp_path, "a")
    assert tracker.ui_hint == f"MLflow run: {mlflow_server.uri}/#/experiments/" \
                              f"{tracker.experiment_id}/runs/{tracker.run_id}"
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model.type": "vit_b", "optim.lr": "0.0001", "optim.wd": "0.1",
                               "loss.name": "sam"}
    assert run.data.tags["samft.dataset_fingerprint"] == "demo-fp"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss/total")] == [0.9, 0.5, 0.6]
    names = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert names == {"config.yaml", "curves", "overlays"}
    # Proxied artifacts end up in the server's --artifacts-destination.
    stored = {p.name for p in (mlflow_server.root / "artifacts").rglob("*.png")}
    assert {"step_0000010.png", "loss__total.png", "val__miou_point.png", "all_metrics.png"} <= stored
    downloaded = client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path))
    assert "lr: 0.0001" in Path(downloaded).read_text()


def compare_tool():
    """tools/compare_runs.py imported as a module (its main() is the CLI)."""
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "tools" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_shows_exactly_the_differing_params(mlflow_server, tmp_path: Path, capsys) -> None:
    other = {**BASE, "optim": {"lr": 3e-4, "wd": 0.1}, "loss": {"name": "focal"}}
    first = _session(mlflow_server.uri, "srv-cmp", BASE, [0.9, 0.5, 0.6], tmp_path, "sam")
    second = _session(mlflow_server.uri, "srv-cmp", other, [0.8, 0.7, 0.4], tmp_path, "focal")

    cmp = compare_runs("srv-cmp", tracking_uri=mlflow_server.uri)
    assert [r.run_id for r in cmp.runs] == [first.run_id, second.run_id]
    assert cmp.differing_params == ["loss.name", "optim.lr"]
    loss = {r.run_name: r.metrics["loss/total"] for r in cmp.runs}
    assert (loss["sam"].final, loss["sam"].best, loss["sam"].best_step) == (0.6, 0.5, 10)
    iou = {r.run_name: r.metrics["val/miou_point"] for r in cmp.runs}
    assert iou["focal"].best == pytest.approx(0.6) and iou["focal"].best_step == 20
    assert not any(k.startswith("system/") for k in cmp.metrics)

    only_sam = compare_runs("srv-cmp", tracking_uri=mlflow_server.uri,
                            filter_string="params.loss.name = 'sam'")
    assert [r.run_id for r in only_sam.runs] == [first.run_id]
    assert only_sam.differing_params == []

    out = tmp_path / "report"
    code = compare_tool().main(["--experiment", "srv-cmp", "--tracking-uri", mlflow_server.uri,
                                "--metrics", "loss/total,val/miou_point", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    param_rows = [line.split()[0] for line in stdout.splitlines() if line.startswith("params.")]
    assert param_rows == ["params.loss.name", "params.optim.lr"]
    assert "sam (" in stdout and "focal (" in stdout
    best_row = next(line for line in stdout.splitlines() if line.startswith("val/miou_point best (max)"))
    assert best_row.count("*") == 1 and best_row.rstrip().endswith("0.6 @20 *")
    # loss.name differs: the totals are different sums, so no run is marked best and a note says why
    loss_row = next(line for line in stdout.splitlines() if line.startswith("loss/total best (min)"))
    assert "*" not in loss_row
    assert "note: loss/total is not comparable across these runs: their loss weighting differs (loss.name)" \
        in stdout
    assert (out / "curves" / "loss__total.png").read_bytes().startswith(b"\x89PNG")
    csv_text = (out / "runs.csv").read_text()
    assert csv_text.splitlines()[0].startswith("run_id,run_name,status,params.loss.name,params.optim.lr,")
    assert "![loss/total](curves/loss__total.png)" in (out / "report.md").read_text()


def test_compare_errors_name_the_problem(mlflow_server, capsys) -> None:
    with pytest.raises(CompareError, match="No experiment 'srv-nope'"):
        compare_runs("srv-nope", tracking_uri=mlflow_server.uri)
    _ = Tracker.start(TrackingConfig(uri=mlflow_server.uri, experiment="srv-empty"), config={},
                      project_root=Path.cwd()).close()
    with pytest.raises(CompareError, match="matches filter"):
        compare_runs("srv-empty", tracking_uri=mlflow_server.uri, filter_string="params.x = 'y'")
    assert compare_tool().main(["--experiment", "srv-empty", "--tracking-uri", mlflow_server.uri,
                                "--filter", "params.x = = 'y'"]) == 2
    assert "MLflow rejected filter" in capsys.readouterr().err


def test_unreachable_server_at_start_is_a_tracking_error(tmp_path: Path, unused_port: int) -> None:
    uri = f"http://127.0.0.1:{unused_port}"
    with pytest.raises(TrackingError) as err:
        Tracker.start(TrackingConfig(uri=uri), config={}, project_root=tmp_path)
    message = str(err.value)
    assert uri in message and "Training has not started" in message and "tracking.enabled=false" in message


def test_killed_server_warns_once_and_reports_losses(doomed_mlflow_server, tmp_path: Path) -> None:
    server = doomed_mlflow_server
    cfg = TrackingConfig(uri=server.uri, experiment="outage", system_metrics=False)
    tracker = Tracker.start(cfg, config={"a": 1}, project_root=tmp_path)
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker._collect(wait=True)  # step 0 is on the server
    server.stop()  # for good: nothing uses this server afterwards

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 6):
            tracker.log_metrics({"loss": 1.0 / step}, step)  # returns at once: MLflow's thread sends
            tracker._collect(wait=True)  # as if training went on until MLflow gave up on the batch
    outage = [w for w in caught if "did not take" in str(w.message)]
    assert len(outage) == 1  # one warning per outage, not one per step
    assert "1 metric values of loss (steps 1-1)" in str(outage[0].message) and server.uri in str(outage[0].message)

    with warnings.catch_warnings(record=True) as closing:
        warnings.simplefilter("always")
        tracker.close()
    assert len(closing) == 1
    message = str(closing[0].message)
    assert "Not logged: 5 metric values of loss (steps 1-5)" in message and "not marked FINISHED" in message
    dump = Path(message.split("Unsent metrics are in ")[1].rstrip("."))
    assert [json.loads(line)["step"] for line in dump.read_text().splitlines()] == [1, 2, 3, 4, 5]
    shutil.rmtree(dump.parent)


def test_hung_server_is_ridden_out_by_mlflows_retries_each_step_once(mlflow_server, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server = mlflow_server
    tracker = Tracker.start(TrackingConfig(uri=server.uri, experiment="hang", system_metrics=False),
                            config={}, project_root=tmp_path)
    tracker.log_metrics({"loss": 1.0}, 0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    server.pause()
    try:
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(1, 5):
                tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
        # Synchronous sends would take >= 4 x 7 attempts x 1 s here; queued ones take milliseconds (3 s: a busy CPU).
        assert time.monotonic() - started < 3.0
        time.sleep(2.0)  # requests time out and are retried meanwhile
    finally:
        server.resume()
    tracker.log_metrics({"loss": 0.1}, 5)
    tracker.close()
    assert not [w for w in caught if "did not take" in str(w.message)]
    # Timed-out requests may still have been processed after the resume and were sent again:
    # MLflow must end up with each step exactly once.
    history = MlflowClient(server.uri).get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(6))


def test_http_defaults_bound_a_dead_servers_cost(mlflow_server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    Tracker.start(TrackingConfig(uri=mlflow_server.uri, experiment="srv-env"), config={},
                  project_root=tmp_path).close()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_ENV_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == HTTP_ENV_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    Tracker.start(TrackingConfig(uri=mlflow_server.uri, experiment="srv-env"), config={},
                  project_root=tmp_path).close()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"  # the user's setting wins


@pytest.mark.parametrize(("name", "direction"), [
    ("loss/total", "min"), ("loss/dice", "min"), ("loss_round0/iou", "min"), ("val/miou_point", "max"),
    ("val/miou_click5", "max"), ("val/boundary_iou_point", "max"), ("val/iou_calibration_point", "min"),
    ("val/stability_point", "max"), ("val/stable_share_point", "max"), ("images_per_s", "max"),
    ("lr/encoder", "none"), ("weight/dice", "none"), ("grad_norm", "none"), ("val/num_masks", "none"),
    ("skipped_files", "min"), ("mask_iou", "max"), ("something_new", "none")])
def test_metric_direction_is_the_declared_one(name: str, direction: str) -> None:
    assert metric_direction(name) == direction


def test_metric_direction_override() -> None:
    assert metric_direction("something_new", maximize=["something_new"]) == "max"
    assert metric_direction("val/miou_point", minimize=["val/miou_point"]) == "min"
    assert metric_direction("lr/encoder", minimize=["lr/encoder"]) == "min"


def test_server_refusing_the_host_name_is_a_tracking_error_with_the_fix(mlflow_server,
                                                                         tmp_path: Path) -> None:
    import socket

    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = ""
    if not address.startswith("127.") or name in ("localhost",):
        pytest.skip(f"host name {name!r} does not resolve to a loopback address here")
    uri = f"http://{name}:{mlflow_server.port}"  # not in the server's default --allowed-hosts
    with pytest.raises(TrackingError, match="--allowed-hosts including") as err:
        Tracker.start(TrackingConfig(uri=uri), config={}, project_root=tmp_path)
    assert uri in str(err.value)
