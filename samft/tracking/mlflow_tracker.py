"""The MLflow tracker used by the training loop: a thin layer over MLflow's client.

Starting a tracker checks the store and fails with a :class:`TrackingError` that says what to do;
once training runs, tracking never stops it. Metrics go through MLflow's asynchronous logging
(``log_batch(..., synchronous=False)``): MLflow's thread sends them, so a slow or dead server
costs a training step nothing, and MLflow's HTTP retries (bounded below) ride out short outages.
A batch that still fails is not sent again: the next call warns once, naming what was not logged,
and :meth:`Tracker.close` names everything that was not, and writes those metrics to a JSONL file.

Typical use (rank 0 only; other ranks get :meth:`Tracker.disabled`)::

    with Tracker.start(cfg.tracking, config=resolved, project_root=root) as tracker:
        for step in ...:
            tracker.log_metrics({"loss": loss.item()}, step)
        tracker.log_curves()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samft.tracking import params, plots, store, system
from samft.tracking.run import open_run

logger = logging.getLogger(__name__)

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) make a dead server cost the end of a
# run many minutes while close() waits for the last batches; these keep it to seconds, and the
# retries still cover a server restart. Only applied when the user has not set them.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class Tracker:
    """One MLflow run: params, metrics (asynchronous), artifacts, overlays and curves.

    Create with :meth:`start` (or :meth:`disabled`); end with :meth:`close` or a ``with`` block.
    ``tracking`` is the validated ``tracking`` section of the config (:class:`samft.config.TrackingConfig`
    or its OmegaConf node): the tracker reads ``overlays`` and ``system_metrics`` from it.
    """

    def __init__(self, client: Any, tracking: Any, *, run_id: str, experiment_id: str, uri: str,
                 history: dict[str, tuple[list[float], list[float]]] | None = None,
                 monitor: Any | None = None) -> None:
        self._client = client
        self.tracking = tracking
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self.ui_hint = store.ui_hint(uri, experiment_id, run_id) if client else "tracking disabled"
        self.history = history if history is not None else {}  # key -> (steps, values), for the curves
        self._monitor = monitor
        self._in_flight: list[tuple[Any, list[Any]]] = []  # (MLflow's RunOperations, the metrics it sends)
        self._lost: list[Any] = []  # metrics MLflow could not take
        self._lost_files: list[str] = []
        self._last_error: BaseException | None = None
        self._outage = False  # a failure was reported and nothing has got through since
        self._renamed: set[str] = set()
        self._staging: Path | None = None
        self._closed = client is None

    @classmethod
    def disabled(cls, tracking: Any = None) -> Tracker:
        """A tracker whose methods do nothing (tracking off, or a non-zero rank)."""
        return _DisabledTracker(tracking)

    @classmethod
    def start(cls, tracking: Any, *, config: Mapping[str, Any], project_root: Path,
              resume_run_id: str | None = None, tags: Mapping[str, str] | None = None,
              run_name: str | None = None) -> Tracker:
        """Check the store, then start (or continue) a run and log config, params and tags.

        Args:
            tracking: The validated ``tracking`` config section.
            config: The resolved, nested config; logged as dotted params and ``config.yaml``.
            project_root: Holds the embedded default store (``mlflow.db``, ``mlruns/``) and
                is where the git commit is read.
            resume_run_id: Continue this MLflow run (same run id, metrics continue).
            tags: Extra run tags, e.g. ``{"samft.dataset_fingerprint": "..."}``.
            run_name: Name of a new run when ``tracking.run_name`` is unset. Without any name
                MLflow draws a random one from Python's ``random``, which training seeds: every
                run of a seed got the same name.

        Returns:
            A running tracker, or a disabled one when ``tracking.enabled`` is false.

        Raises:
            TrackingError: Store unreachable, run to resume missing, experiment deleted, ...
        """
        if not tracking.enabled:
            return cls.disabled(tracking)
        uri = store.resolve_tracking_uri(tracking.uri, Path(project_root))
        store.check_reachable(uri, timeout_s=5.0)
        if urllib.parse.urlparse(uri).scheme in store.HTTP_SCHEMES:
            for name, value in HTTP_ENV_DEFAULTS.items():
                os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        opened = open_run(client, uri, Path(project_root), experiment=tracking.experiment,
                          run_name=tracking.run_name or run_name, resume_run_id=resume_run_id,
                          config=config, tags=tags)
        monitor = None
        if tracking.system_metrics:
            monitor = system.start_builtin_monitor(opened.run_id, uri, resume=bool(resume_run_id))
        logger.info("Tracking to %s (run %r, %s).", uri, opened.run_name, opened.run_id)
        return cls(client, tracking, run_id=opened.run_id, experiment_id=opened.experiment_id, uri=uri,
                   history=opened.history, monitor=monitor)

    @property
    def enabled(self) -> bool:
        """True for a tracker that logs somewhere."""
        return True

    # -- metrics ----------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Queue metrics at ``step`` for MLflow's logging thread; returns at once, whatever the server does.

        Args:
            metrics: key -> number (Python number, numpy scalar or one-element tensor). Keys with
                characters MLflow rejects are renamed (``_``) with one warning.
            step: Training step.

        Raises:
            ValueError: A value that is not a number (a bug in the caller, not a server issue).
        """
        if self._closed:
            return
        from mlflow.entities import Metric

        values = dict(metrics)
        if self.tracking.system_metrics:
            values.update(system.fallback_metrics(include_rss=self._monitor is None))
        timestamp = int(time.time() * 1000)
        batch = []
        for key, value in values.items():
            name, number = self._metric_key(key), _as_float(key, value)
            steps, series = self.history.setdefault(name, ([], []))
            steps.append(int(step))
            series.append(number)
            batch.append(Metric(name, number, timestamp, int(step)))
        self._collect()
        try:
            self._in_flight.append((self._client.log_batch(self.run_id, metrics=batch, synchronous=False), batch))
        except Exception as err:  # the queue itself refused (e.g. MLflow shutting down): keep training
            self._failed(batch, err)

    def _metric_key(self, key: str) -> str:
        name = params.sanitize_key(key)
        if name != key and key not in self._renamed:
            self._renamed.add(key)
            warnings.warn(f"Metric {key!r} is logged as {name!r} (MLflow name rules).", stacklevel=3)
        return name

    def _collect(self, wait: bool = False) -> None:
        """Settle the batches MLflow has finished (all of them with ``wait``); warn about a new failure."""
        pending = []
        for operations, batch in self._in_flight:
            futures = _futures(operations)
            if not wait and (futures is None or not all(f.done() for f in futures)):
                pending.append((operations, batch))
                continue
            try:
                operations.wait()
            except Exception as err:  # MLflow reports the batch's failure here, retries spent
                self._failed(batch, err)
            else:
                self._outage = False
        self._in_flight = pending

    def _failed(self, batch: list[Any], err: BaseException) -> None:
        self._lost.extend(batch)
        self._last_error = err
        if not self._outage and not self._closed:
            self._outage = True
            warnings.warn(f"MLflow at {self.uri} did not take {_describe(batch)} of run {self.run_id} "
                          f"({_short(err)}); not logged, training goes on. The run's end lists all that "
                          "was not logged.", RuntimeWarning, stacklevel=4)

    # -- artifacts --------------------------------------------------------------------------------
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory; a failure warns, naming it, and training goes on.

        Raises:
            ValueError: ``path`` does not exist.
        """
        if self._closed:
            return
        path = Path(path)
        if not path.exists():
            raise ValueError(f"log_artifact: {path} does not exist; pass an existing file or folder.")
        upload = self._client.log_artifacts if path.is_dir() else self._client.log_artifact
        try:
            upload(self.run_id, str(path), artifact_path)
        except Exception as err:
            self._lost_files.append(str(path))
            self._last_error = err
            warnings.warn(f"MLflow at {self.uri} did not take the artifact {path} of run {self.run_id} "
                          f"({_short(err)}); not logged, training goes on.", RuntimeWarning, stacklevel=2)

    def _staging_dir(self) -> Path:
        # Removed at close unless an upload failed: then it holds what the warning names.
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=f"samft-tracking-{self.run_id[:8]}-"))
        return self._staging

    def log_overlays(self, images: Any, gt_masks: Any, pred_masks: Any, points: Any = None,
                     point_labels: Any = None, step: int = 0, tag: str = "val", boxes: Any = None) -> None:
        """Upload one PNG, ``overlays/<tag>/step_<step>.png``: image | ground truth | prediction (IoU) | prompt
        for the first ``tracking.overlays`` images. Shapes as in :func:`samft.tracking.plots.overlay_figure`.

        Raises:
            ValueError: Shapes that do not fit together (names the argument).
        """
        if self._closed or self.tracking.overlays == 0:
            return
        fig = plots.overlay_figure(images, gt_masks, pred_masks, points, point_labels, boxes,
                                   max_rows=self.tracking.overlays, title=f"{tag} step {step}")
        safe_tag = params.sanitize_key(tag).replace("/", "_")
        target = self._staging_dir() / "overlays" / safe_tag / f"step_{int(step):07d}.png"
        self.log_artifact(plots.save_figure(fig, target), f"overlays/{safe_tag}")

    def log_curves(self) -> None:
        """Upload ``curves/<metric>.png`` for every logged metric and ``curves/all_metrics.png``."""
        if self._closed or not self.history:
            return
        folder = self._staging_dir() / "curves"
        for key, series in self.history.items():
            plots.save_figure(plots.curves_figure(key, {self.run_id[:8]: series}), folder / plots.metric_file_name(key))
        plots.save_figure(plots.grid_figure(self.history), folder / "all_metrics.png")
        self.log_artifact(folder, "curves")

    # -- end --------------------------------------------------------------------------------------
    def close(self, status: str = "FINISHED") -> None:
        """Stop system metrics, wait for the queued metrics and end the run with ``status``.

        Raises:
            ValueError: Unknown status. Server failures only warn, naming what was not logged.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"close(status=...) must be one of {RUN_STATUSES}; got {status!r}.")
        if self._closed:
            return
        if self._monitor is not None:
            self._monitor.finish()
        self._closed = True  # from here on the closing report below replaces per-batch warnings
        self._collect(wait=True)
        ended = True
        try:
            self._client.set_terminated(self.run_id, status)
        except Exception as err:
            ended, self._last_error = False, err
        if ended and not self._lost and not self._lost_files:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            return
        dump = self._staging_dir() / "unlogged_metrics.jsonl"
        dump.write_text("".join(json.dumps({"key": m.key, "value": m.value, "step": m.step,
                                            "timestamp": m.timestamp}) + "\n" for m in self._lost))
        lost = [_describe(self._lost)] if self._lost else []
        lost += [f"artifacts {', '.join(self._lost_files)}"] if self._lost_files else []
        warnings.warn(f"MLflow at {self.uri} could not take everything for run {self.run_id} "
                      f"({_short(self._last_error)}). Not logged: {'; '.join(lost) or 'nothing'}"
                      f"{'' if ended else f'; the run is not marked {status}'}. Unsent metrics are in {dump}.",
                      RuntimeWarning, stacklevel=2)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close("FINISHED" if exc_type is None else "KILLED" if interrupted else "FAILED")


