"""The MLflow tracker used by the training loop.

A tracker owns one MLflow run. Starting it checks the store before training starts and fails
with a :class:`TrackingError` that says what to do; once training runs, tracking never stops it:
metrics that cannot be sent are buffered and retried with exponential backoff, the first
streak of failures is reported by one warning, and whatever could not be delivered by
:meth:`Tracker.close` is written to a local JSONL file named in a second warning.

Typical use (rank 0 only; other ranks get :meth:`Tracker.disabled`)::

    with Tracker.start(cfg.tracking, config=resolved, project_root=root) as tracker:
        for step in ...:
            if tracker.should_log(step):
                tracker.log_metrics({"loss": loss.item()}, step)
        tracker.log_curves()
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from samft.tracking import params, plots, store, system
from samft.tracking.store import TrackingError

logger = logging.getLogger(__name__)

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# A dead server must cost a logging call seconds, not the minutes of MLflow's defaults
# (7 retries, backoff factor 2, 120 s timeout). Only applied when the user has not set them.
_HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@dataclasses.dataclass(frozen=True)
class TrackingSettings:
    """The ``tracking`` section of a config.

    Attributes:
        enabled: False gives a no-op tracker.
        uri: Tracking URI; None -> ``$MLFLOW_TRACKING_URI`` -> ``sqlite:///<root>/mlflow.db``.
        experiment: MLflow experiment name (created when missing).
        run_name: MLflow run name; None: the name the caller passes to :meth:`Tracker.start`
            (the trainer passes the run folder's name).
        log_every: Steps between metric logs (:meth:`Tracker.should_log`).
        log_checkpoint: Whether the engine uploads checkpoints as artifacts.
        system_metrics: CPU/GPU memory and utilisation metrics.
        overlays: Samples drawn per :meth:`Tracker.log_overlays` call (0 disables overlays).
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str = "samft"
    run_name: str | None = None
    log_every: int = 10
    log_checkpoint: bool = False
    system_metrics: bool = True
    overlays: int = 4

    @classmethod
    def from_cfg(cls, cfg: Any) -> TrackingSettings:
        """Build from a mapping, an OmegaConf node, an object with attributes, or None.

        Raises:
            ValueError: For an unknown key (with the closest known names) or a bad value.
        """
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        raw = params.plain(cfg) if not dataclasses.is_dataclass(cfg) else dataclasses.asdict(cfg)
        if not isinstance(raw, Mapping):
            raw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        known = [f.name for f in dataclasses.fields(cls)]
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"tracking.{key} is not a tracking setting.{hint} Known: {known}.")
        settings = cls(**raw)
        settings._validate()
        return settings

    def _validate(self) -> None:
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"tracking.log_every must be an integer >= 1; got {self.log_every!r}.")
        if not isinstance(self.overlays, int) or self.overlays < 0:
            raise ValueError(f"tracking.overlays must be an integer >= 0; got {self.overlays!r}.")
        if not self.experiment or not isinstance(self.experiment, str):
            raise ValueError(f"tracking.experiment must be a non-empty string; got {self.experiment!r}.")


