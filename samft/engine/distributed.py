"""Distributed data parallel with torchrun: process group, rank helpers and collective decisions.

``torchrun --nproc_per_node=8 tools/train.py configs/sam_ft.yaml`` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them everything here degrades to the single-process case.

Every decision that changes control flow (skip a step, stop, end of epoch, is-best, which checkpoint
to resume, which run folder) is taken collectively through the helpers below, so no rank ever
reaches a collective that another rank skips. Decisions made from host values (mask counts, stop
signals, folder names) travel over a gloo group on the CPU, so they never wait for the GPU stream;
only values that live on the device (a non-finite loss) are reduced on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_cpu_group: Any = None  # a gloo group for host-side decisions when the default group is NCCL


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Rank layout as torchrun exports it (single process when the variables are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device, info: DistInfo) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo otherwise) and return this rank's device.

    On CUDA the rank's device is ``cuda:LOCAL_RANK`` and it is made current *before* anything else
    touches CUDA, so no rank creates a context on ``cuda:0``.
    """
    global _cpu_group
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _cpu_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return device


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shutdown() -> None:
    global _cpu_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _cpu_group = None


def barrier() -> None:
    if enabled():
        dist.barrier(group=_cpu_group)


def host_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of host numbers (over gloo: no GPU synchronisation)."""
    if not enabled():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_cpu_group)
    return t.tolist()


def host_any(*flags: bool) -> list[bool]:
    """For each flag, whether any rank raised it (the same answer on every rank)."""
    if not enabled():
        return [bool(f) for f in flags]
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group)
    return [bool(v) for v in t.tolist()]


def device_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks of a device tensor (asynchronous on the device; no host transfer)."""
    if enabled():
        dist.all_reduce(tensor)
    return tensor


def device_max_(tensor: torch.Tensor) -> torch.Tensor:
    if enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled over gloo: file names, decisions, checkpoints)."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); ``[obj]`` without a group."""
    if not enabled():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_cpu_group)
    return out


def all_gather(obj: Any) -> list[Any]:
    if not enabled():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_cpu_group)
    return out


def num_masks_across_ranks(local: int) -> float:
    """SAM 2's loss normaliser: the number of masks summed over ranks, divided by the world size
    (so each rank's mean gradient, averaged by DDP, equals the global per-mask mean), clamped >= 1.

    Mask counts are batch shapes, known on the host: they are summed over gloo, never read back
    from the GPU."""
    world = dist.get_world_size() if enabled() else 1
    return max(host_sum([local])[0] / world, 1.0)


def on_main(fn: Any) -> Any:
    """``fn()`` run by rank 0 and its result given to every rank; an exception it raises is raised
    on every rank, so all of them stop with the same message instead of some waiting forever."""
    if not enabled():
        return fn()
    outcome: tuple[bool, Any] | None = None
    if dist.get_rank() == 0:
        try:
            outcome = (True, fn())
        except Exception as err:  # noqa: BLE001 - handed to every rank, re-raised there
            outcome = (False, err)
    ok, value = broadcast(outcome)
    if not ok:
        raise value
    return value
