"""Training checkpoints: written atomically, so an interrupted write never replaces a good file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from samft.models import CheckpointError
from samft.safe_load import load_failure_reason


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
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # samft's message, without PyTorch's advice to load with weights_only=False
        raise CheckpointError(f"Checkpoint {path} could not be read: {load_failure_reason(exc)}.") from None


def find_resume_checkpoint(resume: str | None, folder: str | Path, *, search_runs: bool = False) -> Path | None:
    """The checkpoint ``train.resume`` points to.

    Args:
        resume: None (start fresh), ``"auto"`` (the run's ``last.pt`` if there is one) or a path.
        folder: The run's checkpoint folder; with ``search_runs`` the output folder holding runs,
            of which the most recently written ``*/checkpoints/last.pt`` is taken.

    Raises:
        CheckpointError: an explicit path that does not exist.
    """
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise CheckpointError(f"train.resume={resume}: no such checkpoint. Use train.resume=auto or the path "
                                  "of an existing checkpoints/last.pt.")
        return path
    folder = Path(folder)
    candidates = folder.glob("*/checkpoints/last.pt") if search_runs else folder.glob("last.pt")
    existing = sorted(candidates, key=lambda p: p.stat().st_mtime)
    return existing[-1] if existing else None


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temp files of checkpoint writes that never finished (the process was killed between
    ``mkstemp`` and ``os.replace``). Call it only while no write is under way (at start-up)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
