"""What training prints for a person: step lines, validation lines and the end-of-run summary.

MLflow gets every value at full precision; the console gets a few rounded numbers a person can
read in a batch-job log (no terminal, no progress bar) and the commands to run next.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _number(value: float) -> str:
    """4 significant digits; integers (counts) without decimals; tiny/huge values in e-notation."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


def format_step(step: int, total: int, record: Mapping[str, float]) -> str:
    """One line per logged step: ``step 40/600  loss 0.8123  lr 2.000e-03  images/s 12.5``.

    Args:
        step: Steps done.
        total: ``train.steps``.
        record: The step's logged metrics (``loss/total``, ``lr/<group>``, ``images_per_s``).
    """
    parts = [f"step {step}/{total}"]
    if "loss/total" in record:
        parts.append(f"loss {_number(record['loss/total'])}")
    lrs = [v for k, v in record.items() if k.startswith("lr/")]
    if lrs:
        parts.append(f"lr {_number(lrs[0])}")  # the first group's: the others follow the same schedule
    if "images_per_s" in record:
        parts.append(f"images/s {record['images_per_s']:.1f}")
    return "  ".join(parts)


def _metric(key: str, value: float) -> str:
    """``miou_point 0.3121``: scores with 4 decimals (comparable across lines), counts as integers."""
    name = key.removeprefix("val/")
    if name.startswith("num_") and float(value).is_integer():
        return f"{name} {int(value)}"
    return f"{name} {value:.4f}"


def format_validation(step: int, metrics: Mapping[str, float]) -> str:
    """``step 200 validation: miou_point 0.3121, miou_box 0.4012, ... num_masks 192``."""
    return f"step {step} validation: " + ", ".join(_metric(k, v) for k, v in metrics.items())


@dataclass(frozen=True)
class RunInfo:
    """What the end-of-run summary needs to know about the finished run."""

    run_dir: Path
    steps: int
    val_metrics: Mapping[str, float]
    experiment: str | None = None  # MLflow experiment; None when tracking is off
    run_name: str | None = None
    run_url: str | None = None


def shown_path(path: Path) -> str:
    """``path`` relative to the current folder when inside it: shorter commands to copy."""
    # abspath, not resolve: .venv/bin/python is a symlink whose target is not what the user typed
    absolute, cwd = os.path.abspath(path), os.path.abspath(os.getcwd())
    return os.path.relpath(absolute, cwd) if absolute.startswith(cwd + os.sep) else str(path)


def run_summary(info: RunInfo, python: str = "python") -> list[str]:
    """Lines printed when training ends: where everything is, and the commands to run next.

    The evaluate command uses the run's own resolved ``config.yaml``, so model name and input size
    always match the checkpoint.
    """
    best = info.run_dir / "checkpoints" / "best.pt"
    checkpoint = best if best.is_file() else info.run_dir / "checkpoints" / "last.pt"
    run_dir = shown_path(info.run_dir)
    lines = [f"Trained {info.steps} steps. Run folder: {run_dir}", f"Checkpoint: {shown_path(checkpoint)}"]
    if info.val_metrics:
        lines.append("Validation: " + ", ".join(_metric(k, v) for k, v in info.val_metrics.items()))
    if info.run_url:
        lines.append(f"MLflow run {info.run_name!r} of experiment {info.experiment!r}: {info.run_url}")
    py, ckpt = shlex.quote(python), shlex.quote(shown_path(checkpoint))
    config = shlex.quote(f"{run_dir}/config.yaml")
    lines += ["Next:",
              f"  evaluate: {py} tools/evaluate.py {config} model.checkpoint={ckpt} "
              f"--json {shlex.quote(run_dir + '/eval.json')}",
              f"  export:   {py} tools/export.py {shlex.quote(run_dir)} --format sam "
              f"--out {shlex.quote(run_dir + '/sam_finetuned.pth')}"]
    if info.experiment:
        lines.append(f"  compare:  {py} tools/compare_runs.py --experiment {shlex.quote(info.experiment)} "
                     "--out outputs/compare")
    return lines
