"""Models of the registry other than the ViT SAMs go through the whole engine: MobileSAM (vit_t)
trains, resumes exactly, and trains its decoder on cached embeddings of its frozen encoder."""

from pathlib import Path

import pytest
import torch

from samft.config import load
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> Path:
    from samft.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("two")
    make_demo_dataset(root, train_images=2, val_images=1, size=(160, 120), seed=0)
    return root


def vit_t_config(data, root, *overrides):
    # 64 px, 4 box-prompted masks, no correction rounds: TinyViT's 7/14 windows are mostly padding at
    # this size, so a step still costs ~0.8 s on one CPU thread.
    return load(REPO / "configs" / "mobile_sam_ft.yaml", [
        f"data.train={data / 'train'}", "data.val=null", "data.num_workers=0", "data.max_masks=4",
        "data.batch_size=2", "model.image_size=64", "prompts.mode=box", "prompts.correction_clicks=0",
        "prompts.extra_rounds=0", "schedule={name: warmup, warmup_steps: 1, after: {name: constant, value: 1.0}}",
        "optim.lr=1e-3", "train.progress=false", "tracking.enabled=false", "tracking.log_every=2",
        f"train.output_dir={root / 'out'}", "train.threads=1", *overrides,
    ])


def test_mobile_sam_learns(two_images, tmp_path):
    result = Trainer(vit_t_config(two_images, tmp_path, "train.steps=16")).fit()
    losses = [r["loss/total"] for r in result.history]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses


def test_mobile_sam_resumes_exactly(two_images, tmp_path):
    """2 steps, stop, resume to 4 == 4 uninterrupted steps, BatchNorm statistics included."""
    straight = Trainer(vit_t_config(two_images, tmp_path, "train.steps=4", "train.run_name=straight")).fit()
    Trainer(vit_t_config(two_images, tmp_path, "train.steps=2", "train.run_name=split")).fit()
    resumed = Trainer(vit_t_config(two_images, tmp_path, "train.steps=4", "train.run_name=split",
                                   "train.resume=auto")).fit()
    a, b = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (straight, resumed))
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_frozen_mobile_sam_encoder_with_the_embedding_cache(two_images, tmp_path):
    trainer = Trainer(vit_t_config(two_images, tmp_path, "train.steps=3", "model.freeze_image_encoder=true",
                                   f"model.embedding_cache={tmp_path / 'emb'}"))
    before = {k: v.clone() for k, v in trainer.model.image_encoder.state_dict().items()}
    trainer.fit()
    after = trainer.model.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    cached = list((tmp_path / "emb").rglob("*.pt"))
    assert len(cached) == 2
    assert torch.load(cached[0], weights_only=True).shape == (256, 4, 4)


def hq_config(data, root, *overrides):
    return load(REPO / "configs" / "sam_hq_ft.yaml", [
        f"data.train={data / 'train'}", "data.val=null", "data.num_workers=0", "data.max_masks=4",
        "data.batch_size=2", "model.name=hq_vit_tiny", "model.image_size=64", "prompts.correction_clicks=1",
        "prompts.extra_rounds=0", "train.progress=false", "tracking.enabled=false", "tracking.log_every=2",
        f"train.output_dir={root / 'out'}", "train.threads=1", *overrides,
    ])


def test_hq_sam_trains_only_its_additions_and_its_loss_falls(two_images, tmp_path):
    trainer = Trainer(hq_config(two_images, tmp_path, "train.steps=16", f"model.embedding_cache={tmp_path / 'emb'}"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    hq = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
    assert changed and all(k.split(".")[1] in hq for k in changed), changed
    assert {r["weight/bce"] for r in result.history} == {1.0} and {r["weight/focal"] for r in result.history} == {0.0}
    losses = [r["loss/total"] for r in result.history]
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    cached = list((tmp_path / "emb").rglob("*.pt"))
    assert len(cached) == 2 and torch.load(cached[0], weights_only=True).shape == (64 + 96, 4, 4)
