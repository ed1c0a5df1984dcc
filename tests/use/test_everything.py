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
                          "model.image_size=64", f"data.val={demo_data / 'val'}", "eval.everything.max_images=2",
                          "train.progress=false", "--mode", "everything", "--points-per-side", "4",
                          "--iou-grid", "0.0,0.5", "--stability-grid", "0.0,0.9", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 2 and len(result["sweep"]) == 4
    assert {"ap", "ap50", "ar100", "ar1000", "msa", "pred_iou_thresh", "stability_thresh"} == set(result["sweep"][0])
    assert "Best msa on 2 images" in capsys.readouterr().out
    assert evaluate_main([REPO_CONFIG, "--mode", "everyting"]) == 2
    assert "use --mode prompts (default) or everything" in capsys.readouterr().err


def test_segment_everything_is_validated_during_training_and_can_pick_the_best_checkpoint(demo_data, tmp_path):
    """eval.everything.every=2: the automatic-mask metrics at the sweep's best pair are logged with the
    other validation metrics, and best.pt can follow one of them."""
    from samft.config import load
    from samft.engine.trainer import Trainer

    cfg = load(REPO_CONFIG, [
        f"data.train={demo_data / 'train'}", f"data.val={demo_data / 'val'}", "data.num_workers=0",
        "data.max_masks=3", "model.image_size=64", "prompts.correction_clicks=1", "prompts.extra_rounds=1",
        "train.progress=false", "tracking.enabled=false", f"train.output_dir={tmp_path}", "train.steps=4",
        "train.val_every=100", "eval.everything.every=2", "eval.everything.max_images=2",
        "eval.everything.points_per_side=4", "eval.everything.iou_grid=[0.0,0.5]",
        "eval.everything.stability_grid=[0.0,0.9]", "eval.best_metric=val/everything_ar100",
    ])
    result = Trainer(cfg).fit()
    keys = {"val/everything_ap", "val/everything_ap50", "val/everything_ar100", "val/everything_ar1000",
            "val/everything_msa", "val/everything_pred_iou_thresh", "val/everything_stability_thresh"}
    assert keys <= set(result.val_metrics)
    assert result.val_metrics["val/everything_pred_iou_thresh"] in (0.0, 0.5)
    assert 0.0 <= result.val_metrics["val/everything_msa"] <= 1.0
    assert (result.run_dir / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("override", ["eval.everything.best_metric=map", "eval.everything.every=-1",
                                      "eval.everything.iou_grid=[0.5,1.5]", "eval.everything.points_per_side=0"])
def test_bad_everything_settings_are_refused_at_load(override):
    from samft.config import ConfigError, load

    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load(REPO_CONFIG, [override])
