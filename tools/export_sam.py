#!/usr/bin/env python
"""Export a samft checkpoint as a SAM state dict: ``python tools/export_sam.py outputs/RUN/checkpoints/best.pt OUT.pth``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from samft.cli import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
