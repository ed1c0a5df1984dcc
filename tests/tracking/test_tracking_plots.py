"""Figures and comparison logic, without any MLflow store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samft.tracking import plots
from samft.tracking.compare import (
    Comparison,
    MetricSummary,
    RunSummary,
    differing_params,
    format_table,
    summarize,
    table_rows,
)


def test_images_hwc_layouts_and_ranges() -> None:
    chw = np.zeros((1, 3, 2, 4), np.uint8)
    chw[0, 0] = 255
    out = plots.images_hwc(chw)
    assert out.shape == (1, 2, 4, 3) and out[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    normalised = torch.tensor([[[[-2.0, 2.0]]]]).expand(1, 3, 1, 2).to(torch.bfloat16)
    assert plots.images_hwc(normalised)[0, 0, :, 0].tolist() == [0.0, 1.0]  # min-max scaled
    unit = np.full((1, 2, 2, 3), 0.25, np.float32)
    assert np.all(plots.images_hwc(unit) == 0.25)  # already in [0, 1]: kept
    gray = plots.images_hwc(np.zeros((2, 5, 5)))
    assert gray.shape == (2, 5, 5, 3)
    with pytest.raises(ValueError, match=r"images must have shape"):
        plots.images_hwc(np.zeros((1, 5, 5, 7)))


def test_binary_masks_threshold_resize_and_shape_errors() -> None:
    logits = np.array([[[-1.0, 0.5], [0.0, 3.0]]])  # (1, 2, 2); 0.0 is not foreground
    out = plots.binary_masks(logits, "pred_masks", 1, (4, 4))
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
    expected[2:, :2] = False
    assert out.shape == (1, 1, 4, 4) and np.array_equal(out[0, 0], expected)
    several = plots.binary_masks(torch.ones(2, 3, 4, 4, dtype=torch.bool), "gt", 2, (4, 4))
    assert several.shape == (2, 3, 4, 4) and several.all()
    with pytest.raises(ValueError, match=r"gt_masks must have shape \(2, H, W\)"):
        plots.binary_masks(np.zeros((3, 4, 4)), "gt_masks", 2, (4, 4))


def test_overlay_with_several_masks_and_sam_prompts(tmp_path) -> None:
    image = torch.rand(1, 3, 64, 48)
    gt = torch.zeros(1, 3, 64, 48, dtype=torch.bool)
    gt[0, 0, :20, :20] = gt[0, 1, 30:, 30:] = gt[0, 2, 20:40, 5:15] = True
    points = torch.tensor([[[[10.0, 10.0]], [[40.0, 50.0]], [[10.0, 30.0]]]])  # (1, K, 1, 2)
    labels = torch.ones(1, 3, 1, dtype=torch.int64)
    box_points = torch.tensor([[[5.0, 20.0], [15.0, 40.0]]]).expand(1, 3, 2, 2)
    box_labels = torch.tensor([[2, 3]]).expand(1, 3, 2)
    for pts, lbl in ((points, labels), (box_points, box_labels), (points[:, :, 0], None)):
        fig = plots.overlay_figure(image, gt, gt.float() * 8 - 4, pts, lbl, title="t")
        titles = [ax.get_title() for ax in fig.axes]
        assert "prediction (mIoU 1.000, 3 masks)" in titles
    path = plots.save_figure(fig, tmp_path / "o.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="3 masks per image and gt_masks 1"):
        plots.overlay_figure(image, gt[:, :1], gt, None, None)
    with pytest.raises(ValueError, match="one label per point"):
        plots.overlay_figure(image, gt, gt, points, torch.ones(1, 2))


def test_metric_file_name() -> None:
    assert plots.metric_file_name("loss/dice") == "loss__dice.png"
    assert plots.metric_file_name("val/iou@0.5 x") == "val__iou_0.5_x.png"


def test_summarize_final_is_at_the_last_step_and_best_skips_nan() -> None:
    s = summarize([20, 0, 10], [0.5, 0.9, math.nan], "min")
    assert (s.final, s.best, s.best_step) == (0.5, 0.5, 20)
    s = summarize([0, 10, 20], [0.2, 0.7, 0.6], "max")
    assert (s.final, s.best, s.best_step) == (0.6, 0.7, 10)
    assert summarize([], [], "min") == MetricSummary(None, None, None)
    s = summarize([0], [math.nan], "min")
    assert math.isnan(s.final) and s.best is None
    assert summarize([0, 1], [2.0, 1.0], "none") == MetricSummary(1.0, None, None)


def test_differing_params_counts_missing_keys() -> None:
    runs = [{"a": "1", "b": "x", "c": "same"}, {"a": "2", "b": "x", "c": "same"},
            {"a": "1", "c": "same"}]
    assert differing_params(runs) == ["a", "b"]
    assert differing_params([{"a": "1"}]) == []
    assert differing_params([]) == []


def test_table_marks_the_best_run_per_metric() -> None:
    def run(name: str, loss: float, iou: float) -> RunSummary:
        return RunSummary(name * 8, name, "FINISHED", {"lr": name},
                          {"loss": MetricSummary(loss, loss, 5), "val/iou": MetricSummary(iou, iou, 5)},
                          {})
    cmp = Comparison("e", "", "u", [run("a", 0.2, 0.5), run("b", 0.1, 0.7), run("c", 0.3, 0.7)],
                     ["lr"], ["loss", "val/iou"], {"loss": "min", "val/iou": "max"})
    header, rows = table_rows(cmp)
    assert header == ["", "a (aaaaaaaa)", "b (bbbbbbbb)", "c (cccccccc)"]
    by_name = {r[0]: r[1:] for r in rows}
    assert by_name["params.lr"] == ["a", "b", "c"]
    assert by_name["loss best (min)"] == ["0.2 @5", "0.1 @5 *", "0.3 @5"]
    assert by_name["val/iou best (max)"] == ["0.5 @5", "0.7 @5 *", "0.7 @5 *"]  # a tie: both
    assert format_table(cmp).splitlines()[1].startswith("---")
    cmp.directions["loss"] = "none"
    assert [r[0] for r in table_rows(cmp)[1] if r[0].startswith("loss")] == ["loss final"]
