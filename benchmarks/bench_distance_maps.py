"""Distance-map precompute vs the straightforward per-mask full-frame scipy EDT, same masks, same run.

Data: real COCO photos with their instance masks (``coco_tiny``'s train split beside the repository,
``../shared/data/coco_tiny``, converted to SA-1B form), the first images until ``--masks`` masks;
images of 213-640 px, masks from a few pixels to most of the frame. Without coco_tiny it falls back
to the synthetic SA-1B-like 1500x1000 images with 100 masks each (printed).

Both sides serve maps for the input frame of ``--image-size`` (640: COCO's own size, no resize for
most images). Baseline: decode each mask, resize it to the input frame and compute Kervadec's map
on the whole frame (``samft.signed_distance.signed_distance_map``, scipy). samft:
``precompute_distance_maps`` (read, hash, decode + resize, bounding-box exact EDT clipped at 5% of
the input side, float16 crops written to the cache). Values: every cached map is compared with the
baseline's map clipped at the same distance (equal but for float16 storage, reported).
Everything runs on one thread (OMP/MKL/OpenBLAS and OpenCV pinned), printed with the results.

usage: python benchmarks/bench_distance_maps.py [--quick] [--masks 200] [--image-size 640]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before numpy/scipy load
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from samft.data.coco import convert_coco  # noqa: E402
from samft.data.demo import write_dense_folder  # noqa: E402
from samft.data.distance_maps import DistanceMapCache, paste_crop, precompute_distance_maps  # noqa: E402
from samft.data.rle import checked_rle, decode_resized  # noqa: E402
from samft.data.transforms import resized_shape  # noqa: E402
from samft.signed_distance import signed_distance_map  # noqa: E402

COCO_TINY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco_tiny"


def real_masks(root: Path, masks: int) -> tuple[list[Path], str]:
    """Convert coco_tiny's train split image by image until ``masks`` masks; returns the jsons kept."""
    convert_coco(COCO_TINY / "annotations" / "instances_train2017.json", COCO_TINY / "train2017", root, link=True)
    kept, count = [], 0
    for path in sorted(root.glob("*.json")):
        if count >= masks:
            path.unlink()
            (root / f"{path.stem}.jpg").unlink()
            continue
        kept.append(path)
        count += len(json.loads(path.read_text())["annotations"])
    return kept, f"real COCO (coco_tiny train2017, first {len(kept)} images)"


def served_masks(json_path: Path, image_size: int):
    """Every mask of one json decoded and resized to the input frame (as the dataset serves it)."""
    data = json.loads(json_path.read_bytes())
    h, w = data["image"]["height"], data["image"]["width"]
    hw = resized_shape(h, w, image_size)
    for ann in data["annotations"]:
        yield decode_resized([checked_rle(ann["segmentation"], h, w)], hw)[0]


def baseline(paths: list[Path], image_size: int) -> tuple[float, int]:
    started, count = time.perf_counter(), 0
    for path in paths:
        for mask in served_masks(path, image_size):
            signed_distance_map(mask)
            count += 1
    return time.perf_counter() - started, count


def timed_precompute(root: Path, cache: Path, image_size: int, clip: float) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    counts = precompute_distance_maps(root, cache, image_size=image_size, clip=clip, workers=1, progress=False)
    elapsed = time.perf_counter() - started
    assert counts["failed"] == 0 and counts["reused"] == 0, counts
    return elapsed


def check_values(paths: list[Path], cache: Path, image_size: int, clip: float) -> tuple[int, float]:
    """(masks compared, max |cached - full-frame clipped| in px) over every pixel of every mask."""
    store = DistanceMapCache(cache, image_size, clip)
    compared, worst = 0, 0.0
    for path in paths:
        with np.load(store.path(path.read_bytes())) as stored:
            for k, mask in enumerate(served_masks(path, image_size)):
                full = np.minimum(signed_distance_map(mask), np.float32(store.clip_px))
                y0, x0, kind = stored["boxes"][k]
                crop = (stored[f"m{k}"].astype(np.float32), (y0, x0)) if kind == 0 else None
                ours = paste_crop(mask.shape, crop, store.clip_px)
                worst = max(worst, float(np.abs(ours - full).max()))
                compared += 1
    return compared, worst


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 masks")
    parser.add_argument("--masks", type=int, default=200, help="at least this many masks (whole images)")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--clip", type=float, default=0.05)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    masks = 50 if args.quick else args.masks
    work = Path(tempfile.mkdtemp(prefix="samft_bench_dist_"))
    try:
        if COCO_TINY.is_dir():
            paths, source = real_masks(work / "data", masks)
        else:
            paths = write_dense_folder(work / "data", max(1, masks // 100), size=(1500, 1000), masks_per_image=100,
                                       seed=0)
            source = f"synthetic 1500x1000 (no {COCO_TINY.resolve()})"
        base_s, count = baseline(paths, args.image_size)
        ours_s = timed_precompute(work / "data", work / "cache", args.image_size, args.clip)
        compared, worst = check_values(paths, work / "cache", args.image_size, args.clip)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{source}: {count} masks, input size {args.image_size}, clip {args.clip} x side = "
          f"{args.clip * args.image_size:.0f} px; threads: 1 (OMP/MKL/OpenBLAS=1, cv2.setNumThreads(1))")
    print(f"{'method':<48}{'s':>8}{'masks/s':>10}{'vs baseline':>13}")
    rows = (("full-frame scipy EDT per mask (baseline)", base_s), ("samft precompute, 1 process", ours_s))
    for name, seconds in rows:
        print(f"{name:<48}{seconds:>8.2f}{count / seconds:>10.1f}{base_s / seconds:>12.1f}x")
    print(f"values: {compared} masks compared with min(full_frame, clip): max difference {worst:.4f} px "
          f"(float16 storage)")
    return 0 if worst <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
