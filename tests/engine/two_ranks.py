"""Shared by the tests that launch 2 gloo ranks with torchrun: the launcher and a SIGKILL of the whole job.

Import it after ``sys.path.insert(0, str(Path(__file__).parent))`` (pytest runs with
``--import-mode=importlib``, which puts no test folder on ``sys.path``).
"""

import signal
import sys
import time

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def kill_tree(pid, timeout=30):
    """SIGKILL torchrun and its workers (which run in sessions of their own, out of its process group),
    then wait until every one of them is dead, so that none still writes a file once this returns."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:  # it ended, and was reaped, before it could be killed
        return
    processes = [*parent.children(recursive=True), parent]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout
    while not all(dead(p) for p in processes):
        assert time.monotonic() < deadline, "SIGKILLed processes still running"
        time.sleep(0.02)


def dead(process):
    """Exited (a zombie counts: an orphan waits for whoever reaps it, and it runs no more code)."""
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
