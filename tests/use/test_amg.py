"""samft's automatic mask generator gives SamAutomaticMaskGenerator's masks, and sweeps with one model pass."""

import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from samft.amg import SAM_DEFAULTS, AutomaticMaskGenerator
from samft.export import load_model
from samft.registry import METRICS


@pytest.fixture(scope="module")
def model(trained_run, looks_fine_tuned):
    # A 2-step model predicts low IoUs; perturbing spreads predicted IoU and stability over a wide range.
    return looks_fine_tuned(load_model(trained_run), scale=0.5).eval()


def thresholds_inside_the_candidates(model, image, **kwargs):
    """Thresholds at the candidates' medians, so that both filters drop some masks and keep some."""
    cands = AutomaticMaskGenerator(model, **kwargs).candidates(image, 0.0, 0.0)
    assert len(cands.data["rles"]) > 10
    iou_t = float(cands.data["iou_preds"].median())
    stab = cands.data["stability_score"]
    return iou_t, float(stab[stab > 0].median())


@pytest.mark.parametrize("kwargs", [dict(points_per_side=8), dict(points_per_side=4, crop_n_layers=1)])
def test_same_masks_as_sam_automatic_mask_generator(model, test_image, kwargs):
    iou_t, stab_t = thresholds_inside_the_candidates(model, test_image, **kwargs)
    settings = dict(kwargs, pred_iou_thresh=iou_t, stability_score_thresh=stab_t)
    theirs = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **settings).generate(test_image)
    ours = AutomaticMaskGenerator(model, **settings).generate(test_image)
    assert 0 < len(ours) and ours == theirs


def test_sweep_runs_the_model_once_and_gives_each_pairs_masks(model, test_image):
    iou_t, stab_t = thresholds_inside_the_candidates(model, test_image, points_per_side=8)
    pairs = [(0.0, 0.0), (iou_t, 0.0), (iou_t, stab_t), (iou_t + 0.05, stab_t)]
    # NMS at 0.99 keeps near-duplicates, so each threshold's effect shows in the counts.
    generator = AutomaticMaskGenerator(model, points_per_side=8, box_nms_thresh=0.99)
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        swept = generator.sweep(test_image, pairs)
    finally:
        handle.remove()
    assert len(calls) == 1
    counts = []
    for iou, stab in pairs:
        expected = SamAutomaticMaskGenerator(model, points_per_side=8, pred_iou_thresh=iou, stability_score_thresh=stab,
                                             box_nms_thresh=0.99, output_mode="coco_rle").generate(test_image)
        assert swept[(iou, stab)] == expected
        counts.append(len(expected))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1], counts


def test_stability_filter_uses_the_registered_metric(model, test_image, monkeypatch):
    """A stability_score registered in METRICS (a plugin's, say) is what the generator filters and reports."""
    calls = []

    def constant_stability(logits, mask_threshold=0.0, offset=1.0):
        calls.append((mask_threshold, offset))
        return torch.full((len(logits),), 0.75)

    monkeypatch.setitem(METRICS._entries, "stability_score", constant_stability)
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_offset=0.5)
    kept = AutomaticMaskGenerator(model, stability_score_thresh=0.7, **settings).generate(test_image)
    assert kept and {r["stability_score"] for r in kept} == {0.75}
    assert AutomaticMaskGenerator(model, stability_score_thresh=0.8, **settings).generate(test_image) == []
    assert set(calls) == {(model.mask_threshold, 0.5)}


def test_select_refuses_thresholds_looser_than_the_candidates(model, test_image):
    generator = AutomaticMaskGenerator(model, points_per_side=4)
    cands = generator.candidates(test_image, 0.5, 0.5)
    with pytest.raises(ValueError, match="looser than the candidates"):
        generator.select(cands, 0.4, 0.9)


def test_defaults_are_sams_recipe(model):
    generator = AutomaticMaskGenerator(model)
    upstream = SamAutomaticMaskGenerator(model)
    for key, value in SAM_DEFAULTS.items():
        if key == "points_per_side":
            assert len(generator.point_grids[0]) == value ** 2
        else:
            assert getattr(generator, key) == getattr(upstream, key) == value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_masks_on_gpu(model, test_image):
    gpu = model.cuda()
    settings = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    theirs = SamAutomaticMaskGenerator(gpu, output_mode="coco_rle", **settings).generate(test_image)
    assert AutomaticMaskGenerator(gpu, **settings).generate(test_image) == theirs
    model.cpu()