class _DisabledTracker(Tracker):
    """Same interface, does nothing."""

    def __init__(self, tracking: Any) -> None:
        super().__init__(None, tracking, run_id="", experiment_id="", uri="")

    @property
    def enabled(self) -> bool:
        return False

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        return None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        return None

    def log_overlays(self, *args: Any, **kwargs: Any) -> None:
        return None

    def log_curves(self) -> None:
        return None

    def close(self, status: str = "FINISHED") -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"close(status=...) must be one of {RUN_STATUSES}; got {status!r}.")


def _futures(operations: Any) -> list[Any] | None:
    """The futures of MLflow's ``RunOperations``, to ask whether a batch is done without waiting on it.

    ``RunOperations`` offers only a blocking ``wait()``; its futures are the one way to settle finished
    batches during training. None (MLflow changed): the batch is settled at close, with ``wait()``.
    """
    futures = getattr(operations, "_operation_futures", None)
    return list(futures) if isinstance(futures, (list, tuple)) else None


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"log_metrics: {key!r} must be a number or a one-element tensor; got "
                         f"{type(value).__name__} {value!r:.80}.") from err


def _describe(metrics: list[Any]) -> str:
    """``5 metric values of loss, val/iou (steps 1-3)``."""
    keys = sorted({m.key for m in metrics})
    steps = [m.step for m in metrics]
    shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    return f"{len(metrics)} metric values of {shown} (steps {min(steps)}-{max(steps)})"


def _short(err: BaseException | None) -> str:
    text = f"{type(err).__name__}: {err}" if err is not None else "no error recorded"
    return text if len(text) <= 300 else text[:297] + "..."
