"""Distributed data parallel with torchrun: process group, rank helpers and cross-rank reductions.

``torchrun --nproc_per_node=8 tools/train.py configs/sam_ft.yaml`` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them everything here degrades to the single-process case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    """Join the process group (NCCL on CUDA, gloo otherwise) and return this rank's device."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum of ``value`` over ranks (``value`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor(float(value), device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def num_masks_across_ranks(local: int, device: torch.device) -> float:
    """SAM 2's loss normaliser: the number of masks summed over ranks, divided by the world size
    (so each rank's mean gradient, averaged by DDP, equals the global per-mask mean), clamped >= 1."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return max(all_reduce_sum(local, device) / world, 1.0)
