"""'Segment everything' evaluation: mSA and COCO AP/AR against hand-computed cases and pycocotools."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from samft.cli import evaluate_main
from samft.engine.everything import coco_metrics, matched_count, mean_segmentation_accuracy

REPO_CONFIG = "configs/demo.yaml"


def rle(box, hw=(40, 50)):
    mask = np.zeros(hw, np.uint8, order="F")
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    out = mask_utils.encode(mask)
    out["counts"] = out["counts"].decode()
    return out


def test_msa_by_hand():
    # 3 predictions, 2 ground truths: pair IoUs 0.9 and 0.6, one prediction matches nothing.
    iou = np.array([[0.9, 0.0], [0.0, 0.6], [0.1, 0.1]])
    # t = 0.5, 0.55, 0.6: TP 2 -> 2 / (3 + 2 - 2); t = 0.65 ... 0.9 (6 thresholds): 1 / 4; t = 0.95: 0.
    assert mean_segmentation_accuracy(iou, 3, 2) == pytest.approx((3 * 2 / 3 + 6 * 1 / 4 + 0) / 10)
    assert mean_segmentation_accuracy(np.zeros((0, 0)), 0, 0) == 1.0
    assert mean_segmentation_accuracy(np.zeros((2, 0)), 2, 0) == 0.0


def test_matching_is_one_to_one_and_optimal_not_greedy():
    # Greedy by IoU pairs p0-g0 (0.7) and leaves p1 unmatched; the optimal matching pairs both.
    iou = np.array([[0.7, 0.6], [0.65, 0.0]])
    assert matched_count(iou, 0.5) == 2
    assert matched_count(iou, 0.62) == 1
    assert matched_count(np.array([[0.9, 0.8]]), 0.5) == 1  # one prediction, at most one ground truth


def test_coco_metrics_by_hand_and_against_pycocotools_summarize():
    images = [{"id": 1, "height": 40, "width": 50}, {"id": 2, "height": 40, "width": 50}]
    gts = [[rle((0, 0, 10, 10)), rle((20, 20, 40, 35))], [rle((5, 5, 30, 30))]]
    perfect = [[{"segmentation": r, "score": 0.9} for r in g] for g in gts]
    assert coco_metrics(images, gts, perfect) == {"ap": 1.0, "ap50": 1.0, "ar100": 1.0, "ar1000": 1.0}
    half = [[{"segmentation": gts[0][0], "score": 0.9}], [{"segmentation": gts[1][0], "score": 0.8}]]
    assert coco_metrics(images, gts, half)["ar1000"] == pytest.approx(2 / 3)

    rng = np.random.default_rng(0)
    dets = [[{"segmentation": rle((int(x), int(y), int(x) + int(w), int(y) + int(h))), "score": float(s)}
             for x, y, w, h, s in zip(rng.integers(0, 25, 30), rng.integers(0, 20, 30), rng.integers(3, 25, 30),
                                      rng.integers(3, 20, 30), rng.random(30))] for _ in images]
    ours = coco_metrics(images, gts, dets)
    gt = COCO()
    gt.dataset = {"images": images, "categories": [{"id": 1}], "annotations": [
        {"id": k + 1, "image_id": img, "category_id": 1, "segmentation": r, "area": float(mask_utils.area(r)),
         "bbox": list(mask_utils.toBbox(r)), "iscrowd": 0}
        for k, (img, r) in enumerate([(1, gts[0][0]), (1, gts[0][1]), (2, gts[1][0])])]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes([{"image_id": i + 1, "category_id": 1, **d} for i, ds in enumerate(dets)
                                      for d in ds]), "segm")
        ev.params.useCats, ev.params.maxDets = 0, [10, 100, 1000]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert 0 < ours["ap"] < 1
    assert ours["ap"] == pytest.approx(ev.stats[0]) and ours["ap50"] == pytest.approx(ev.stats[1])
    assert ours["ar100"] == pytest.approx(ev.stats[7]) and ours["ar1000"] == pytest.approx(ev.stats[8])


def test_evaluate_mode_everything_end_to_end(trained_run, demo_data, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    out = tmp_path / "everything.json"
    code = evaluate_main([REPO_CONFIG, f"model.checkpoint={trained_run / 'checkpoints' / 'best.pt'}",
                          "model.image_size=64", f"data.val={demo_data / 'val'}", "eval.max_images=2",
                          "train.progress=false", "--mode", "everything", "--points-per-side", "4",
                          "--iou-grid", "0.0,0.5", "--stability-grid", "0.0,0.9", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 2 and len(result["sweep"]) == 4
    assert {"ap", "ap50", "ar100", "ar1000", "msa", "pred_iou_thresh", "stability_thresh"} == set(result["sweep"][0])
    assert "Best msa on 2 images" in capsys.readouterr().out
    assert evaluate_main([REPO_CONFIG, "--mode", "everyting"]) == 2
    assert "use --mode prompts (default) or everything" in capsys.readouterr().err
