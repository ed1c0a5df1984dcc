"""Measure what a training step really allocates: the peak the memory planner is checked against.

On CUDA this is the caching allocator's own count (``torch.cuda.max_memory_allocated``). On a CPU,
PyTorch allocates tensors with ``malloc``, so glibc's count of bytes in use (``mallinfo2``: heap
chunks in use plus ``mmap``-ed blocks) is the same quantity; :class:`PeakMemory` reads it after every
aten op of the step (a dispatch mode, like :class:`samft.engine.syncs.SyncCounter`). Temporaries an
op allocates and frees inside itself are not seen on the CPU; everything that outlives one op is.

    base = allocated_bytes(device)          # before the model exists
    ...build the trainer, run one step (optimiser state)...
    with PeakMemory(device) as peak:
        trainer.train_step(batch)
    peak.bytes - base                       # the step's peak, parameters and optimiser state included
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@lru_cache(maxsize=1)
def _mallinfo2() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        raise RuntimeError("Measuring CPU memory needs glibc >= 2.33 (mallinfo2); measure on a CUDA device instead.")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2


def allocated_bytes(device: torch.device | str = "cpu") -> int:
    """Bytes the device's allocator holds now (CPU: every ``malloc`` of the process, not only tensors)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    info = _mallinfo2()()
    return int(info.uordblks + info.hblkhd)


class PeakMemory(TorchDispatchMode):
    """The highest :func:`allocated_bytes` while active (``bytes``), read after every aten op on a CPU.

    Args:
        device: Where the step runs; on CUDA the allocator's peak statistic is reset and read instead.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.bytes = allocated_bytes(self.device)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = max(self.bytes, torch.cuda.max_memory_allocated(self.device))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.device.type != "cuda":
            self.bytes = max(self.bytes, allocated_bytes())
        return out


def step_peak(train_step, batch: Any, device: torch.device | str, base: int) -> int:
    """Peak bytes of one training step in steady state, everything the run holds included.

    Runs ``train_step(batch)`` once (AdamW allocates its state in the first step), then measures a
    second step. ``base`` is :func:`allocated_bytes` taken before the model was built, so the result
    counts the weights, the optimiser state and the step's activations and temporaries.
    """
    import gc

    train_step(batch)
    gc.collect()
    with PeakMemory(device) as peak:
        train_step(batch)
    return peak.bytes - base


def with_masks(batch: Any, count: int) -> Any:
    """``batch`` (a collated :class:`samft.data.Batch`) with exactly ``count`` masks, its own repeated as
    needed: the planner counts ``data.max_masks`` per image, so a measured step should carry as many."""
    repeat = -(-count // batch.masks.shape[0])
    return batch.replace(**{key: getattr(batch, key).repeat_interleave(repeat, 0)[:count]
                            for key in ("masks", "points", "point_labels", "image_index")})
