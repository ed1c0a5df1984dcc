"""PEFT runs: the base stays bit-identical, small checkpoints, exact resume, base identity, loss goes down,
AMP + accumulation + layer decay, the embedding cache, evaluation and export of a PEFT run."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from samft.cli import evaluate_main
from samft.config import load
from samft.engine.build import model_from_config
from samft.engine.optim import param_groups
from samft.engine.trainer import Trainer
from samft.export import load_model
from samft.export.cli import export_main
from samft.models import CheckpointError, build_model, merge_peft

REPO = Path(__file__).resolve().parents[2]
SCHEDULE = "schedule={name: warmup, warmup_steps: 2, after: {name: cosine, start: 1.0, end: 0.1, total_steps: 8}}"
LORA = "model.peft={name: lora, rank: 2, targets: [q, v, proj]}"


def tiny_config(data, root, *overrides, schedule=SCHEDULE):
    return load(REPO / "configs" / "demo.yaml", [
        f"data.train={data / 'train'}", "data.val=null", "data.num_workers=0", "data.max_masks=3",
        "model.image_size=64", "prompts.correction_clicks=1", "prompts.extra_rounds=1",
        "train.progress=false", "tracking.enabled=false", f"train.output_dir={root / 'out'}", schedule,
        *overrides,
    ])


def test_base_weights_stay_bit_identical_and_only_lora_moves_in_the_encoder(demo_data, tmp_path):
    trainer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=3", LORA, "model.freeze_prompt_encoder=true"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    for key in before:
        if key.startswith(("image_encoder.", "prompt_encoder.")) and ".lora." not in key:
            assert torch.equal(before[key], after[key]), key
    assert all(not torch.equal(before[k], after[k]) for k in before if ".lora.b." in k)  # B starts at 0, moved
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))


def test_checkpoint_holds_only_trained_tensors_and_the_base_identity(demo_data, tmp_path):
    base = tmp_path / "base.pth"
    torch.manual_seed(5)
    torch.save(build_model("vit_tiny", 64).state_dict(), base)
    result = Trainer(tiny_config(demo_data, tmp_path, "train.steps=2", LORA, f"model.checkpoint={base}",
                                 "model.freeze_mask_decoder=true", "model.freeze_prompt_encoder=true")).fit()
    state = torch.load(result.checkpoint, weights_only=True)
    assert set(state["model"]) == {f"image_encoder.blocks.{b}.attn.{m}.lora.{ab}.{s}" for b in (0, 1)
                                   for m, slices in (("qkv", "qv"), ("proj", ["proj"])) for s in slices for ab in "ab"}
    assert state["peft"]["method"] == {"name": "lora", "rank": 2, "targets": ["q", "v", "proj"]}
    assert state["peft"]["base"]["path"] == str(base.resolve())
    import hashlib  # the sha256 is of the weights' content, recomputed here independently
    digest = hashlib.sha256()
    for name, tensor in sorted(torch.load(base, weights_only=True).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert state["peft"]["base"]["sha256"] == digest.hexdigest()
    n_opt = sum(len(s) for s in state["optimizer"]["state"].values())
    assert n_opt == 2 * len(state["model"]) + len(state["model"])  # exp_avg, exp_avg_sq (+ step) per tensor

    # Evaluation builds the adapted model from it; another base file at the recorded path is refused.
    cfg = OmegaConf.create((result.run_dir / "config.yaml").read_text())
    cfg.model.checkpoint = str(result.checkpoint)
    model = model_from_config(cfg, tmp_path)
    assert torch.equal(model.image_encoder.blocks[0].attn.qkv.lora.b.q, state["model"][
        "image_encoder.blocks.0.attn.qkv.lora.b.q"])
    cfg.model.peft.rank = 3  # another method's tensors: refused by name and shape, not a traceback
    with pytest.raises(CheckpointError, match="0 missing, 0 unexpected, 12 of another shape"):
        model_from_config(cfg, tmp_path)
    cfg.model.peft.rank = 2
    torch.manual_seed(6)
    torch.save(build_model("vit_tiny", 64).state_dict(), base)
    with pytest.raises(CheckpointError, match=r"adapts the base weights .*base\.pth \(sha256 [0-9a-f]{12}\), not "
                                              r".*base\.pth \(sha256 [0-9a-f]{12}\): set model.checkpoint="):
        model_from_config(cfg, tmp_path)
    with pytest.raises(CheckpointError, match="adapts the base weights"):  # resuming on the changed base, too
        Trainer(tiny_config(demo_data, tmp_path, "train.steps=3", LORA, f"model.checkpoint={base}",
                            "model.freeze_mask_decoder=true", "model.freeze_prompt_encoder=true",
                            f"train.run_name={result.run_dir.name}", "train.resume=auto")).fit()
    base.rename(tmp_path / "moved.pth")
    with pytest.raises(CheckpointError, match=r"adapts the base weights .*base\.pth \(sha256 [0-9a-f]{12}\), which "
                                              "do not exist: put that file back"):
        model_from_config(cfg, tmp_path)
    cfg.model.peft = None
    with pytest.raises(CheckpointError, match="is a PEFT checkpoint"):
        model_from_config(cfg, tmp_path)


def test_evaluating_on_another_base_is_one_line_and_exit_2(demo_data, tmp_path, capsys):
    result = Trainer(tiny_config(demo_data, tmp_path, "train.steps=1", LORA)).fit()
    config = result.run_dir / "config.yaml"
    argv = [str(config), f"model.checkpoint={result.checkpoint}", f"data.val={demo_data / 'val'}",
            "eval.max_images=1", "eval.max_masks=1", "eval.clicks=0"]
    assert evaluate_main([*argv, "train.seed=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: Checkpoint ") and "Traceback" not in err
    assert "adapts the base weights drawn at random from train.seed=0" in err
    assert "set model.checkpoint=null train.seed=0" in err
    assert evaluate_main(argv) == 0  # the run's own seed rebuilds its base


def test_resume_with_lora_is_exact(demo_data, tmp_path):
    """4 steps, stop, resume to 8 == 8 uninterrupted steps, with LoRA (12 images, 2 per batch)."""
    straight = Trainer(tiny_config(demo_data, tmp_path, "train.steps=8", LORA, "train.run_name=straight")).fit()
    Trainer(tiny_config(demo_data, tmp_path, "train.steps=4", LORA, "train.run_name=split")).fit()
    resumed = Trainer(tiny_config(demo_data, tmp_path, "train.steps=8", LORA, "train.run_name=split",
                                  "train.resume=auto")).fit()
    a, b = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (straight, resumed))
    assert a.keys() == b.keys() and any(".lora." in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_short_lora_run_lowers_the_loss(demo_data, tmp_path):
    result = Trainer(tiny_config(demo_data, tmp_path, "train.steps=30", "tracking.log_every=1", LORA,
                                 schedule="schedule={name: constant, value: 1.0}")).fit()
    losses = [h["loss/total"] for h in result.history]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_lora_with_bf16_accumulation_and_layer_decay(demo_data, tmp_path):
    cfg = tiny_config(demo_data, tmp_path, "train.steps=2", LORA, "train.precision=bf16", "train.grad_accum=2",
                      "optim.layer_decay=0.5", "optim.lr=1e-3")
    trainer = Trainer(cfg)
    groups = {id(p): g for g in param_groups(trainer.model, lr=1e-3, weight_decay=0.1, layer_decay=0.5)
              for p in g["params"]}
    lora = dict(trainer.model.named_parameters())
    # block b's LoRA takes block b's lr: 1e-3 * 0.5 ** (depth + 1 - (b + 1)) with depth 2
    assert groups[id(lora["image_encoder.blocks.0.attn.qkv.lora.a.q"])]["lr"] == pytest.approx(1e-3 * 0.5 ** 2)
    assert groups[id(lora["image_encoder.blocks.1.attn.qkv.lora.a.q"])]["lr"] == pytest.approx(1e-3 * 0.5)
    b_before = lora["image_encoder.blocks.1.attn.qkv.lora.b.v"].detach().clone()
    result = trainer.fit()
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(h["loss/total"])) for h in result.history)
    assert not torch.equal(b_before, trainer.model.image_encoder.blocks[1].attn.qkv.lora.b.v)


def test_decoder_lora_with_a_frozen_encoder_and_the_embedding_cache(demo_data, tmp_path):
    cfg = tiny_config(demo_data, tmp_path, "train.steps=7", "model.peft={name: lora, targets: [decoder]}",
                      "model.freeze_image_encoder=true", f"model.embedding_cache={tmp_path / 'cache'}")
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.embedding_cache.hits > 0  # 12 images, 2 per step: the 7th step's were cached in epoch 1
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if ".lora." not in k
               and not k.startswith("prompt_encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if ".lora.b." in k)


@pytest.mark.parametrize("overrides", [
    ("model.peft={name: lora, rank: 2, dropout: 0.1, targets: [q, v, decoder]}", "model.activation_checkpointing=true"),
    ("model.peft={name: lora, targets: [decoder]}", "model.freeze_image_encoder=true", "model.embedding_cache=cache"),
    ("weighting={name: gradnorm}", "train.grad_analysis_every=1"),  # autograd.grad through the recomputation
], ids=["lora-dropout-encoder-checkpointing", "decoder-lora-embedding-cache", "gradnorm-grad-analysis"])
def test_decoder_checkpointing_trains_exactly_as_without(demo_data, tmp_path, overrides):
    """3 steps of 3 rounds recomputing the decoder in backward end on the same weights, bit for bit."""
    weights, history = [], []
    for on in ("false", "true"):
        cfg = tiny_config(demo_data, tmp_path, "train.steps=3", *overrides, f"model.decoder_checkpointing={on}",
                          f"train.run_name=decoder-checkpointing-{on}", "tracking.log_every=1")
        trainer = Trainer(cfg, project_root=tmp_path)
        history.append([{k: v for k, v in h.items() if not k.endswith(("_s", "time"))} for h in trainer.fit().history])
        weights.append(trainer.model.state_dict())
    assert history[0] == history[1]  # losses, gradient norms (per term with grad analysis), weightings
    assert "train.grad_analysis_every=1" not in overrides or any(k.startswith("grad_norm/") for k in history[1][-1])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_evaluate_and_export_a_lora_run(demo_data, tmp_path, capsys):
    result = Trainer(tiny_config(demo_data, tmp_path, "train.steps=2", LORA)).fit()
    adapted = model_from_config(_run_config(result), tmp_path).eval()
    out = tmp_path / "merged.pth"
    assert export_main([str(result.run_dir), "--format", "sam", "--out", str(out)]) == 0
    merged = load_model(out)
    assert list(merged.state_dict()) == list(build_model("vit_tiny", 64).state_dict())
    assert json.loads(out.with_name("merged.pth.samft.json").read_text())["name"] == "vit_tiny"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged.image_encoder(x), adapted.image_encoder(x), rtol=1e-5, atol=1e-5)
    expected = merge_peft(adapted).state_dict()
    assert all(torch.equal(merged.state_dict()[k], expected[k]) for k in expected)

    adaptformer = Trainer(tiny_config(demo_data, tmp_path, "train.steps=1", "train.run_name=af",
                                      "model.peft={name: adaptformer, bottleneck: 4}")).fit()
    assert export_main([str(adaptformer.run_dir), "--format", "sam", "--out", str(tmp_path / "af.pth")]) == 2
    assert "cannot be folded" in capsys.readouterr().err


def _run_config(result):
    cfg = OmegaConf.create((result.run_dir / "config.yaml").read_text())
    cfg.model.checkpoint = str(result.checkpoint)
    return cfg


def test_trainable_and_total_parameters_are_logged_to_the_console_and_mlflow(demo_data, tmp_path, caplog,
                                                                            monkeypatch):
    """The counts reach the console and the MLflow run's tags (the tracker's tags reach MLflow:
    tests/tracking/test_tracking_embedded.py); captured at Tracker.start to keep this test quick."""
    from samft.engine import trainer as trainer_module

    started = {}

    def start(settings, **kwargs):
        started.update(kwargs)
        return trainer_module.Tracker.disabled()

    monkeypatch.setattr(trainer_module.Tracker, "start", staticmethod(start))
    cfg = tiny_config(demo_data, tmp_path, "train.steps=1", LORA, "tracking.enabled=true")
    with caplog.at_level("INFO", logger="samft.train"):
        trainer = Trainer(cfg)
        trainer.fit()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    assert trainable < total
    assert f"parameters: {trainable:,} trainable of {total:,}" in caplog.text
    assert started["tags"]["samft.trainable_params"] == str(trainable)
    assert started["tags"]["samft.total_params"] == str(total)
    assert started["config"]["model"]["peft"] == {"name": "lora", "rank": 2, "targets": ["q", "v", "proj"]}
