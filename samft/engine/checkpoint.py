"""Training checkpoints: written atomically, so an interrupted write never replaces a good file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save`` to a temp file in the same folder, fsync, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so readers see the old file or the new one,
    never half of one, even when the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a samft training checkpoint (tensors and plain containers only: ``weights_only=True``)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
