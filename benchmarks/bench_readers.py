"""Reader throughput on the same data: SA-1B tar shards vs the extracted folder, COCO json vs the converted
folder, label images; and the time to index a tar.

Each pair reads the same images with the same settings (image_size 1024, 16 sampled masks, point or box
prompts) through a DataLoader with ``--workers`` workers (batch 1, persistent workers), passes
alternating between the two readers; the ratio is against the folder reader measured in the same run.

- ``sa1b_tar`` vs ``sa1b``: SA-1B-like images (``write_dense_folder``: 1500x1000 JPEGs, 100 masks each),
  the folder and one tar holding the same files.
- ``coco`` vs ``sa1b``: coco_tiny's 80 train photos read from the instances json, and converted with
  ``tools/coco_to_sa1b.py``'s converter.
- ``label_images``: the same 80 photos with their non-crowd instances rendered into 16-bit PNG label
  images (the ``sa1b`` folder of the converted photos is the baseline).
- Index build: :func:`samft.data.sa1b_tar.index_tar` on the tar with its cached index removed.

usage: python benchmarks/bench_readers.py [--quick] [--images 24] [--workers 2] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from samft.data import collate_masks  # noqa: E402
from samft.data.coco import coco_segmentation_to_rle, convert_coco  # noqa: E402
from samft.data.demo import write_dense_folder  # noqa: E402
from samft.data.sa1b_tar import index_tar, tar_index_path  # noqa: E402
from samft.registry import DATASETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"


def loader_rate(dataset, workers: int, passes: int) -> list[float]:
    """Images/s of each pass through a DataLoader over ``dataset`` (workers started before timing)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_masks,
                                         persistent_workers=workers > 0, shuffle=False)
    list(loader)  # warm: workers started, indexes and page cache filled
    rates = []
    for p in range(passes):
        dataset.set_epoch(p + 1)
        started = time.perf_counter()
        count = sum(b.num_images for b in loader)
        rates.append(count / (time.perf_counter() - started))
    return rates


def compare(title: str, pair: dict[str, object], workers: int, passes: int) -> dict[str, float]:
    """Median images/s of each dataset of ``pair`` (the first is the baseline), passes interleaved."""
    rates: dict[str, list[float]] = {k: [] for k in pair}
    for _ in range(passes):
        for name, ds in pair.items():
            rates[name] += loader_rate(ds, workers, 1)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    base = next(iter(medians.values()))
    print(f"\n{title}")
    print(f"{'reader':<34}{'images/s':>10}{'vs baseline':>13}")
    for name, r in medians.items():
        print(f"{name:<34}{r:>10.2f}{r / base:>12.2f}x")
    return medians


def make_tar(folder: Path, tar: Path) -> Path:
    if not tar.exists():
        with tarfile.open(tar, "w") as tf:
            for p in sorted(folder.iterdir()):
                if not p.name.startswith("."):
                    tf.add(p, arcname=p.name)
    return tar


def render_labels(ann_file: Path, images: Path, out: Path) -> tuple[Path, Path]:
    """coco_tiny photos (symlinked) + 16-bit PNG instance label images of their non-crowd instances."""
    img_dir, lbl_dir = out / "images", out / "labels"
    if lbl_dir.is_dir():
        return img_dir, lbl_dir
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    coco = json.loads(ann_file.read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for info in coco["images"]:
        anns = [a for a in by_image.get(info["id"], []) if not a["iscrowd"]]
        if not anns:
            continue
        h, w = info["height"], info["width"]
        labels = np.zeros((h, w), np.uint16)
        for k, a in enumerate(anns, start=1):
            labels[mask_utils.decode(coco_segmentation_to_rle(a["segmentation"], h, w)) > 0] = k
        (img_dir / info["file_name"]).symlink_to(images / info["file_name"])
        Image.fromarray(labels).save(lbl_dir / (Path(info["file_name"]).stem + ".png"))
    return img_dir, lbl_dir


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 SA-1B-like images, 1 pass, 20 coco photos")
    parser.add_argument("--images", type=int, default=24, help="SA-1B-like images in the tar")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "samft_bench_readers")
    parser.add_argument("--coco", type=Path, default=COCO_TINY, help="the coco_tiny folder (../shared/data/coco_tiny)")
    args = parser.parse_args(argv)
    images, passes = (8, 1) if args.quick else (args.images, args.passes)
    torch.set_num_threads(1)
    logging.getLogger("samft.data").setLevel(logging.ERROR)  # coco_tiny has one photo whose only mask covers >90%
    print(f"threads: torch {torch.get_num_threads()} per process, DataLoader workers {args.workers}; "
          f"image_size 1024, 16 masks per image")
    common = dict(image_size=1024, max_masks=16, prompt="point_or_box", seed=0)

    folder = args.data / f"dense{images}"
    write_dense_folder(folder, images, size=(1500, 1000), masks_per_image=100, seed=0)
    tar = make_tar(folder, args.data / f"dense{images}.tar")
    tar_index_path(tar).unlink(missing_ok=True)
    started = time.perf_counter()
    index_tar(tar)
    build = time.perf_counter() - started
    size_mb = tar.stat().st_size / 2**20
    print(f"\nindex build: {build:.2f} s for a tar of {images} images ({size_mb:.0f} MiB), "
          f"{1000 * build / images:.1f} ms per image on this data (once per tar; reused while the tar is unchanged)")
    started = time.perf_counter()
    index_tar(tar)
    print(f"index reuse: {1000 * (time.perf_counter() - started):.1f} ms")
    compare(f"SA-1B-like, {images} images 1500x1000 with 100 masks, {passes} passes", {
        "sa1b (extracted folder)": DATASETS.build({"name": "sa1b", "root": folder}, **common),
        "sa1b_tar (one tar, same files)": DATASETS.build({"name": "sa1b_tar", "tars": tar}, **common),
    }, args.workers, passes)

    if not args.coco.is_dir():
        print(f"\n{args.coco} absent: coco and label_images not measured (pass --coco DIR)")
        return 0
    ann_file, photos = args.coco / "annotations" / "instances_train2017.json", args.coco / "train2017"
    converted = args.data / "coco_tiny_train"
    if not converted.is_dir():
        convert_coco(ann_file, photos, converted)
    img_dir, lbl_dir = render_labels(ann_file, photos, args.data / "coco_tiny_labels")
    limit = 20 if args.quick else None
    pair = {
        "sa1b (converted folder)": DATASETS.build({"name": "sa1b", "root": converted}, **common),
        "coco (instances json)": DATASETS.build({"name": "coco", "annotations": ann_file, "images": photos},
                                                **common),
        "label_images (16-bit PNG labels)": DATASETS.build({"name": "label_images", "images": img_dir,
                                                            "labels": lbl_dir}, **common),
    }
    if limit:
        pair = {k: torch.utils.data.Subset(v, range(limit)) for k, v in pair.items()}
        for v in pair.values():
            v.set_epoch = v.dataset.set_epoch
    compare(f"coco_tiny train ({'20' if limit else '80'} photos, 213-640 px), {passes} passes", pair, args.workers,
            passes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
