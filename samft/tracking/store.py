"""Where runs are stored: tracking-URI resolution, the reachability check, run metadata.

One scheme everywhere: without an explicit URI and without ``$MLFLOW_TRACKING_URI`` the store is
the embedded SQLite database ``<project_root>/mlflow.db`` with artifacts in
``<project_root>/mlruns``. MLflow 3 deprecates its file store, so a bare path is not a default.
For any ``sqlite:///<dir>/<name>.db`` the artifacts of new experiments go to ``<dir>/mlruns``, so
the database and its artifacts always sit side by side and can be moved together.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from samft.errors import UserError

DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlruns"
HTTP_SCHEMES = ("http", "https")


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message names the URI and what to do."""


def resolve_tracking_uri(uri: str | None, project_root: Path) -> str:
    """Return the tracking URI to use.

    Args:
        uri: Explicit URI from the config, or None.
        project_root: Directory holding the embedded default store.

    Returns:
        ``uri`` if given, else ``$MLFLOW_TRACKING_URI`` if set, else
        ``sqlite:///<abs project_root>/mlflow.db``.
    """
    if uri:
        return str(uri)
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri:
        return env_uri
    db_path = Path(project_root).resolve() / DEFAULT_DB_NAME
    return f"sqlite:///{db_path}"


def sqlite_path(uri: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` URI, or None for any other scheme."""
    if not uri.startswith("sqlite:///"):
        return None
    # sqlite:////abs/path -> /abs/path ; sqlite:///rel/path -> rel/path (SQLAlchemy's rule)
    return Path(uri[len("sqlite:///") :])


def artifact_location_for(uri: str, experiment: str) -> str | None:
    """Artifact root of a new experiment: ``<db dir>/mlruns/<experiment>`` for SQLite, else None.

    Explicit because MLflow's in-process default is ``./mlruns`` relative to the current
    directory. None lets a server decide (``--default-artifact-root`` /
    ``--artifacts-destination``).
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    folder = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"
    return (db.resolve().parent / DEFAULT_ARTIFACT_DIR / folder).as_uri()


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when the store at ``uri`` cannot be used.

    HTTP(S) servers must answer ``GET <uri>/health`` within ``timeout_s``; SQLite stores need a
    writable directory. Other schemes (databricks, plugins) are checked by the first client call.

    Raises:
        TrackingError: With one paragraph naming the URI and the fix.
    """
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in HTTP_SCHEMES:
        _check_http(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri)


def _check_http(uri: str, timeout_s: float) -> None:
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:  # noqa: S310
            if response.status == 200:
                return
            problem = f"answered HTTP {response.status} on {health}"
    except urllib.error.HTTPError as err:
        # A proxy in front of the server may not route /health; the server itself is up.
        if err.code in (401, 403, 404):
            return
        problem = f"answered HTTP {err.code} on {health}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        problem = f"did not answer {health} within {timeout_s:.0f} s ({reason})"
    raise TrackingError(
        f"The MLflow tracking server at {uri} {problem}. Training has not started. Start the "
        f"server (for example `docker compose -f docker/compose.yaml up -d mlflow`, or "
        f"`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`), "
        f"fix tracking.uri / $MLFLOW_TRACKING_URI, or unset both to log to the embedded store "
        f"sqlite:///<project_root>/{DEFAULT_DB_NAME}; tracking.enabled=false turns tracking off."
    )


def _check_sqlite(uri: str) -> None:
    db = sqlite_path(uri)
    if db is None:
        return
    folder = db.resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err
    else:
        if os.access(folder, os.W_OK):
            return
        reason = "the directory is not writable"
    raise TrackingError(
        f"The embedded MLflow store {uri} cannot be created in {folder}: {reason}. Training has "
        f"not started. Point tracking.uri (or $MLFLOW_TRACKING_URI) to a writable "
        f"sqlite:////absolute/path/{DEFAULT_DB_NAME} or to a running MLflow server, or set "
        f"tracking.enabled=false."
    )


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Browser URL of a run: on the server itself, or on a local ``mlflow ui`` (port 5000)."""
    scheme = urllib.parse.urlparse(uri).scheme
    base = uri.rstrip("/") if scheme in HTTP_SCHEMES else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """One line telling a person how to look at the run."""
    url = run_url(uri, experiment_id, run_id)
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in HTTP_SCHEMES:
        return f"MLflow run: {url}"
    return f"mlflow ui --backend-store-uri {uri}  # then open {url}"


def git_info(project_root: Path) -> dict[str, str]:
    """Tags for the git commit of ``project_root``; empty outside a git work tree.

    Returns:
        ``{"mlflow.source.git.commit": sha, "samft.git_dirty": "true"|"false"}`` or ``{}``.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=project_root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    tags = {"mlflow.source.git.commit": commit}
    if status is not None:
        tags["samft.git_dirty"] = "true" if status else "false"
    return tags
