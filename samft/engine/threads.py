"""How many intra-op CPU threads torch uses: ``train.threads``, else the CPUs this process may use.

PyTorch's default is the machine's core count, whatever share of it the process may actually use
(``taskset``, a container's cpuset or CPU quota) and however many ranks share the machine. Each
surplus thread spins at every parallel region's barrier, waiting for a core another process holds:
on a 2-core machine with one busy core, 40 demo steps took 163-268 s with the default and 24-29 s
with one thread. ``$OMP_NUM_THREADS`` and ``train.threads`` always win over the automatic choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from samft.config import ConfigError

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count and why it was chosen."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"intra-op CPU threads: {self.threads} ({self.reason})"


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota.

    A container started with ``--cpus=2`` on a 64-core host sees 64 CPUs in its affinity mask
    but gets 2 CPUs' worth of time; ``cpu.max`` ("200000 100000") says so.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def choose_threads(setting: int | None, *, environ: dict[str, str] | None = None,
                   cpus: int | None = None) -> ThreadChoice:
    """The thread count for ``train.threads`` = ``setting``.

    Args:
        setting: ``train.threads``: a count >= 1, or None for automatic.
        environ: Environment (default ``os.environ``): ``OMP_NUM_THREADS`` is honoured when set, and
            ``LOCAL_WORLD_SIZE`` (torchrun) splits the CPUs between the ranks of one machine.
        cpus: Usable CPUs (default :func:`usable_cpus`).

    Raises:
        ConfigError: ``setting`` below 1.
    """
    env = os.environ if environ is None else environ
    if setting is not None:
        if setting < 1:
            raise ConfigError(f"train.threads={setting}: it must be >= 1, or null to choose from the usable CPUs.")
        return ThreadChoice(setting, "train.threads")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), "$OMP_NUM_THREADS")
    cpus = usable_cpus() if cpus is None else cpus
    ranks = max(1, int(env.get("LOCAL_WORLD_SIZE", "1") or 1))
    threads = max(1, cpus // ranks)
    per_rank = f" shared by {ranks} ranks" if ranks > 1 else ""
    return ThreadChoice(threads, f"auto: {cpus} CPUs usable by this process{per_rank}; on a shared "
                                 "machine set train.threads to the cores you have to yourself")


def apply_threads(setting: int | None) -> ThreadChoice:
    """Choose the count (see :func:`choose_threads`) and set it with ``torch.set_num_threads``."""
    import torch

    choice = choose_threads(setting)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
