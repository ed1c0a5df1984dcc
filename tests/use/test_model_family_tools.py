"""MobileSAM (vit_t) and HQ-SAM runs through the tools: tools/evaluate.py, tools/predict.py --everything
(samft's AutomaticMaskGenerator against segment_anything's own SamAutomaticMaskGenerator on the same
weights) and tools/export.py to each model's release layout."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator

from samft.cli import evaluate_main
from samft.config import load
from samft.engine.trainer import Trainer
from samft.export import load_model
from samft.export.cli import export_main
from samft.predict_cli import main as predict_main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"vit_t": ("mobile_sam_ft.yaml", ()), "hq_vit_tiny": ("sam_hq_ft.yaml", ("model.name=hq_vit_tiny",))}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family_run(request, demo_data, tmp_path_factory):
    """(model name, run folder, config overrides) of a 2-step run at 64 px with one validation."""
    name = request.param
    config, extra = CONFIGS[name]
    root = tmp_path_factory.mktemp(name)
    overrides = [f"data.train={demo_data / 'train'}", f"data.val={demo_data / 'val'}", "data.num_workers=0",
                 "data.max_masks=3", "data.batch_size=1", "model.image_size=64", "prompts.correction_clicks=0",
                 "prompts.extra_rounds=0", "train.steps=2", "train.val_every=2", "train.checkpoint_every=2",
                 "train.progress=false", "tracking.enabled=false", "train.threads=1", "eval.max_images=2",
                 "eval.max_masks=2", "eval.clicks=0", *extra]
    result = Trainer(load(REPO / "configs" / config, [*overrides, f"train.output_dir={root / 'out'}"])).fit()
    return name, config, overrides, result


def test_evaluate_gives_the_validation_the_run_logged(family_run, tmp_path, monkeypatch):
    name, config, overrides, result = family_run
    monkeypatch.chdir(REPO)
    out = tmp_path / "eval.json"
    assert evaluate_main([f"configs/{config}", *overrides, f"model.checkpoint={result.run_dir}/checkpoints/last.pt",
                          "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    logged = result.val_metrics
    assert {"miou_point", "miou_box", "num_masks"} <= set(evaluated)
    for key in evaluated:  # the same weights and images: the same numbers as the run's own validation
        assert evaluated[key] == pytest.approx(logged[f"val/{key}"], abs=1e-6), key


def test_segment_everything_gives_segment_anythings_generator_masks(family_run, tmp_path, test_image):
    name, _, _, result = family_run
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(test_image).save(images / "a.png")
    out = tmp_path / "out"
    assert predict_main([str(result.run_dir), str(images), "--out", str(out), "--everything",
                         "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0"]) == 0
    model = load_model(result.run_dir)
    assert type(model.image_encoder).__name__ == ("TinyViT" if name == "vit_t" else "HQImageEncoderViT")
    expected = SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                         output_mode="coco_rle").generate(test_image)
    got = json.loads((out / "a.json").read_text())["annotations"]
    assert len(got) == len(expected) > 0
    assert [a["segmentation"] for a in got] == [e["segmentation"] for e in expected]
    assert [a["predicted_iou"] for a in got] == pytest.approx([e["predicted_iou"] for e in expected], abs=1e-6)


def test_export_of_a_trained_run_to_the_release_layout(family_run, tmp_path):
    name, _, _, result = family_run
    out = tmp_path / ("mobile_sam.pt" if name == "vit_t" else "sam_hq.pth")
    assert export_main([str(result.run_dir), "--format", "sam", "--out", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    trained = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in exported)
    rebuilt = load_model(out)  # reads it back as the release layout (the sidecar says the size)
    image = torch.randint(0, 255, (1, 3, 64, 64)).float()
    with torch.no_grad():
        ref = load_model(result.run_dir).image_encoder((image - rebuilt.pixel_mean) / rebuilt.pixel_std)
        assert torch.equal(rebuilt.image_encoder((image - rebuilt.pixel_mean) / rebuilt.pixel_std), ref)
    assert np.isfinite(ref.numpy()).all()
