"""Training on real photos: a short run on real COCO images beats the untrained model.

A short version of the README's real-data curve. It fits 4 real photos and is validated on the same
4 (what the small model learns in CPU-test time; generalising to unseen photos takes the README
run's 30 minutes, and the README says how far it gets against the trivial baselines).
"""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from samft.config import load
from samft.data import collate_masks
from samft.engine.evaluate import evaluate
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
COCO_TINY = REPO / ".." / "shared" / "data" / "coco_tiny"


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory) -> Path:
    from samft.data.coco import convert_coco

    if not COCO_TINY.is_dir():
        pytest.skip(f"{COCO_TINY.resolve()} is absent (it ships with CI, not with a user's clone)")
    out = tmp_path_factory.mktemp("coco4") / "sa1b"
    convert_coco(COCO_TINY / "annotations" / "instances_train2017.json", COCO_TINY / "train2017", out, link=True,
                 max_images=4)
    return out


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers below were measured single-threaded
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_short_run_on_real_photos_beats_the_untrained_model(four_photos, tmp_path, one_thread):
    cfg = load(REPO / "configs" / "demo.yaml", [
        f"data.train={four_photos}", f"data.val={four_photos}", "train.steps=150", "train.val_every=150",
        "schedule.after.milestones=[400,578]",  # the demo's 600-step schedule: no lr drop in these 150 steps
        "train.checkpoint_every=150", "train.progress=false", f"train.output_dir={tmp_path}",
        "tracking.enabled=false", "eval.max_images=4", "eval.max_masks=16", "eval.clicks=0",
    ])
    trainer = Trainer(cfg, project_root=tmp_path)
    loader = DataLoader(trainer.val_set, batch_size=2, collate_fn=collate_masks)
    untrained = evaluate(trainer.model, loader, trainer.runtime, max_images=4, max_masks=16).metrics
    trained = trainer.fit().val_metrics
    # measured: untrained 0.01 (point) / 0.04 (box); after 150 steps 0.15 / 0.10
    assert trained["val/miou_point"] > max(0.08, untrained["miou_point"] + 0.05), (untrained, trained)
    assert trained["val/miou_box"] > untrained["miou_box"] + 0.02, (untrained, trained)
    assert trained["val/baseline_miou_box"] == pytest.approx(untrained["baseline_miou_box"])  # same prompts
