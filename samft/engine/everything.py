"""Evaluate "segment everything": automatic masks against all ground-truth masks, class-agnostic.

Metrics, per (predicted IoU, stability) threshold pair:

- ``ap``, ``ap50``, ``ar100``, ``ar1000``: COCO-style mask AP (up to 1000 masks per image) and average
  recall with 100 and 1000 masks per image (the SAM paper's proposal evaluation), by pycocotools with
  one category; a mask's score is its predicted IoU.
- ``msa``: micro-sam's mean segmentation accuracy: for IoU thresholds 0.5, 0.55, ..., 0.95, masks are
  matched one-to-one (at most one prediction per ground truth), SA = TP / (TP + FP + FN); the mean
  over thresholds, then over images.

The sweep runs the model once per image (:meth:`samft.amg.AutomaticMaskGenerator.candidates`) and
selects each pair's masks from those candidates.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment

from samft.config import EVERYTHING_METRICS as METRIC_NAMES
from samft.data import DataError
from samft.engine.everything_cli import config_overrides, parser

MSA_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


def matched_count(iou: np.ndarray, threshold: float) -> int:
    """Most one-to-one pairs with IoU >= ``threshold`` (``iou`` is ``[predictions, ground truths]``).

    As StarDist / micro-sam: an assignment that first maximises the number of pairs above the threshold,
    then (for ties) their IoU; predictions may overlap, so a greedy match could pair fewer.
    """
    if iou.size == 0:
        return 0
    hit = iou >= threshold
    cost = -hit.astype(np.float64) - iou / (2 * min(iou.shape))
    rows, cols = linear_sum_assignment(cost)
    return int(hit[rows, cols].sum())


def mean_segmentation_accuracy(iou: np.ndarray, num_pred: int, num_gt: int) -> float:
    """micro-sam's mSA of one image: mean over 0.5:0.05:0.95 of TP / (TP + FP + FN); 1.0 if both are empty."""
    if num_pred == 0 and num_gt == 0:
        return 1.0
    iou = np.asarray(iou, dtype=np.float64).reshape(num_pred, num_gt)
    accuracies = []
    for t in MSA_THRESHOLDS:
        tp = matched_count(iou, t)
        accuracies.append(tp / (num_pred + num_gt - tp))  # TP + FP + FN = P + G - TP
    return float(np.mean(accuracies))


def coco_metrics(images: list[dict[str, Any]], gts: list[list[dict]], dets: list[list[dict]]) -> dict[str, float]:
    """Class-agnostic COCO mask AP/AR of ``dets`` against ``gts`` (lists per image, COCO RLEs).

    Args:
        images: ``{"id", "height", "width"}`` per image.
        gts: per image, ground-truth RLEs.
        dets: per image, ``{"segmentation": rle, "score": float}``.

    Returns:
        ``ap`` (IoU 0.5:0.95, up to 1000 masks), ``ap50``, ``ar100``, ``ar1000``.
    """
    gt_anns = [{"image_id": img["id"], "category_id": 1, "segmentation": rle, "area": float(mask_utils.area(rle)),
                "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0}
               for img, rles in zip(images, gts) for rle in rles]
    for k, ann in enumerate(gt_anns):
        ann["id"] = k + 1  # COCO ids start at 1 (0 means "unmatched" inside COCOeval)
    det_anns = [{"image_id": img["id"], "category_id": 1, "segmentation": d["segmentation"], "score": d["score"]}
                for img, ds in zip(images, dets) for d in ds]
    if not gt_anns or not det_anns:
        return {"ap": 0.0, "ap50": 0.0, "ar100": 0.0, "ar1000": 0.0}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # pycocotools prints progress
        warnings.simplefilter("ignore")
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gt_anns, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(det_anns), "segm")
        evaluator.params.useCats = 0
        evaluator.params.maxDets = [10, 100, 1000]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, 0, 0, 2]  # [T, R] at area "all", 1000 masks
    recall = evaluator.eval["recall"][:, 0, 0, :]  # [T, maxDets] at area "all"
    return {"ap": _mean_valid(precision), "ap50": _mean_valid(precision[0]),
            "ar100": _mean_valid(recall[:, 1]), "ar1000": _mean_valid(recall[:, 2])}


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]  # pycocotools marks "no ground truth" with -1
    return float(valid.mean()) if valid.size else 0.0


