"""Opening the MLflow run of a training run: experiment, new or resumed run, params, tags, config.

Everything here is synchronous and any failure is a :class:`TrackingError` raised before training
starts; once the run is open, :class:`samft.tracking.Tracker` logs asynchronously.
"""

from __future__ import annotations

import getpass
import sys
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from samft.tracking import params, store
from samft.tracking.store import TrackingError


@dataclass(frozen=True)
class OpenedRun:
    """A run ready for metrics.

    Attributes:
        history: Metric key -> (steps, values) already on the server (a resumed run's), so that
            the curves drawn at the end cover the whole run.
    """

    run_id: str
    run_name: str
    experiment_id: str
    history: dict[str, tuple[list[float], list[float]]]


def open_run(client: Any, uri: str, project_root: Path, *, experiment: str, run_name: str | None,
             resume_run_id: str | None, config: Mapping[str, Any], tags: Mapping[str, str] | None) -> OpenedRun:
    """Create (or continue) the run and log its params, tags and config.

    Raises:
        TrackingError: The store refused any of it; a new run is then marked FAILED.
    """
    try:
        experiment_id = _experiment_id(client, experiment, uri)
        if resume_run_id:
            run = _resumed_run(client, resume_run_id, uri)
            experiment_id, history = run.info.experiment_id, _server_history(client, run)
        else:
            run = client.create_run(experiment_id, tags=_run_tags(project_root, tags), run_name=run_name)
            history = {}
    except TrackingError:
        raise
    except Exception as err:
        hint = "Check the server's log and that this client's mlflow version matches it."
        if "403" in str(err):
            host = urllib.parse.urlparse(uri).netloc
            hint = (f"MLflow 3 servers reject unknown Host headers: start the server with "
                    f"--allowed-hosts including {host!r} (docker/compose.yaml does).")
        raise TrackingError(f"MLflow at {uri} refused to start the run: {_short(err)}. Training has not "
                            f"started. {hint}") from err
    _log_setup(client, uri, run, config, project_root, tags, resumed=bool(resume_run_id))
    return OpenedRun(run.info.run_id, run.info.run_name, experiment_id, history)


def _log_setup(client: Any, uri: str, run: Any, config: Mapping[str, Any], project_root: Path,
               tags: Mapping[str, str] | None, resumed: bool) -> None:
    from mlflow.entities import Param, RunTag

    run_id = run.info.run_id
    wanted = params.config_params(config)
    existing = run.data.params
    changed = sorted(k for k, v in wanted.items() if k in existing and existing[k] != v)
    fresh = [Param(k, v) for k, v in wanted.items() if k not in existing]
    run_tags = []
    if resumed:
        # Keep the run's original commit/version tags; record what this resume ran with.
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        now = _run_tags(project_root, tags)
        run_tags = [RunTag(k, v) for k, v in now.items() if k not in run.data.tags]
        run_tags.append(RunTag("samft.resumed_at", stamp))
        commit = now.get("mlflow.source.git.commit")
        if commit and commit != run.data.tags.get("mlflow.source.git.commit"):
            run_tags.append(RunTag("samft.resume_git_commit", commit))
    if changed:
        # MLflow params are immutable: a resumed run keeps its first values, the new ones are in the
        # resume's config file and listed in a tag.
        warnings.warn(f"Resumed run {run_id} keeps its original params; changed on resume: "
                      f"{', '.join(changed)} (see the run's resumes/ config).", stacklevel=4)
        run_tags.append(RunTag("samft.resume_changed_params", ", ".join(changed)[:8000]))
    try:
        for i in range(0, max(len(fresh), len(run_tags)), params.MAX_PARAMS_PER_BATCH):
            part = slice(i, i + params.MAX_PARAMS_PER_BATCH)
            client.log_batch(run_id, params=fresh[part], tags=run_tags[part])
        name = "config.yaml"
        if resumed:
            name = f"resumes/{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}/config.yaml"
        client.log_text(run_id, params.config_yaml(config), name)
    except Exception as err:
        client.set_terminated(run_id, "FAILED")
        raise TrackingError(
            f"MLflow at {uri} could not store the params/config of run {run_id}: {err}. Training has "
            "not started. Check that the artifact store is writable (server: --artifacts-destination) "
            "and the server's log."
        ) from err


def _experiment_id(client: Any, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=store.artifact_location_for(uri, name))
        except Exception:
            # Another rank or job created it between our two calls.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"Experiment {name!r} at {uri} is deleted. Restore it (`mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`) or choose another tracking.experiment."
        )
    return experiment.experiment_id


def _resumed_run(client: Any, run_id: str, uri: str) -> Any:
    try:
        run = client.get_run(run_id)
    except Exception as err:
        raise TrackingError(
            f"Cannot resume MLflow run {run_id!r}: it is not in {uri} ({_short(err)}). Resume "
            f"with the same tracking.uri as the original run, or start a new run."
        ) from err
    client.update_run(run_id, status="RUNNING")
    return run


def _server_history(client: Any, run: Any) -> dict[str, tuple[list[float], list[float]]]:
    history = {}
    for key in run.data.metrics:
        if key.startswith("system/"):
            continue
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        history[key] = ([m.step for m in points], [m.value for m in points])
    return history


def _run_tags(project_root: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    import samft

    tags = {"samft.version": samft.__version__, "mlflow.source.name": Path(sys.argv[0]).name}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    tags.update(store.git_info(project_root))
    tags.update({str(k): str(v) for k, v in (extra or {}).items()})
    return tags


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 300 else text[:297] + "..."
