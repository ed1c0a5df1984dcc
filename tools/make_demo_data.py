"""Write the synthetic SA-1B-style demo dataset (OUT/train + OUT/val), or split a folder into train/val.

usage: python tools/make_demo_data.py OUT [--images 24] [--val-fraction 0.25] [--size 320x240] [--seed 0]
       python tools/make_demo_data.py OUT --split-from SA1B_FOLDER [--val-fraction 0.25] [--seed 0] [--copy]

Re-running with the same settings leaves the files alone; other settings rewrite them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samft.entry import run_cli  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 320x240, got {text!r}") from None
    return width, height


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make_demo_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (gets train/ and val/)")
    parser.add_argument("--images", type=int, default=24, help="total number of demo images (default 24)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of images in val/ (default 0.25)")
    parser.add_argument("--size", type=_size, default=(320, 240), help="WIDTHxHEIGHT (default 320x240)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-from", type=Path, help="split this SA-1B folder instead of writing demo images")
    parser.add_argument("--copy", action="store_true", help="with --split-from: copy instead of hard-linking")
    args = parser.parse_args(argv)
    from samft.data.errors import DataError  # after parsing: --help must not wait for torch

    if not 0.0 <= args.val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {args.val_fraction}.")
    if args.split_from is not None:
        from samft.data.demo import split_dataset

        n_train, n_val = split_dataset(args.split_from, args.out, val_fraction=args.val_fraction, seed=args.seed,
                                       copy=args.copy)
        print(f"split {args.split_from}: {n_train} train, {n_val} val pairs in {args.out}")
        return 0
    from samft.data.demo import make_demo_dataset

    n_val = int(round(args.images * args.val_fraction))
    if args.images >= 2 and args.val_fraction > 0:
        n_val = min(max(n_val, 1), args.images - 1)
    make_demo_dataset(args.out, train_images=args.images - n_val, val_images=n_val, size=args.size, seed=args.seed)
    print(f"demo data in {args.out}: {args.images - n_val} train + {n_val} val images of "
          f"{args.size[0]}x{args.size[1]} (data.train={args.out / 'train'}, data.val={args.out / 'val'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