def read_ground_truth(json_path: Path) -> tuple[Path, dict[str, Any], list[dict]]:
    """Image path, ``{"height", "width"}`` and every mask's COCO RLE of one SA-1B annotation file."""
    try:
        record = json.loads(json_path.read_text())
        info = record["image"]
        rles = [ann["segmentation"] for ann in record["annotations"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{json_path} is not an SA-1B annotation file ({type(exc).__name__}: {exc}).") from None
    image_path = json_path.with_name(info.get("file_name") or json_path.stem + ".jpg")
    return image_path, {"height": int(info["height"]), "width": int(info["width"])}, rles


@dataclass
class EverythingResult:
    sweep: dict[tuple[float, float], dict[str, float]]   # (predicted IoU, stability) -> metrics
    best_pair: tuple[float, float]
    best_metric: str
    num_images: int

    def rows(self) -> list[dict[str, float]]:
        return [{"pred_iou_thresh": i, "stability_thresh": s, **m} for (i, s), m in self.sweep.items()]


def sa1b_folder(dataset: Any) -> Path:
    """The folder of an SA-1B folder dataset: "segment everything" reads its annotation files.

    Raises:
        DataError: another reader (or a list of datasets).
    """
    root = getattr(dataset, "root", None)
    if root is None:
        raise DataError(f"'segment everything' evaluation reads an SA-1B folder (reader sa1b), not "
                        f"{getattr(dataset, 'description', dataset)}: set data.val=FOLDER (convert COCO with "
                        "tools/coco_to_sa1b.py).")
    return Path(root)


def annotation_files(folder: Path, max_images: int) -> list[Path]:
    """The first ``max_images`` SA-1B annotation files of ``folder``, sorted (hidden files are samft's own)."""
    json_paths = sorted(p for p in Path(folder).glob("*.json") if not p.name.startswith("."))[:max_images]
    if not json_paths:
        raise DataError(f"{folder} holds no SA-1B annotation files (*.json).")
    return json_paths


def generator_from_config(model, everything) -> Any:
    """SAM's automatic mask generator on ``model`` with the ``eval.everything`` settings."""
    from samft.amg import AutomaticMaskGenerator

    return AutomaticMaskGenerator(model, points_per_side=everything.points_per_side,
                                  points_per_batch=everything.points_per_batch,
                                  crop_n_layers=everything.crop_n_layers)


@dataclass
class ImageScore:
    """One image's part of the sweep: what :func:`summarise` needs (plain data, so ranks can gather it)."""

    size: dict[str, int]                                   # {"height", "width"}
    gt: list[dict]                                          # ground-truth RLEs
    dets: dict[tuple[float, float], list[dict]]             # pair -> [{"segmentation", "score"}]
    msa: dict[tuple[float, float], float]                   # pair -> mSA of this image


def score_images(generator, json_paths: list[Path], pairs: list[tuple[float, float]], *,
                 progress: bool = True) -> list[ImageScore]:
    """Every pair's masks and mSA for each image; the model runs once per image."""
    from tqdm import tqdm

    from samft.predict import read_image

    scores = []
    for json_path in tqdm(json_paths, unit="image", disable=None if progress else True):
        image_path, size, gt = read_ground_truth(json_path)
        dets, msa = {}, {}
        for pair, records in generator.sweep(read_image(image_path), pairs).items():
            pred = [r["segmentation"] for r in records]
            dets[pair] = [{"segmentation": r["segmentation"], "score": r["predicted_iou"]} for r in records]
            iou = mask_utils.iou(pred, gt, [0] * len(gt)) if pred and gt else np.zeros((len(pred), len(gt)))
            msa[pair] = mean_segmentation_accuracy(iou, len(pred), len(gt))
        scores.append(ImageScore(size, gt, dets, msa))
    return scores


def summarise(scores: list[ImageScore], pairs: list[tuple[float, float]],
              best_metric: str = "msa") -> EverythingResult:
    """COCO AP/AR over all images and the mean mSA, per pair; the best pair by ``best_metric``."""
    if best_metric not in METRIC_NAMES:
        raise DataError(f"best metric {best_metric!r} is not one of {', '.join(METRIC_NAMES)}.")
    images = [{"id": k + 1, **score.size} for k, score in enumerate(scores)]
    gts = [score.gt for score in scores]
    sweep = {p: {**coco_metrics(images, gts, [score.dets[p] for score in scores]),
                 "msa": float(np.mean([score.msa[p] for score in scores])) if scores else 0.0} for p in pairs}
    best = max(pairs, key=lambda p: sweep[p][best_metric])
    return EverythingResult(sweep, best, best_metric, len(scores))


def evaluate_everything(generator, json_paths: list[Path], pairs: list[tuple[float, float]], *,
                        best_metric: str = "msa", progress: bool = True) -> EverythingResult:
    """Score the generator's automatic masks at every threshold pair; the model runs once per image.

    Args:
        generator: a :class:`samft.amg.AutomaticMaskGenerator`.
        json_paths: SA-1B annotation files (images beside them).
        pairs: (predicted IoU, stability) thresholds.
        best_metric: one of ``ap``, ``ap50``, ``ar100``, ``ar1000``, ``msa``; picks ``best_pair``.
    """
    return summarise(score_images(generator, json_paths, pairs, progress=progress), pairs, best_metric)


def logged_metrics(result: EverythingResult) -> dict[str, float]:
    """The best pair's metrics and thresholds as logged during training (``everything_<metric>``)."""
    iou, stability = result.best_pair
    return {**{f"everything_{k}": v for k, v in result.sweep[result.best_pair].items()},
            "everything_pred_iou_thresh": iou, "everything_stability_thresh": stability}




def everything_main(argv: list[str]) -> int:
    """``tools/evaluate.py CONFIG [key=value ...] --mode everything [--iou-grid ...] [--json FILE]``."""
    from samft.config import ConfigError, load
    from samft.engine.build import model_from_config
    from samft.engine.runtime import select_device

    args = parser().parse_intermixed_args(argv)
    cfg = load(args.config, [*args.overrides, *config_overrides(args)])
    if not cfg.data.val:
        raise ConfigError("Evaluation reads data.val: set data.val=PATH to an SA-1B folder.")
    everything = cfg.eval.everything
    if not isinstance(cfg.data.val, str):
        raise ConfigError(f"data.val={cfg.data.val}: 'segment everything' evaluation reads an SA-1B folder; set "
                          "data.val=FOLDER (convert COCO with tools/coco_to_sa1b.py).")
    json_paths = annotation_files(Path.cwd() / cfg.data.val, everything.max_images)
    model = model_from_config(cfg, Path.cwd()).to(select_device(cfg.train.device)).eval()
    pairs = list(itertools.product(everything.iou_grid, everything.stability_grid))
    result = evaluate_everything(generator_from_config(model, everything), json_paths, pairs,
                                 best_metric=everything.best_metric, progress=cfg.train.progress)
    _print(result)
    if args.json is not None:
        args.json.write_text(json.dumps({"num_images": result.num_images, "best_metric": result.best_metric,
                                         "best_pair": list(result.best_pair), "sweep": result.rows()}, indent=2))
    return 0


def _print(result: EverythingResult) -> None:
    print(f"{'pred_iou':>8} {'stab':>6} " + " ".join(f"{m:>7}" for m in METRIC_NAMES))
    for (i, s), metrics in result.sweep.items():
        mark = "  <- best" if (i, s) == result.best_pair else ""
        print(f"{i:>8.3g} {s:>6.3g} " + " ".join(f"{metrics[m]:>7.4f}" for m in METRIC_NAMES) + mark)
    i, s = result.best_pair
    print(f"Best {result.best_metric} on {result.num_images} images: pred_iou_thresh={i} stability_score_thresh={s}")
