#!/usr/bin/env python
"""Export a fine-tuned SAM: ``python tools/export.py RUN_OR_CHECKPOINT --format sam|onnx --out PATH``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from samft.export.cli import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
