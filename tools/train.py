#!/usr/bin/env python
"""Fine-tune SAM: ``python tools/train.py configs/sam_ft.yaml [key=value ...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from samft.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
