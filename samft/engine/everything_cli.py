"""Arguments of ``tools/evaluate.py CONFIG --mode everything``, apart from :mod:`samft.engine.everything`
so that ``--mode everything -h`` answers before torch, pycocotools and scipy are imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from samft.config import EVERYTHING_METRICS


def _grid(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/evaluate.py CONFIG --mode everything", description=(
        "Automatic-mask ('segment everything') evaluation of model.checkpoint on data.val: COCO AP/AR@100/"
        "AR@1000 and mSA over a predicted-IoU x stability threshold grid (the model runs once per image)."))
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (model.checkpoint=..., data.val=...)")
    p.add_argument("--json", type=Path, help="write the sweep and the best pair here")
    # Each flag overrides its eval.everything.* config key (the config's values are the defaults).
    p.add_argument("--iou-grid", type=_grid, help="predicted-IoU thresholds, e.g. 0.8,0.88 (eval.everything.iou_grid)")
    p.add_argument("--stability-grid", type=_grid, help="stability thresholds (eval.everything.stability_grid)")
    p.add_argument("--best-metric", choices=EVERYTHING_METRICS, help="eval.everything.best_metric")
    p.add_argument("--points-per-side", type=int, help="eval.everything.points_per_side (SAM: 32)")
    p.add_argument("--points-per-batch", type=int, help="eval.everything.points_per_batch")
    p.add_argument("--crop-n-layers", type=int, help="eval.everything.crop_n_layers")
    return p


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The ``eval.everything.<key>=value`` overrides of the flags given (each flag is named after its key)."""
    keys = ("iou_grid", "stability_grid", "best_metric", "points_per_side", "points_per_batch", "crop_n_layers")
    return [f"eval.everything.{key}={list(value) if isinstance(value, tuple) else value}"
            for key in keys if (value := getattr(args, key)) is not None]
