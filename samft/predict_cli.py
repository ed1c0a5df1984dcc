"""Arguments of ``tools/predict.py``, apart from :mod:`samft.predict` so that ``--help`` answers
before torch and segment_anything are imported."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samft.entry import run_cli

DESCRIPTION = "Masks from a fine-tuned SAM for a folder of images: given prompts, or automatic (\"everything\")."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/predict.py", description=DESCRIPTION)
    p.add_argument("checkpoint", help="run folder, checkpoints/best.pt or last.pt, an exported or Meta's .pth")
    p.add_argument("images", type=Path, help="folder of images")
    p.add_argument("--out", type=Path, required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompts", type=Path, help="JSON: image file name -> list of point/box prompts")
    mode.add_argument("--everything", action="store_true", help="automatic masks (SAM's generator recipe)")
    p.add_argument("--overlays", action="store_true", help="also write OUT/<image>.png with the masks drawn")
    p.add_argument("--batch-size", type=int, default=64, help="prompts (or AMG points) decoded at once")
    p.add_argument("--device", default="auto")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-thresh", type=float, default=0.95)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--tile", type=int, default=None,
                   help="images whose longest side is larger are predicted in tiles of this side (pixels), "
                        "e.g. 1024; default: whole images")
    p.add_argument("--tile-overlap", type=float, default=0.25, help="share of the tile side neighbouring tiles share")
    return p



def main(argv: list[str] | None = None) -> int:
    """``tools/predict.py``: parse, then predict; a user error is one line and exit code 2."""
    return run_cli(_run, sys.argv[1:] if argv is None else argv)


def _run(argv: list[str]) -> int:
    args = parser().parse_args(argv)  # --help and usage errors end here, before torch loads
    from samft.predict import predict

    return predict(args)
