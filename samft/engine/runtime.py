"""Device, precision and seeding: the few decisions every run makes before it starts."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from samft.config import ConfigError

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
        raise ConfigError(f"train.device={requested}: CUDA is not available here. Use train.device=auto or cpu.")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(f"train.device={requested}: Apple MPS is not available here. Use train.device=auto or cpu.")
    if device.type == "cuda" and device.index is not None:
        # Kernels launched without an explicit device, and libraries that use "the current device",
        # would otherwise run on cuda:0.
        torch.cuda.set_device(device)
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA devices that support it (SAM 2's choice), else fp32."""
    if requested not in PRECISIONS:
        raise ConfigError(f"train.precision={requested!r}; choose one of {', '.join(PRECISIONS)}.")
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision=fp16 needs a GPU; on CPU use bf16 or fp32.")
        return requested
    if device.type == "cuda" and native_bf16(device):
        return "bf16"
    return "fp32"


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (compute capability >= 8.0, Ampere on). ``torch.cuda.is_bf16_supported()``
    also counts emulation, which would pick slow bf16 on a V100 or T4; it also touches the *current*
    device, so it is asked here about ``device`` explicitly."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def make_runtime(device: str = "auto", precision: str = "auto", dist_init=None) -> Runtime:
    """The run's device and precision. ``dist_init(device) -> device`` joins the process group and
    picks this rank's device first (``cuda:LOCAL_RANK``), so precision is resolved on that device."""
    dev = select_device(device)
    if dist_init is not None:
        dev = dist_init(dev)
    return Runtime(device=dev, precision=resolve_precision(precision, dev))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
