"""The rest of the product on MobileSAM (vit_t) and HQ-SAM (hq_vit_tiny): bf16 autocast, HQ-SAM's exact
resume, LoRA on MobileSAM's encoder (BatchNorm statistics stay the base's) and HQ-SAM under 2 DDP ranks."""

import sys
from pathlib import Path

import pytest
import torch

from samft.engine.trainer import Trainer
from samft.export import load_model

sys.path.insert(0, str(Path(__file__).parent))
from test_model_family import hq_config, two_images, vit_t_config  # noqa: E402, F401  (two_images: a fixture)

CONFIGS = {"vit_t": vit_t_config, "hq_vit_tiny": hq_config}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_autocast_steps(name, two_images, tmp_path):  # noqa: F811
    trainer = Trainer(CONFIGS[name](two_images, tmp_path, "train.steps=2", "train.precision=bf16",
                                    "tracking.log_every=1"))
    assert trainer.runtime.amp_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.fit().history
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss/total"])) for r in history)
    after = trainer.model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in after.items())


def test_hq_sam_resumes_exactly(two_images, tmp_path):  # noqa: F811
    """2 steps, stop, resume to 4 == 4 uninterrupted steps (only HQ-SAM's additions train; one correction
    click per step, so the prompt sampler's random state is restored too). The schedule is pinned: the
    preset's lr drop sits at 5/6 of train.steps, which the 2-step leg would move."""
    pinned = "schedule={name: step, value: 1.0, milestones: [3], gamma: 0.1}"
    straight = Trainer(hq_config(two_images, tmp_path, "train.steps=4", "train.run_name=straight", pinned)).fit()
    Trainer(hq_config(two_images, tmp_path, "train.steps=2", "train.run_name=split", pinned)).fit()
    resumed = Trainer(hq_config(two_images, tmp_path, "train.steps=4", "train.run_name=split",
                                "train.resume=auto", pinned)).fit()
    a, b = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (straight, resumed))
    assert a.keys() == b.keys() and any(".hf_token." in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_lora_on_mobile_sams_encoder_keeps_the_bases_batchnorm_statistics(two_images, tmp_path):  # noqa: F811
    """LoRA q/v on TinyViT: only the LoRA tensors change (BatchNorm running statistics included, which a
    PEFT checkpoint does not hold), so the run's exported merge computes what the trained model computed."""
    trainer = Trainer(vit_t_config(two_images, tmp_path, "train.steps=3", "model.peft={name: lora, rank: 2}",
                                   "model.freeze_prompt_encoder=true", "model.freeze_mask_decoder=true"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora.b." in k or ".lora.a." in k for k in changed), changed
    assert any(".lora.b.q" in k for k in changed) and any(".lora.b.v" in k for k in changed)
    saved = torch.load(result.checkpoint, weights_only=True)["model"]
    assert saved.keys() == {k for k, p in trainer.model.named_parameters() if p.requires_grad}
    merged = load_model(result.run_dir)  # reads the base, applies LoRA, folds it in: mobile_sam.pt's keys
    assert not any("lora" in k for k in merged.state_dict())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged.image_encoder(image), trainer.model.eval().image_encoder(image),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # one 2-rank launch: ~20 s on 2 busy cores
def test_hq_sam_under_two_ranks(demo_data, tmp_path):
    """HQ-SAM under 2 gloo ranks: the frozen SAM is left out of the all-reduce, the ranks end with the
    same weights, and only HQ-SAM's additions moved."""
    import test_ddp  # the 2-rank launcher (a module, so its tests are not collected twice)

    r0, r1, _ = test_ddp.torchrun(demo_data, tmp_path, "none", "train.steps=2", "data.val=null",
                                  "model.name=hq_vit_tiny", "prompts.multimask=false")
    assert r0["step"] == r1["step"] == 2
    test_ddp.assert_same(r0["model"], r1["model"])
    torch.manual_seed(0)  # ddp_run's train.seed: the random initialisation both ranks started from
    from samft.models import build_model

    start = build_model("hq_vit_tiny", 64).state_dict()
    changed = {k for k, v in start.items() if not torch.equal(r0["model"][k], v)}
    hq = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
    assert changed and all(k.split(".")[1] in hq for k in changed), changed