class Tracker:
    """One MLflow run: params, buffered metrics, artifacts, overlays and curves.

    Create with :meth:`start` (or :meth:`disabled`); end with :meth:`close` or a ``with`` block.
    Class attributes tune the failure handling:

    Attributes:
        warn_after_failures: Consecutive failed sends before the one warning.
        retry_backoff_s: Wait after the first failure; doubles per failure up to
            ``max_retry_backoff_s``. Calls in between only buffer, so a dead server costs one
            failed request per backoff period, not one per step.
        max_buffered: Metric values kept while the server is away; the oldest are dropped
            beyond it (and counted in the final warning).
        close_attempts: Send attempts for the remaining buffer in :meth:`close`.
        connect_timeout_s: Reachability check timeout at start.
    """

    warn_after_failures = 3
    retry_backoff_s = 2.0
    max_retry_backoff_s = 60.0
    max_buffered = 500_000
    close_attempts = 2
    connect_timeout_s = 5.0

    def __init__(
        self,
        client: Any,
        settings: TrackingSettings,
        *,
        run_id: str,
        experiment_id: str,
        uri: str,
        history: dict[str, tuple[list[float], list[float]]] | None = None,
        monitor: Any | None = None,
    ) -> None:
        self._client = client
        self.settings = settings
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self.ui_hint = store.ui_hint(uri, experiment_id, run_id) if client else "tracking disabled"
        self._history = history if history is not None else {}
        self._monitor = monitor
        self._buffer: list[Any] = []
        self._pending_artifacts: list[tuple[Path, str | None]] = []
        self._failures = 0
        self._next_attempt = 0.0
        self._warned = False
        self._dropped = 0
        self._rejected = 0
        self._last_error: BaseException | None = None
        self._renamed_keys: set[str] = set()
        self._staging: Path | None = None
        self._closed = client is None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def disabled(cls, tracking_cfg: Any = None) -> Tracker:
        """A tracker whose methods do nothing (tracking off, or a non-zero rank).

        Args:
            tracking_cfg: Optional ``tracking`` section; only ``log_every`` is used, so that
                :meth:`should_log` answers the same on every rank.
        """
        settings = dataclasses.replace(TrackingSettings.from_cfg(tracking_cfg), enabled=False)
        return _DisabledTracker(settings)

    @classmethod
    def start(
        cls,
        tracking_cfg: Any,
        *,
        config: Mapping[str, Any],
        project_root: Path,
        resume_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
    ) -> Tracker:
        """Check the store, then start (or continue) a run and log config, params and tags.

        Args:
            tracking_cfg: The ``tracking`` config section (see :class:`TrackingSettings`).
            config: The resolved, nested config; logged as dotted params and ``config.yaml``.
            project_root: Holds the embedded default store (``mlflow.db``, ``mlruns/``) and
                is where the git commit is read.
            resume_run_id: Continue this MLflow run (same run id, metrics continue).
            tags: Extra run tags, e.g. ``{"samft.dataset_fingerprint": "..."}``.
            run_name: Name of a new run when ``tracking.run_name`` is unset. Without any name
                MLflow draws a random one from Python's ``random``, which training seeds: every
                run of a seed got the same name.

        Returns:
            A running tracker, or a disabled one when ``tracking_cfg.enabled`` is false.

        Raises:
            TrackingError: Store unreachable, run to resume missing, experiment deleted, ...
            ValueError: Invalid tracking settings.
        """
        settings = TrackingSettings.from_cfg(tracking_cfg)
        if not settings.enabled:
            return cls.disabled(settings)
        if settings.run_name is None and run_name:
            settings = dataclasses.replace(settings, run_name=run_name)
        uri = store.resolve_tracking_uri(settings.uri, Path(project_root))
        store.check_reachable(uri, cls.connect_timeout_s)
        if urllib.parse.urlparse(uri).scheme in store.HTTP_SCHEMES:
            for name, value in _HTTP_ENV_DEFAULTS.items():
                os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run, experiment_id, history = _open_run(client, settings, uri, Path(project_root),
                                                resume_run_id, tags)
        run_id = run.info.run_id
        monitor = None
        if settings.system_metrics:
            monitor = system.start_builtin_monitor(run_id, uri, resume=bool(resume_run_id))
        tracker = cls(client, settings, run_id=run_id, experiment_id=experiment_id, uri=uri,
                      history=history, monitor=monitor)
        tracker._log_setup(run, config, Path(project_root), tags, resumed=bool(resume_run_id))
        # No ui_hint here: the caller prints it once (the trainer at start).
        logger.info("Tracking to %s (run %r, %s).", uri, run.info.run_name, run_id)
        return tracker

    def _log_setup(self, run: Any, config: Mapping[str, Any], project_root: Path,
                   tags: Mapping[str, str] | None, resumed: bool) -> None:
        from mlflow.entities import Param, RunTag

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
            # MLflow params are immutable: a resumed run keeps its first values, the new ones
            # are in the resume's config file and listed in a tag.
            warnings.warn(
                f"Resumed run {self.run_id} keeps its original params; changed on resume: "
                f"{', '.join(changed)} (see the run's resumes/ config).", stacklevel=3)
            run_tags.append(RunTag("samft.resume_changed_params", ", ".join(changed)[:8000]))
        try:
            for i in range(0, max(len(fresh), len(run_tags)), params.MAX_PARAMS_PER_BATCH):
                sl = slice(i, i + params.MAX_PARAMS_PER_BATCH)
                self._client.log_batch(self.run_id, params=fresh[sl], tags=run_tags[sl])
            name = "config.yaml"
            if resumed:
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                name = f"resumes/{stamp}/config.yaml"
            self._client.log_text(self.run_id, params.config_yaml(config), name)
        except Exception as err:
            self._client.set_terminated(self.run_id, "FAILED")
            raise TrackingError(
                f"MLflow at {self.uri} could not store the params/config of run {self.run_id}: "
                f"{err}. Training has not started. Check that the artifact store is writable "
                f"(server: --artifacts-destination) and the server's log."
            ) from err

    # -- properties -----------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True for a tracker that logs somewhere."""
        return True

    def should_log(self, step: int) -> bool:
        """True every ``tracking.log_every`` steps (step 0 included)."""
        return step % self.settings.log_every == 0

    @property
    def history(self) -> dict[str, tuple[list[float], list[float]]]:
        """Metric key -> (steps, values) of everything logged (and, on resume, fetched)."""
        return self._history

    # -- metrics --------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record metrics at ``step`` and send them; never raises because of the server.

        Args:
            metrics: key -> number (Python number, numpy scalar or one-element tensor).
                Keys with characters MLflow rejects are renamed (``_``) with one warning.
            step: Training step.

        Raises:
            ValueError: A value that is not a number (a bug in the caller, not a server issue).
        """
        if self._closed:
            return
        from mlflow.entities import Metric

        values = dict(metrics)
        if self.settings.system_metrics:
            values.update(system.fallback_metrics(include_rss=self._monitor is None))
        timestamp = int(time.time() * 1000)
        for key, value in values.items():
            name = self._metric_key(key)
            number = _as_float(key, value)
            steps, series = self._history.setdefault(name, ([], []))
            steps.append(int(step))
            series.append(number)
            self._buffer.append(Metric(name, number, timestamp, int(step)))
        if len(self._buffer) > self.max_buffered:
            excess = len(self._buffer) - self.max_buffered
            del self._buffer[:excess]
            self._dropped += excess
        self._flush()

    def _metric_key(self, key: str) -> str:
        name = params.sanitize_key(key)
        if name != key and key not in self._renamed_keys:
            self._renamed_keys.add(key)
            warnings.warn(f"Metric {key!r} is logged as {name!r} (MLflow name rules).", stacklevel=3)
        return name

    def _flush(self, force: bool = False) -> bool:
        """Send buffered metrics (then pending artifacts); False when the server failed."""
        if not force and time.monotonic() < self._next_attempt:
            return False
        try:
            while self._buffer:
                chunk = self._buffer[: params.MAX_METRICS_PER_BATCH]
                self._send(lambda chunk=chunk: self._client.log_batch(self.run_id, metrics=chunk),
                           f"{len(chunk)} metric values")
                del self._buffer[: len(chunk)]
            while self._pending_artifacts:
                path, artifact_path = self._pending_artifacts[0]
                if path.exists():
                    self._send(lambda p=path, a=artifact_path: self._upload(p, a), f"artifact {path}")
                self._pending_artifacts.pop(0)
        except Exception as err:  # any server/network/store failure: keep the data, go on
            self._on_failure(err)
            return False
        if self._failures and self._warned:
            logger.warning("MLflow at %s is back; buffered metrics were sent.", self.uri)
        self._failures = 0
        self._next_attempt = 0.0
        return True

    def _send(self, call: Any, what: str) -> None:
        """Run one request; a rejection (the data, not the server) is dropped with a warning.

        Retrying data that MLflow refuses (e.g. the run was deleted) would block everything
        queued behind it, so it is counted as lost instead; other errors propagate.
        """
        try:
            call()
        except Exception as err:
            if not _is_rejection(err):
                raise
            self._rejected += 1
            if self._rejected == 1:
                warnings.warn(f"MLflow at {self.uri} rejected {what} of run {self.run_id} "
                              f"({_short(err)}); dropped, and so is anything else it rejects.",
                              RuntimeWarning, stacklevel=5)
            if what.endswith("metric values"):
                self._dropped += int(what.split()[0])

    def _on_failure(self, err: BaseException) -> None:
        self._failures += 1
        self._last_error = err
        backoff = min(self.retry_backoff_s * 2 ** (self._failures - 1), self.max_retry_backoff_s)
        self._next_attempt = time.monotonic() + backoff
        logger.debug("MLflow send failed (%d in a row): %s", self._failures, err)
        if self._failures >= self.warn_after_failures and not self._warned:
            self._warned = True
            warnings.warn(
                f"MLflow at {self.uri} failed {self._failures} times in a row "
                f"({_short(err)}). Not logged yet: {self._describe_pending()}. They are kept "
                f"and retried every <= {self.max_retry_backoff_s:.0f} s; training goes on.",
                RuntimeWarning, stacklevel=4)

    def _describe_pending(self) -> str:
        parts = []
        if self._buffer:
            keys = sorted({m.key for m in self._buffer})
            steps = [m.step for m in self._buffer]
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            parts.append(f"{len(self._buffer)} metric values of {shown} (steps "
                         f"{min(steps)}-{max(steps)})")
        if self._pending_artifacts:
            names = ", ".join(str(p) for p, _ in self._pending_artifacts[:5])
            parts.append(f"{len(self._pending_artifacts)} artifacts ({names})")
        if self._dropped:
            parts.append(f"{self._dropped} metric values dropped (buffer full or rejected)")
        return "; ".join(parts) or "nothing"

    # -- artifacts ------------------------------------------------------------------------
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory; on failure it is queued and retried with metrics.

        Args:
            path: Local file or directory. Must still exist when a retry happens.
            artifact_path: Folder inside the run's artifacts (None: the root).

        Raises:
            ValueError: ``path`` does not exist.
        """
        if self._closed:
            return
        path = Path(path)
        if not path.exists():
            raise ValueError(f"log_artifact: {path} does not exist; pass an existing file or folder.")
        self._pending_artifacts.append((path, artifact_path))
        self._flush(force=not self._failures)

    def _upload(self, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def _staging_dir(self) -> Path:
        # Kept until close: an overlay that could not be uploaded is retried from here.
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=f"samft-tracking-{self.run_id[:8]}-"))
        return self._staging

    def log_overlays(self, images: Any, gt_masks: Any, pred_masks: Any, points: Any = None,
                     point_labels: Any = None, step: int = 0, tag: str = "val",
                     boxes: Any = None) -> None:
        """Upload one PNG per call: image | ground truth | prediction (IoU) | prompt.

        Artifact ``overlays/<tag>/step_<step>.png`` with the first ``tracking.overlays``
        images. Shapes and conventions as in :func:`samft.tracking.plots.overlay_figure`:
        images (B, 3, H, W) or (B, H, W, 3); masks (B, H, W) or (B, K, H, W) (K prompts per
        image), float = logits; points (B, N, 2) or (B, K, N, 2) xy in image pixels;
        point_labels with SAM's 1/0/2/3/-1; boxes (B, 4) or (B, K, 4) xyxy.

        Raises:
            ValueError: Shapes that do not fit together (names the argument).
        """
        if self._closed or self.settings.overlays == 0:
            return
        fig = plots.overlay_figure(images, gt_masks, pred_masks, points, point_labels, boxes,
                                   max_rows=self.settings.overlays, title=f"{tag} step {step}")
        safe_tag = params.sanitize_key(tag).replace("/", "_")
        target = self._staging_dir() / "overlays" / safe_tag / f"step_{int(step):07d}.png"
        plots.save_figure(fig, target)
        self.log_artifact(target, f"overlays/{safe_tag}")

    def log_curves(self) -> None:
        """Upload ``curves/<metric>.png`` for every logged metric and ``curves/all_metrics.png``."""
        if self._closed or not self._history:
            return
        folder = self._staging_dir() / "curves"
        for key, series in self._history.items():
            fig = plots.curves_figure(key, {self.run_id[:8]: series})
            plots.save_figure(fig, folder / plots.metric_file_name(key))
        plots.save_figure(plots.grid_figure(self._history), folder / "all_metrics.png")
        self.log_artifact(folder, "curves")

    # -- end ------------------------------------------------------------------------------
    def close(self, status: str = "FINISHED") -> None:
        """Stop system metrics, send what is buffered and end the run with ``status``.

        Args:
            status: "FINISHED", "FAILED" or "KILLED".

        Raises:
            ValueError: Unknown status. Server failures only warn (naming what was lost).
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"close(status=...) must be one of {RUN_STATUSES}; got {status!r}.")
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            self._monitor.finish()
        self._warned = True  # the closing report below replaces the outage warning
        delivered = False
        for attempt in range(self.close_attempts):
            if attempt:
                time.sleep(min(1.0, self.retry_backoff_s))
            delivered = self._flush(force=True)
            if delivered:
                break
        try:
            self._client.set_terminated(self.run_id, status)
        except Exception as err:
            delivered = False
            self._last_error = err
        if delivered and not self._dropped:
            self._remove_staging()
            return
        self._report_loss(status)

    def _report_loss(self, status: str) -> None:
        dump = self._staging_dir() / "unlogged_metrics.jsonl"
        with dump.open("w", encoding="utf-8") as out:
            for m in self._buffer:
                out.write(json.dumps({"key": m.key, "value": m.value, "step": m.step,
                                      "timestamp": m.timestamp}) + "\n")
        warnings.warn(
            f"MLflow at {self.uri} could not take everything for run {self.run_id} "
            f"({_short(self._last_error)}). Not logged: {self._describe_pending()}; the run may "
            f"not be marked {status}. Unsent metrics are in {dump} and unsent images in "
            f"{dump.parent}.", RuntimeWarning, stacklevel=3)

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED")
        else:
            self.close("FAILED")


class _DisabledTracker(Tracker):
    """Same interface, does nothing; ``should_log`` answers like an enabled tracker's so that
    every rank takes the same branch (metric all-reduces must not diverge across ranks)."""

    def __init__(self, settings: TrackingSettings) -> None:
        super().__init__(None, settings, run_id="", experiment_id="", uri="")

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


# -- helpers --------------------------------------------------------------------------------
def _as_float(key: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"log_metrics: {key!r} must be a number or a one-element tensor; got "
            f"{type(value).__name__} {value!r:.80}."
        ) from err


_REJECTION_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
                    "INVALID_STATE"}


def _is_rejection(err: BaseException) -> bool:
    """True when MLflow refused the data itself (4xx-type error codes), not a transient failure."""
    return getattr(err, "error_code", None) in _REJECTION_CODES


def _short(err: BaseException | None) -> str:
    text = f"{type(err).__name__}: {err}" if err is not None else "no error recorded"
    return text if len(text) <= 300 else text[:297] + "..."


def _open_run(client: Any, settings: TrackingSettings, uri: str, project_root: Path,
              resume_run_id: str | None, tags: Mapping[str, str] | None) -> tuple[Any, str, dict]:
    """Create (or fetch, to resume) the run; any failure is a :class:`TrackingError`.

    Returns:
        (run, experiment id, metric history already on the server).
    """
    try:
        experiment_id = _experiment_id(client, settings.experiment, uri)
        if resume_run_id:
            run = _resumed_run(client, resume_run_id, uri)
            return run, run.info.experiment_id, _server_history(client, run)
        run = client.create_run(experiment_id, tags=_run_tags(project_root, tags),
                                run_name=settings.run_name)
        return run, experiment_id, {}
    except TrackingError:
        raise
    except Exception as err:
        hint = "Check the server's log and that this client's mlflow version matches it."
        if "403" in str(err):
            host = urllib.parse.urlparse(uri).netloc
            hint = (f"MLflow 3 servers reject unknown Host headers: start the server with "
                    f"--allowed-hosts including {host!r} (docker/compose.yaml does).")
        raise TrackingError(
            f"MLflow at {uri} refused to start the run: {_short(err)}. Training has not "
            f"started. {hint}"
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
    """Metric histories of a resumed run, so that its curves cover the whole run."""
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
