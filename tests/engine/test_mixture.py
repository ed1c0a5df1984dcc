"""Training on a weighted mixture (an SA-1B folder + tar shards) resumes exactly, and validation on several
datasets logs each one's metrics and their mean."""

import tarfile
from pathlib import Path

import torch

from samft.config import load
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
SCHEDULE = "schedule={name: warmup, warmup_steps: 2, after: {name: cosine, start: 1.0, end: 0.1, total_steps: 8}}"


def make_tar(folder: Path, tar: Path) -> Path:
    with tarfile.open(tar, "w") as tf:
        for p in sorted(folder.iterdir()):
            if not p.name.startswith("."):
                tf.add(p, arcname=p.name)
    return tar


def mixture_config(data: Path, tar: Path, root: Path, *overrides: str):
    return load(REPO / "configs" / "demo.yaml", [
        f"data.train=[{{name: sa1b, root: {data / 'train'}, weight: 3}}, {{name: sa1b_tar, tars: {tar}, weight: 1}}]",
        "data.val=null", "data.num_workers=0", "data.max_masks=3", "model.image_size=64",
        "prompts.correction_clicks=1", "prompts.extra_rounds=1", "train.progress=false", "tracking.enabled=false",
        f"train.output_dir={root / 'out'}", SCHEDULE, *overrides,
    ])


def test_mixture_resume_is_exact_across_an_epoch_boundary(demo_data, tmp_path):
    """12 folder images + 4 tar images = 16 draws per epoch, 2 per batch: 8 steps an epoch; 5 + 5 == 10."""
    tar = make_tar(demo_data / "val", tmp_path / "sa_000000.tar")
    straight = Trainer(mixture_config(demo_data, tar, tmp_path, "train.steps=10", "train.run_name=straight"))
    drawn = straight.sampler
    drawn.set_epoch(0)
    from_tar = sum(i % 16 >= 12 for i in drawn)  # draws of the tar (indices 12..15 of each cycle)
    assert from_tar >= 1 and max(drawn) >= 16  # weight 1 of 4 on 4 of 16 items: some drawn twice (cycles)
    straight = straight.fit()
    Trainer(mixture_config(demo_data, tar, tmp_path, "train.steps=5", "train.run_name=split")).fit()
    resumed = Trainer(mixture_config(demo_data, tar, tmp_path, "train.steps=10", "train.run_name=split",
                                     "train.resume=auto")).fit()
    a, b = (torch.load(r.checkpoint, weights_only=True) for r in (straight, resumed))
    assert (a["epoch"], a["position"]) == (b["epoch"], b["position"]) == (1, 2)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_validation_on_several_datasets_logs_each_and_the_mean(demo_data, tmp_path):
    tar = make_tar(demo_data / "val", tmp_path / "sa_000000.tar")
    cfg = mixture_config(demo_data, tar, tmp_path, "train.steps=1", "train.val_every=1", "eval.clicks=0",
                         f"data.val=[{{name: sa1b, root: {demo_data / 'val'}, label: folder}}, "
                         f"{{name: sa1b_tar, tars: {tar}, label: shards}}]")
    result = Trainer(cfg).fit()
    metrics = result.val_metrics
    for label in ("folder", "shards"):
        assert 0.0 <= metrics[f"val/{label}/miou_point"] <= 1.0
    # the same images through both readers: equal metrics, and the mean equals them
    assert metrics["val/folder/miou_point"] == metrics["val/shards/miou_point"] == metrics["val/miou_point"]
    assert metrics["val/miou_box"] == (metrics["val/folder/miou_box"] + metrics["val/shards/miou_box"]) / 2
    assert metrics["val/num_masks"] == metrics["val/folder/num_masks"] + metrics["val/shards/num_masks"]
