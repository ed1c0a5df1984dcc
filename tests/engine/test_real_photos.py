"""Training on real photos: a short version of the README's two-stage real-data preset.

Stage 1 (``configs/coco_tiny_shapes.yaml``) learns prompt geometry on synthetic shapes, stage 2
(``configs/coco_tiny.yaml``) fine-tunes on real COCO photos from stage 1's weights. Sizes shrink so
that it runs in CPU-test time: 128 px, stage 1 with one round per step, stage 2 on 4 real photos,
validated on the same 4 (what the small model learns in this time; that the full preset generalises
to unseen val photos, and how far it stays from the trivial baselines, is the README's 30-minute run).
The result beats both the untrained model and stage 1 alone: the real photos taught it something.
"""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from samft.config import load
from samft.data import collate_masks
from samft.data.demo import make_demo_dataset
from samft.engine.evaluate import evaluate
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
COCO_TINY = REPO / ".." / "shared" / "data" / "coco_tiny"
PHOTOS = 4
MARGIN = 0.05  # mIoU
SHORT = ["model.image_size=128", "train.progress=false", "tracking.enabled=false", "eval.clicks=0"]


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory) -> Path:
    from samft.data.coco import convert_coco

    if not COCO_TINY.is_dir():
        pytest.skip(f"{COCO_TINY.resolve()} is absent (it ships with CI, not with a user's clone)")
    out = tmp_path_factory.mktemp("coco4") / "sa1b"
    convert_coco(COCO_TINY / "annotations" / "instances_train2017.json", COCO_TINY / "train2017", out, link=True,
                 max_images=PHOTOS)
    return out


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers below were measured single-threaded
    yield
    torch.set_num_threads(threads)


def _metrics(trainer: Trainer) -> dict[str, float]:
    loader = DataLoader(trainer.val_set, batch_size=2, collate_fn=collate_masks)
    return evaluate(trainer.model, loader, trainer.runtime, max_images=PHOTOS, max_masks=16).metrics


@pytest.mark.slow
@pytest.mark.long
def test_two_stages_on_real_photos_beat_the_untrained_model_and_stage_1(four_photos, tmp_path, one_thread):
    shapes = make_demo_dataset(tmp_path / "demo", train_images=24, val_images=2)
    stage1 = load(REPO / "configs" / "coco_tiny_shapes.yaml", [
        *SHORT, f"data.train={shapes}/train", f"data.val={shapes}/val", "train.steps=300", "train.val_every=300",
        "train.checkpoint_every=300", "prompts.correction_clicks=0", "prompts.extra_rounds=0", "eval.max_images=2",
        f"train.output_dir={tmp_path}"])
    geometry = Trainer(stage1, project_root=tmp_path).fit().checkpoint

    def stage2(*extra: str) -> Trainer:
        cfg = load(REPO / "configs" / "coco_tiny.yaml", [
            *SHORT, f"data.train={four_photos}", f"data.val={four_photos}", f"model.checkpoint={geometry}",
            "train.steps=150", "train.val_every=150", "train.checkpoint_every=150", f"eval.max_images={PHOTOS}",
            f"train.output_dir={tmp_path}", *extra])
        return Trainer(cfg, project_root=tmp_path)

    untrained = _metrics(stage2("model.checkpoint=null", "train.run_name=untrained"))
    trainer = stage2("train.run_name=real")
    shapes_only = _metrics(trainer)
    trained = trainer.fit().val_metrics
    report = (untrained, shapes_only, trained)
    # measured (1 thread): point / box mIoU untrained 0.01 / 0.05, stage 1 alone 0.04 / 0.00, after stage 2 0.17 / 0.19
    for prompt in ("point", "box"):
        assert trained[f"val/miou_{prompt}"] > untrained[f"miou_{prompt}"] + MARGIN, report
        assert trained[f"val/miou_{prompt}"] > shapes_only[f"miou_{prompt}"] + MARGIN, report
    assert trained["val/baseline_miou_box"] == pytest.approx(untrained["baseline_miou_box"])  # same prompts


def test_mobile_sam_preset_fine_tunes_the_decoder_on_cached_photo_embeddings(tmp_path, one_thread):
    """``configs/coco_tiny_mobile_sam.yaml`` (the real-data preset for a user with MobileSAM's release) runs
    end to end on real photos from a checkpoint in ``mobile_sam.pt``'s layout: each photo is encoded once
    into the cache, only the prompt encoder and mask decoder move, and validation reports the baselines."""
    from samft.data.coco import convert_coco
    from samft.models import build_model

    if not COCO_TINY.is_dir():
        pytest.skip(f"{COCO_TINY.resolve()} is absent (it ships with CI, not with a user's clone)")
    photos = tmp_path / "photos"
    convert_coco(COCO_TINY / "annotations" / "instances_val2017.json", COCO_TINY / "val2017", photos, link=True,
                 max_images=2)
    release = build_model("vit_t", 1024).state_dict()
    torch.save(release, tmp_path / "mobile_sam.pt")
    cfg = load(REPO / "configs" / "coco_tiny_mobile_sam.yaml", [
        f"model.checkpoint={tmp_path / 'mobile_sam.pt'}", f"model.embedding_cache={tmp_path / 'cache'}",
        "model.image_size=256", f"data.train={photos}", f"data.val={photos}", "data.max_masks=4", "eval.max_masks=4",
        "train.steps=3", "train.val_every=3", "train.checkpoint_every=3", "eval.max_images=2", "train.progress=false",
        "tracking.enabled=false", f"train.output_dir={tmp_path}"])
    trainer = Trainer(cfg, project_root=tmp_path)
    metrics = trainer.fit().val_metrics

    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2  # one embedding per photo, training and validation
    trained = trainer.model.state_dict()
    encoder = [k for k in release if k.startswith("image_encoder.")]
    assert all(torch.equal(trained[k], release[k]) for k in encoder)  # BatchNorm statistics included
    assert any(not torch.equal(trained[k], release[k]) for k in release if k.startswith("mask_decoder."))
    assert 0 < metrics["val/baseline_miou_box"] <= 1 and 0 < metrics["val/baseline_miou_point"] <= 1
