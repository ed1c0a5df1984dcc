"""Loader throughput: decoding only the sampled masks vs decoding every mask of the image.

SA-1B-like data: 1500x1000 JPEGs with 100 masks each; each read samples 16 masks. The
baseline is the same dataset class whose mask step decodes all of the image's masks first
(as readers that call ``pycocotools.mask.decode`` on the whole annotation list do), then keeps
the sampled ones; everything else (image decode, resize, pad, prompts) is shared, and both
produce identical items. Both are timed in the same run, alternating, single process.

usage: python benchmarks/bench_loader.py [--quick] [--images 12] [--data DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from samft.data import SA1BDataset, collate_masks  # noqa: E402
from samft.data.demo import write_dense_folder  # noqa: E402
from samft.data.rle import checked_rle  # noqa: E402
from samft.data.transforms import resize_mask  # noqa: E402


class _DecodedMasks:
    """Masks decoded ahead (all of the image's), resized on demand like the reader's."""

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return self.masks.shape[2]

    def decode(self, hw, window=None):
        return np.stack([resize_mask(self.masks[:, :, k], hw) for k in range(self.masks.shape[2])])


class DecodeAllDataset(SA1BDataset):
    """Baseline: decode every annotation of the image, then keep the sampled ones."""

    def _load(self, index, positions):
        loaded = super()._load(index, positions)
        everything = json.loads(loaded.cache_key)["annotations"]
        height, width = loaded.info["height"], loaded.info["width"]
        rles = [checked_rle(a["segmentation"], height, width) for a in everything]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            all_masks = mask_utils.decode(rles)  # [H, W, N], every mask of the image
        loaded.masks = _DecodedMasks(all_masks[:, :, np.asarray(positions, np.int64)])
        return loaded


def _time_pass(ds, epoch: int) -> float:
    ds.set_epoch(epoch)
    started = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 images, 2 passes")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--max-masks", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2,
                        help="also time a DataLoader with this many workers (0: skip)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "samft_bench_sa1b",
                        help="data folder (created once, reused)")
    args = parser.parse_args(argv)
    images, passes = (4, 2) if args.quick else (args.images, args.passes)
    torch.set_num_threads(1)
    root = args.data / f"n{images}"
    started = time.perf_counter()
    write_dense_folder(root, images, size=(1500, 1000), masks_per_image=100, seed=0)
    print(f"data: {images} images 1500x1000, 100 masks each, in {root} ({time.perf_counter() - started:.1f}s)")
    ours = SA1BDataset(root, image_size=1024, max_masks=args.max_masks)
    base = DecodeAllDataset(root, image_size=1024, max_masks=args.max_masks)
    for i in range(len(ours)):  # same work: identical items
        a, b = ours[i], base[i]
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["points"], b["points"])
    times = {"sampled only (samft)": [], "decode all (baseline)": []}
    for p in range(passes):
        times["sampled only (samft)"].append(_time_pass(ours, p + 1))
        times["decode all (baseline)"].append(_time_pass(base, p + 1))
    rate = {k: len(ours) / statistics.median(v) for k, v in times.items()}
    baseline = rate["decode all (baseline)"]
    print(f"\nimage_size 1024, {args.max_masks} of 100 masks per image, 1 process, median of {passes} passes")
    print(f"{'method':<28}{'images/s':>10}{'ms/image':>10}{'vs baseline':>13}")
    for name, r in rate.items():
        print(f"{name:<28}{r:>10.2f}{1000 / r:>10.1f}{r / baseline:>12.2f}x")
    if args.workers > 0:
        loader = torch.utils.data.DataLoader(ours, batch_size=1, num_workers=args.workers, collate_fn=collate_masks,
                                             persistent_workers=True, prefetch_factor=2)
        list(loader)  # start the workers
        started = time.perf_counter()
        count = sum(b.images.shape[0] for _ in range(passes) for b in loader)
        r = count / (time.perf_counter() - started)
        print(f"{'samft, DataLoader x' + str(args.workers):<28}{r:>10.2f}{1000 / r:>10.1f}{r / baseline:>12.2f}x"
              f"  (items cross the process boundary; {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
