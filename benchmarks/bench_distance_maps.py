"""Distance-map precompute vs the straightforward per-mask full-frame scipy EDT, same masks, same run.

SA-1B-like data: 1500x1000 images with 100 masks each. Baseline: decode each mask and compute
Kervadec's map on the whole frame (``samft.losses.boundary.signed_distance_map``). samft:
``precompute_distance_maps`` (read, hash, decode, bounding-box EDT clipped at 5% of the long
side, float16 crops written to the cache), single process and then with worker processes.
Values: samft's float32 maps equal ``min(full_frame, clip)`` exactly (every pixel of every mask
is compared); the stored float16 adds a rounding error that is reported separately.

usage: python benchmarks/bench_distance_maps.py [--quick] [--images 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from samft.data.demo import write_dense_folder  # noqa: E402
from samft.data.distance_maps import (  # noqa: E402
    CLIP_SLACK, DistanceMapCache, paste_crop, precompute_distance_maps, signed_distance_crop,
)
from samft.data.rle import checked_rle  # noqa: E402
from samft.losses.boundary import signed_distance_map  # noqa: E402


def _masks(json_path: Path):
    data = json.loads(json_path.read_bytes())
    h, w = data["image"]["height"], data["image"]["width"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for ann in data["annotations"]:
            yield mask_utils.decode([checked_rle(ann["segmentation"], h, w)])[:, :, 0]


def baseline(paths: list[Path]) -> tuple[float, int]:
    started, count = time.perf_counter(), 0
    for path in paths:
        for mask in _masks(path):
            signed_distance_map(mask)
            count += 1
    return time.perf_counter() - started, count


def timed_precompute(root: Path, cache: Path, clip: float, workers: int) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    counts = precompute_distance_maps(root, cache, clip=clip, workers=workers, progress=False)
    elapsed = time.perf_counter() - started
    assert counts["failed"] == 0 and counts["reused"] == 0, counts
    return elapsed


def check_values(paths: list[Path], cache: Path, clip: float) -> tuple[int, int, float]:
    """(pixels compared, pixels that differ, max float16 storage error) over every mask."""
    compared = differ = 0
    storage = 0.0
    store = DistanceMapCache(cache, clip)
    for path in paths:
        raw = path.read_bytes()
        with np.load(store.path(raw)) as stored:
            boxes = stored["boxes"]
            for k, mask in enumerate(_masks(path)):
                clip_px = clip * max(mask.shape) + CLIP_SLACK
                full = np.minimum(signed_distance_map(mask), np.float32(clip_px))
                ours = paste_crop(mask.shape, signed_distance_crop(mask, clip_px), clip_px)
                compared += full.size
                differ += int((full != ours).sum())
                if boxes[k, 2] == 0:
                    crop = stored[f"m{k}"].astype(np.float32)
                    y0, x0 = boxes[k, :2]
                    window = ours[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
                    storage = max(storage, float(np.abs(crop - window).max()))
    return compared, differ, storage


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 images")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--clip", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "samft_bench_sa1b")
    args = parser.parse_args(argv)
    images = 2 if args.quick else args.images
    root = args.data / f"n{images}"
    paths = write_dense_folder(root, images, size=(1500, 1000), masks_per_image=100, seed=0)
    cache = Path(tempfile.mkdtemp(prefix="samft_dist_cache_"))
    try:
        base_s, count = baseline(paths)
        ours_s = timed_precompute(root, cache, args.clip, workers=1)
        par_s = timed_precompute(root, cache, args.clip, workers=args.workers) if args.workers > 1 else None
        compared, differ, storage = check_values(paths, cache, args.clip)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"{images} images 1500x1000, {count} masks; clip {args.clip} x long side = "
          f"{args.clip * 1500 + CLIP_SLACK:.0f} px")
    print(f"{'method':<40}{'s':>8}{'masks/s':>10}{'vs baseline':>13}")
    rows = [("full-frame scipy EDT per mask (baseline)", base_s), ("samft precompute, 1 process", ours_s)]
    if par_s is not None:
        rows.append((f"samft precompute, {args.workers} processes", par_s))
    for name, seconds in rows:
        print(f"{name:<40}{seconds:>8.2f}{count / seconds:>10.1f}{base_s / seconds:>12.1f}x")
    print(f"values: {compared} pixels compared with min(full_frame, clip): {differ} differ; "
          f"float16 storage max error {storage:.4f} px  ({os.cpu_count()} cores)")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
