"""System metrics: MLflow's monitor when psutil is installed, a minimal fallback otherwise.

MLflow's ``SystemMetricsMonitor`` samples CPU, RAM, disk, network and (with ``pynvml``) GPU
utilisation and memory in a thread and logs them as ``system/*`` with its own step counter.
Without psutil it cannot be imported; then samft logs the process RSS and PyTorch's CUDA peak
memory with the training metrics, at the training step.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from typing import Any

logger = logging.getLogger(__name__)

_MB = 1024.0 * 1024.0


def start_builtin_monitor(run_id: str, tracking_uri: str, resume: bool) -> Any | None:
    """Start MLflow's system-metrics thread for ``run_id``.

    Returns:
        The running monitor (call ``finish()`` at the end), or None when psutil is missing or
        the monitor cannot start.
    """
    try:
        import psutil  # noqa: F401  (MLflow's CPU monitor needs it at import time)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        logger.info("psutil is not installed: logging minimal system metrics (process RSS).")
        return None
    try:
        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=tracking_uri)
        monitor.start()
    except Exception as err:  # the monitor is a nicety; never block training on it
        logger.warning("MLflow system metrics could not start (%s); using the fallback.", err)
        return None
    return monitor


def process_rss_mb() -> float | None:
    """Resident set size of this process in MiB (current on Linux, peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        pass
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    # ru_maxrss is KiB on Linux and bytes on macOS.
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0


def torch_cuda_memory_mb() -> dict[str, float]:
    """PyTorch allocator peak/current memory of the current CUDA device; {} without CUDA.

    Only reported when CUDA is already initialised, so that the tracker never creates a CUDA
    context (which would cost memory on a device the job does not use).
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        "system/cuda_max_memory_allocated_mb": torch.cuda.max_memory_allocated() / _MB,
        "system/cuda_memory_allocated_mb": torch.cuda.memory_allocated() / _MB,
    }


def fallback_metrics(include_rss: bool) -> dict[str, float]:
    """The minimal system metrics logged with each training-metrics call."""
    metrics = torch_cuda_memory_mb()
    if include_rss:
        rss = process_rss_mb()
        if rss is not None:
            metrics["system/process_rss_mb"] = rss
    return metrics
