"""Precompute signed distance maps of every mask of an SA-1B folder into a cache.

usage: python tools/precompute_distance_maps.py DATASET --cache CACHE_DIR [--clip 0.05] [--workers N]

Maps are keyed by each json's content hash and the settings, so re-running only computes what
changed. Train with data.with_dist_maps=true and the dataset's dist_map_cache pointing at CACHE_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samft.cli import run_cli  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="precompute_distance_maps.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="folder of <id>.jpg + <id>.json pairs")
    parser.add_argument("--cache", type=Path, required=True, help="cache folder (created)")
    parser.add_argument("--clip", type=float, default=0.05,
                        help="clip outside distances at this share of the image's longest side (default 0.05); "
                             "0 for exact, unclipped maps (slow: whole-image transforms)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from samft.data.distance_maps import precompute_distance_maps

    started = time.perf_counter()
    counts = precompute_distance_maps(args.dataset, args.cache, clip=args.clip or None, workers=args.workers,
                                      progress=not args.no_progress)
    print(f"{args.dataset}: {counts['computed']} computed, {counts['reused']} reused, {counts['failed']} failed "
          f"in {time.perf_counter() - started:.1f}s -> {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
