"""Precompute signed distance maps of every mask of an SA-1B folder into a cache.

usage: python tools/precompute_distance_maps.py DATASET [--image-size 1024] [--clip 0.05] [--cache DIR] [--workers N]
                                                 [--input-frame longest_side|square]

Maps are computed on the masks as training serves them (resized so the longest side is
--image-size = model.image_size, or stretched to that square with --input-frame square for SAM 2.1
models; outside distances clipped at --clip x that side = data.dist_clip),
so they are exact. They are keyed by each json's content hash and the settings, so re-running only
computes what changed. Without --cache they go to DATASET/.samft_dist_maps (a per-folder user cache
when DATASET is read-only), where training finds them with data.with_dist_maps=true and no
data.dist_map_cache; with --cache DIR, train with data.dist_map_cache=DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samft.entry import run_cli  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="precompute_distance_maps.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="folder of <id>.jpg + <id>.json pairs")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache folder (default: DATASET/.samft_dist_maps, where training looks when "
                             "data.dist_map_cache is not set)")
    parser.add_argument("--image-size", type=int, default=1024,
                        help="input side the maps are for: the config's model.image_size (default 1024)")
    parser.add_argument("--clip", type=float, default=0.05,
                        help="clip outside distances at this share of the input side: the config's data.dist_clip "
                             "(default 0.05); 0 for exact, unclipped maps (slow: whole-image transforms)")
    parser.add_argument("--input-frame", choices=("longest_side", "square"), default="longest_side",
                        help="the model's input frame: square for SAM 2.1 (sam2_1_*), else longest_side (default)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from samft.data import DataError
    from samft.data.distance_maps import default_cache_dir, precompute_distance_maps

    if args.image_size < 16:
        raise DataError(f"--image-size must be >= 16, got {args.image_size}.")
    if args.clip < 0:
        raise DataError(f"--clip must be >= 0 (0: no clip), got {args.clip}.")
    started = time.perf_counter()
    counts = precompute_distance_maps(args.dataset, args.cache, image_size=args.image_size, clip=args.clip or None,
                                      workers=args.workers, progress=not args.no_progress,
                                      input_frame=args.input_frame)
    cache = args.cache or default_cache_dir(args.dataset)
    print(f"{args.dataset}: {counts['computed']} computed, {counts['reused']} reused, {counts['failed']} failed "
          f"in {time.perf_counter() - started:.1f}s -> {cache} (image size {args.image_size}, clip {args.clip}, "
          f"{args.input_frame})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
