#!/usr/bin/env python
"""Masks from a fine-tuned SAM.

``python tools/predict.py CHECKPOINT IMAGES_DIR --out OUT [--prompts P.json | --everything]``
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from samft.predict_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
