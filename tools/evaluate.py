#!/usr/bin/env python
"""Evaluate a checkpoint: ``python tools/evaluate.py configs/sam_ft.yaml model.checkpoint=PATH [key=value ...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from samft.cli import evaluate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(evaluate_main())
