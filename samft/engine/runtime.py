"""Device, precision and seeding: the few decisions every run makes before it starts."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision a run computes."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (resolved, never "auto")

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the model's forward; losses cast to fp32 themselves."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={requested} but CUDA is not available here. Use train.device=auto or cpu.")
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA devices that support it (SAM 2's choice), else fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision={requested!r}; choose one of {', '.join(PRECISIONS)}.")
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            raise ValueError("train.precision=fp16 needs a GPU; on CPU use bf16 or fp32.")
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def make_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    dev = select_device(device)
    return Runtime(device=dev, precision=resolve_precision(precision, dev))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
