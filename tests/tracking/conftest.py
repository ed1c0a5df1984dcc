"""A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied local artifacts) for the tests."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

READY_TIMEOUT_S = 90.0


@dataclass
class MlflowServer:
    """A server process the tests own: ``stop`` kills it, ``pause``/``resume`` hang it."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        return self.launch().wait_ready()

    def launch(self) -> MlflowServer:
        """Start the process without waiting (it boots while other tests run)."""
        log = (self.root / "server.log").open("ab")
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # Own process group: teardown ends the server and its uvicorn worker, nothing else.
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.root, start_new_session=True)
        log.close()
        atexit.register(self.stop)  # even if pytest itself dies before its session hooks
        return self

    def wait_ready(self) -> MlflowServer:
        """Poll ``/health`` for at most READY_TIMEOUT_S; the server is stopped on failure."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections are accepted, never answered)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        # A test server has nothing to save: a short grace period, then SIGKILL. SIGCONT first
        # in case it is paused (a stopped process does not act on SIGTERM).
        try:
            os.killpg(self.process.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    return free_port()


SERVER_FIXTURES = ("mlflow_server", "doomed_mlflow_server")
_EARLY: dict[str, MlflowServer] = {}


def _launch(name: str) -> MlflowServer:
    root = Path(tempfile.mkdtemp(prefix=f"samft-{name}-"))
    _EARLY[name] = MlflowServer(root, free_port()).launch()
    return _EARLY[name]


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Launch the servers right after collection when a selected test needs them, so that
    they boot while the tests before them run."""
    if importlib.util.find_spec("mlflow") is None:
        return
    for name in SERVER_FIXTURES:
        if name not in _EARLY and any(name in getattr(i, "fixturenames", ()) for i in items):
            _launch(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for name in list(_EARLY):
        server = _EARLY.pop(name)
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def _ready(name: str) -> MlflowServer:
    pytest.importorskip("mlflow")
    server = _EARLY.get(name) or _launch(name)  # _launch: collected without the hook
    return server.wait_ready()


@pytest.fixture(scope="session")
def mlflow_server() -> MlflowServer:
    """The session's server (booting one costs seconds on 2 cores). A test may pause it
    (SIGSTOP) but must resume it in a ``finally``."""
    return _ready("mlflow_server")


@pytest.fixture(scope="session")
def doomed_mlflow_server() -> MlflowServer:
    """A server that one test kills for good."""
    return _ready("doomed_mlflow_server")
