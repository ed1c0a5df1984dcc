"""Command-line entry points; ``tools/*.py`` are thin wrappers around these functions."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

USAGE = """usage: python tools/train.py CONFIG.yaml [key=value ...]

Fine-tune SAM as CONFIG says; key=value pairs override it (e.g. train.steps=200 optim.lr=1e-4).
Set SAMFT_DEBUG=1 to see full tracebacks."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input the user controls: reported as one paragraph, never a traceback wall."""
    from samft.config import ConfigError
    from samft.data import DataError
    from samft.engine.trainer import TrainingError
    from samft.models import CheckpointError
    from samft.registry import RegistryError
    from samft.tracking import TrackingError

    return (ConfigError, DataError, CheckpointError, RegistryError, TrackingError, TrainingError)


def is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun job, which stay quiet."""
    return os.environ.get("RANK", "0") == "0"


def run_cli(main, argv: list[str]) -> int:
    """Run ``main(argv)``; user errors print ``error: ...`` and return exit code 2."""
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return main(argv)
    except user_errors() as exc:
        if os.environ.get("SAMFT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _train(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from samft.config import load
    from samft.engine.trainer import Trainer

    cfg = load(argv[0], argv[1:])
    result = Trainer(cfg, project_root=Path.cwd()).fit()
    if not is_main_process():
        return 0
    if result.stopped_by:
        print(f"\nStopped by {result.stopped_by} at step {result.steps}; checkpoint {result.checkpoint}. "
              f"Resume with: python tools/train.py {' '.join(argv)} train.resume=auto "
              f"train.run_name={result.run_dir.name}")
        return 128 + int(getattr(signal, result.stopped_by))
    print(f"\nTrained {result.steps} steps. Run folder: {result.run_dir}")
    print(f"Checkpoint: {result.checkpoint}")
    if result.val_metrics:
        print("Validation: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.val_metrics.items())))
    if result.run_id:
        print(f"MLflow run {result.run_id}. {result.ui_hint}")
    return 0


def train_main(argv: list[str] | None = None) -> int:
    return run_cli(_train, sys.argv[1:] if argv is None else argv)
