"""Automatic mask generation: samft's generator vs SamAutomaticMaskGenerator, and the threshold sweep's cost.

Same model, same images, both with SAM's defaults (32 x 32 points, 64 per batch, predicted IoU > 0.88,
stability >= 0.95, NMS 0.7); the masks are checked to be identical on every image. The baseline is
timed in the same run, alternating per image. The sweep (predicted IoU x stability, 5 x 5 grid of
samft.engine.everything) runs the model once per image and selects each pair's masks; its cost is
reported relative to one samft AMG pass and to one upstream pass.

Models: the demo model (vit_tiny; a run folder with --checkpoint, else random weights perturbed as a
fine-tuned model), and with --vit-b ViT-B at 1024 px (random weights perturbed; --quick: 1 image).

usage: python benchmarks/bench_amg.py [--quick] [--checkpoint outputs/RUN] [--images 8] [--vit-b] [--threads 1]
       [--thresholds 0.88,0.95] [--iou-grid 0.7,...] [--stability-grid 0.8,...]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

from samft.amg import AutomaticMaskGenerator  # noqa: E402
from samft.config import EverythingConfig  # noqa: E402
from samft.export import load_model  # noqa: E402
from samft.models import build_model  # noqa: E402
from samft.predict import read_image  # noqa: E402


def perturbed(name: str, size: int) -> torch.nn.Module:
    model = build_model(name, size).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0))
    return model


def images_of(folder: Path | None, count: int) -> list[np.ndarray]:
    if folder is None or not folder.is_dir():
        from samft.data.demo import make_demo_dataset

        folder = Path(tempfile.mkdtemp()) / "demo"
        make_demo_dataset(folder, train_images=1, val_images=count, size=(320, 240), seed=0)
        folder = folder / "val"
    return [read_image(p) for p in sorted(folder.glob("*.jpg"))[:count]]


def same_records(mine: list[dict], theirs: list[dict]) -> bool:
    """Equal records, but for the stability of a mask with no pixel above t - offset: upstream's 0/0 is
    NaN, the registered metric's 0.0 (neither passes a stability filter > 0)."""
    def canonical(records):
        return [{**r, "stability_score": 0.0 if math.isnan(r["stability_score"]) else r["stability_score"]}
                for r in records]
    return canonical(mine) == canonical(theirs)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(label: str, model: torch.nn.Module, images: list[np.ndarray], thresholds: tuple[float, float],
          pairs: list[tuple[float, float]]) -> None:
    settings = {"pred_iou_thresh": thresholds[0], "stability_score_thresh": thresholds[1]}
    upstream = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **settings)
    ours = AutomaticMaskGenerator(model, **settings)
    loosest = AutomaticMaskGenerator(model, pred_iou_thresh=min(p[0] for p in pairs),
                                     stability_score_thresh=min(p[1] for p in pairs))
    t_up, t_ours, t_sweep, t_loose, masks = [], [], [], [], []
    for image in images:
        dt, theirs = timed(lambda image=image: upstream.generate(image))
        t_up.append(dt)
        dt, mine = timed(lambda image=image: ours.generate(image))
        t_ours.append(dt)
        if not same_records(mine, theirs):
            raise SystemExit(f"{label}: samft's masks differ from SamAutomaticMaskGenerator's")
        dt, swept = timed(lambda image=image: ours.sweep(image, pairs))
        t_sweep.append(dt)
        if thresholds in swept and not same_records(swept[thresholds], theirs):
            raise SystemExit(f"{label}: the sweep's (0.88, 0.95) masks differ from the generator's")
        t_loose.append(timed(lambda image=image: loosest.generate(image))[0])
        masks.append(len(theirs))
    up, mine, sweep, loose = (sum(t) / len(t) for t in (t_up, t_ours, t_sweep, t_loose))
    h, w = images[0].shape[:2]
    print(f"\n{label}: {len(images)} images {w}x{h}, {statistics.mean(masks):.1f} masks/image (identical) at "
          f"pred_iou_thresh={thresholds[0]} stability_score_thresh={thresholds[1]}; sweep grid {len(pairs)} pairs")
    print("| method | images/s | s/image | vs upstream |\n|---|---:|---:|---:|")
    print(f"| SamAutomaticMaskGenerator (baseline) | {1 / up:.3f} | {up:.3f} | 1.00x |")
    print(f"| samft AutomaticMaskGenerator | {1 / mine:.3f} | {mine:.3f} | {up / mine:.2f}x |")
    print(f"| samft sweep, {len(pairs)} pairs (one model pass) | {1 / sweep:.3f} | {sweep:.3f} | {up / sweep:.2f}x |")
    print(f"| samft AutomaticMaskGenerator at the grid's loosest pair | {1 / loose:.3f} | {loose:.3f} | "
          f"{up / loose:.2f}x |")
    print(f"sweep cost: {sweep / up:.2f}x one upstream AMG pass, {sweep / loose:.2f}x one samft pass at the loosest "
          f"pair, {sweep / mine:.2f}x one samft pass at the chosen pair")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--checkpoint", help="demo run folder or checkpoint (default: random vit_tiny at 128 px)")
    p.add_argument("--data", type=Path, default=Path("data/demo/val"))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--vit-b", action="store_true", help="also ViT-B at 1024 px (slow on CPUs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--thresholds", type=_floats, default=(0.88, 0.95), help="IOU,STABILITY (SAM's: 0.88,0.95)")
    p.add_argument("--iou-grid", type=_floats, default=tuple(EverythingConfig().iou_grid))
    p.add_argument("--stability-grid", type=_floats, default=tuple(EverythingConfig().stability_grid))
    args = p.parse_args()
    pairs = list(itertools.product(args.iou_grid, args.stability_grid))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    count = 2 if args.quick else args.images
    images = images_of(args.data, count)
    demo = load_model(args.checkpoint) if args.checkpoint else perturbed("vit_tiny", 128)
    label = f"demo model ({args.checkpoint or 'vit_tiny 128 px, random perturbed'})"
    bench(label, demo, images, args.thresholds, pairs)
    if args.vit_b:
        bench("ViT-B at 1024 px (random perturbed)", perturbed("vit_b", 1024), images[:1 if args.quick else 2],
              args.thresholds, pairs)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


if __name__ == "__main__":
    main()
