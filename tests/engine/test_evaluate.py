"""Evaluation: deterministic prompts, SAM's output choice, metric wiring, and the evaluate tool."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import samft.engine.evaluate as evaluation
from samft.data import SA1BDataset, collate_masks
from samft.engine.evaluate import evaluate
from samft.engine.runtime import make_runtime
from samft.engine.step import Prediction
from samft.models import build_model
from samft.prompting import center_points

REPO = Path(__file__).resolve().parents[2]


def test_center_point_is_farthest_from_the_boundary():
    masks = torch.zeros(2, 9, 12, dtype=torch.bool)
    masks[0, 2:7, 3:8] = True  # 5x5 square: centre (x=5, y=4)
    masks[1, :, :3] = True  # a band touching the image border counts the border as boundary
    points = center_points(masks)
    assert points[0].tolist() == [[5.0, 4.0]]
    assert points[1, 0, 0].item() == 1.0 and 1.0 <= points[1, 0, 1].item() <= 7.0


def oracle_rounds(model, embeddings, batch, rounds, *, multimask, resolution, generator=None):
    """Output 2 is the ground truth (area-downsampled); the others are empty. Output 2 also has the
    highest predicted IoU, so SAM's choice (argmax predicted IoU) must pick it."""
    masks = batch.masks.float()
    size = batch.images.shape[-1] // 4
    low = F.interpolate(masks[:, None], size=(size, size), mode="area")[:, 0]
    logits = torch.full((masks.shape[0], 4, size, size), -20.0)
    logits[:, 2] = torch.where(low >= 0.5, 20.0, -20.0)
    iou_pred = torch.tensor([0.1, 0.2, 0.9, 0.3]).expand(masks.shape[0], 4)
    candidates = torch.ones(masks.shape[0], 4, dtype=torch.bool)
    return [Prediction(logits, iou_pred, candidates, logits)] * rounds.total


def test_evaluate_scores_sams_choice_of_output(demo_data, monkeypatch):
    monkeypatch.setattr(evaluation, "run_rounds", oracle_rounds)
    model = build_model("vit_tiny", 128)
    dataset = SA1BDataset(demo_data / "val", image_size=128, max_masks=4, prompt="point")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_masks)
    result = evaluate(model, loader, make_runtime("cpu"), max_images=4, max_masks=4, clicks=2, keep_examples=3)
    m = result.metrics
    assert m["num_masks"] > 4
    # the oracle is exact at 1/4 resolution; upsampling it back costs some boundary pixels, while
    # choosing any other output would score 0
    assert m["miou_point"] > 0.6 and m["miou_box"] == m["miou_point"] and m["miou_click2"] == m["miou_point"]
    assert m["stability_point"] == 1.0 and m["stable_share_point"] == 1.0  # logits +-20: perfectly stable
    assert abs(m["iou_calibration_point"] - abs(0.9 - m["miou_point"])) < 0.1
    assert 0.5 < m["boundary_iou_point"] <= 1.0
    assert len(result.examples) == 3 and result.examples[0]["gt"].shape == (128, 128)


def test_evaluate_tool_reports_every_metric(demo_data, tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    torch.save(build_model("vit_tiny", 64).state_dict(), checkpoint)
    out = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), str(REPO / "configs" / "demo.yaml"),
                           f"model.checkpoint={checkpoint}", "model.image_size=64", f"data.val={demo_data / 'val'}",
                           "eval.clicks=1", "eval.max_images=2", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(out.read_text())
    assert {"miou_point", "miou_box", "miou_click1", "boundary_iou_point", "iou_calibration_point",
            "stability_point", "num_masks", "baseline_miou_point", "baseline_miou_box"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k not in ("num_masks", "baseline_point_radius"))
    assert metrics["baseline_point_radius"] >= 1
    assert "miou_point" in proc.stdout


def test_evaluate_tool_needs_validation_data(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), str(REPO / "configs" / "demo.yaml"),
                           "data.val=null"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "data.val" in proc.stderr and "Traceback" not in proc.stderr


def test_baselines_match_hand_computed_box_and_disk():
    """The filled box and the median-radius disk, scored against numpy references."""
    import math

    import numpy as np

    from samft.engine.evaluate import DiskBaseline, filled_boxes
    from samft.prompting import tight_boxes

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 20, 24), bool)
    masks[0, 2:9, 3:15] = True  # a rectangle: its box fills it exactly
    yy, xx = np.mgrid[:20, :24]
    masks[1] = (xx - 12) ** 2 + 2 * (yy - 10) ** 2 <= 30  # an ellipse
    masks[2] = rng.random((20, 24)) < 0.05  # scattered pixels
    masks[2, 19, 23] = True
    valid = np.ones((3, 20, 24), bool)
    valid[:, :, 22:] = False  # padding on the right
    points = torch.tensor([[[8.0, 5.0]], [[12.0, 10.0]], [[23.0, 19.0]]])
    t_masks, t_valid = torch.from_numpy(masks), torch.from_numpy(valid)

    boxes, _ = tight_boxes(t_masks)
    filled = filled_boxes(boxes, 24)[:, :20]  # filled on a 24x24 grid, cropped to the 20 rows
    for k in range(3):
        ys, xs = np.nonzero(masks[k])
        expect = np.zeros((20, 24), bool)
        expect[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        assert np.array_equal(filled[k].numpy(), expect)

    disk = DiskBaseline()
    disk.add(t_masks[:2], points[:2], t_valid[:2])  # two batches: the radius is chosen over both
    disk.add(t_masks[2:], points[2:], t_valid[2:])
    result = disk.result()
    shown = masks & valid
    radius = max(1, round(math.sqrt(np.median(shown.sum((1, 2))) / math.pi)))
    ious = []
    for k in range(3):
        x, y = points[k, 0].tolist()
        d = ((xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2) & valid[k]
        ious.append((d & shown[k]).sum() / (d | shown[k]).sum())
    assert result["baseline_point_radius"] == radius
    assert abs(result["baseline_miou_point"] - float(np.mean(ious))) < 1e-6


def test_the_evaluation_dataset_reads_eval_max_masks_and_samples_no_prompt(demo_data, monkeypatch):
    """Evaluation prompts every mask itself: its dataset draws no prompt (none to throw away) and reads
    eval.max_masks masks per image, not data.max_masks."""
    import samft.data.base as base
    from samft.config import load
    from samft.engine.build import dataset_from_config

    cfg = load(REPO / "configs" / "demo.yaml", ["data.max_masks=6", "eval.max_masks=2", "model.image_size=64"])
    monkeypatch.setattr(base, "sample_prompts", lambda *a, **k: (_ for _ in ()).throw(AssertionError("sampled")))
    val = dataset_from_config(cfg, demo_data, "val", seed=0, train=False)
    batch = collate_masks([val[i] for i in range(len(val))])
    assert all(n <= 2 for n in torch.bincount(batch.image_index).tolist()) and batch.num_masks > len(val)
    assert (batch.point_labels == -1).all() and batch.points.shape[1] == 1
    train = dataset_from_config(cfg, demo_data, "train", seed=0)
    with pytest.raises(AssertionError, match="sampled"):
        train[0]
