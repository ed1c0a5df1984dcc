#!/usr/bin/env python
"""Plan GPU memory: ``python tools/plan_memory.py configs/sam_ft.yaml [key=value ...] --budget 24GB``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from samft.engine.plan_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
