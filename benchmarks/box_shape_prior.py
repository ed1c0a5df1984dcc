"""How far a model that reads only the prompt box can go: the best model-free shape inside a box.

The filled prompt box is the box-prompt baseline of every evaluation (``baseline_miou_box``). A model
that has learned prompt geometry perfectly but nothing about appearance can do a little better: the
average object shape in box-normalised coordinates, learned on the training split and thresholded,
drawn into each validation box. This script measures that ceiling on the same masks, in the same
frame (served at ``model.image_size``, ``data.min_area`` applied, padding excluded) as the validation
of the given config, so the two numbers compare with ``miou_box``:

    python benchmarks/box_shape_prior.py configs/coco_tiny.yaml

prints the filled-box mIoU and the shape prior's mIoU at a range of thresholds (the best one is the
ceiling of geometry alone; it is chosen on the validation split itself, so it is an upper bound).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

GRID = 32  # side of the box-normalised shape average
THRESHOLDS = (0.2, 0.3, 0.35, 0.4, 0.45, 0.5)


def box_crops(cfg, split: str, root: Path):
    """Every served mask of ``data.<split>`` as ``(mask [h, w] bool, valid [h, w] bool, box (x0, y0, x1, y1))``."""
    from samft.data import collate_masks
    from samft.engine.build import dataset_from_config
    from samft.prompting import tight_boxes

    dataset = dataset_from_config(cfg, root, cfg.data[split], seed=0, train=False)
    for i in range(len(dataset)):
        batch = collate_masks([dataset[i]])
        masks = batch.masks.bool()
        if not len(masks):
            continue
        boxes, found = tight_boxes(masks)
        for mask, box, ok in zip(masks, boxes.long().tolist(), found):
            if ok:
                yield mask, batch.valid[0], box


def iou(pred: torch.Tensor, mask: torch.Tensor) -> float:
    return float((pred & mask).sum() / (pred | mask).sum().clamp(min=1))


def measure(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a training config whose data.train / data.val to measure")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from samft import config

    cfg = config.load(args.config, args.overrides)
    root = Path.cwd()  # data paths are relative to where the command runs, as for tools/train.py
    total, n = torch.zeros(GRID, GRID), 0
    for mask, _, (x0, y0, x1, y1) in box_crops(cfg, "train", root):
        crop = mask[y0:y1 + 1, x0:x1 + 1].float()[None, None]
        total += F.interpolate(crop, (GRID, GRID), mode="bilinear", align_corners=False)[0, 0]
        n += 1
    prior = (total / max(n, 1))[None, None]
    filled, shaped = [], {t: [] for t in THRESHOLDS}
    for mask, valid, (x0, y0, x1, y1) in box_crops(cfg, "val", root):
        box = torch.zeros_like(mask)
        box[y0:y1 + 1, x0:x1 + 1] = True
        filled.append(iou(box & valid, mask))
        inside = F.interpolate(prior, (y1 - y0 + 1, x1 - x0 + 1), mode="bilinear", align_corners=False)[0, 0]
        for t in THRESHOLDS:
            pred = torch.zeros_like(mask)
            pred[y0:y1 + 1, x0:x1 + 1] = inside > t
            shaped[t].append(iou(pred & valid, mask))
    print(f"data: train {cfg.data.train} ({n} masks), val {cfg.data.val} ({len(filled)} masks); "
          f"served at {cfg.model.image_size} px, min_area {cfg.data.min_area}; 1 thread")
    print(f"filled box (baseline_miou_box): {sum(filled) / len(filled):.3f}")
    for t, values in shaped.items():
        print(f"average shape in the box, threshold {t:.2f}: {sum(values) / len(values):.3f}")
    return 0


if __name__ == "__main__":
    from samft.entry import run_cli

    sys.exit(run_cli(measure, sys.argv[1:]))
