"""Every value of the config is checked when it loads: one line naming the key as typed and what to
use, before torch (for plain values) and before anything is written (tools/train.py exits 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from samft import config
from samft.config import ConfigError, load

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"  # vit_tiny at 128 px, eval.clicks=2

# (overrides, the message's start: the key as typed, fragment of the rest); GOOD below load
BAD = [
    # model
    ("model.name=vit_x", "model.name=vit_x: ", "use one of vit_b, vit_l, vit_h, vit_tiny"),
    ("model.image_size=100", "model.image_size=100: ", "use a multiple of 16"),
    ("model.image_size=0", "model.image_size=0: ", "use a multiple of 16"),
    ("model.name=vit_b", "model.image_size=128: ", "vit_b needs 1024"),
    ("model.embedding_cache=cache", "model.embedding_cache=cache: ", "needs model.freeze_image_encoder=true"),
    (("model.embedding_cache=cache", "model.freeze_image_encoder=true", "data.augment=[{name: HorizontalFlip}]"),
     "model.embedding_cache=cache: ", "needs data.augment=[]"),
    (("model.freeze_image_encoder=true", "model.freeze_prompt_encoder=true", "model.freeze_mask_decoder=true"),
     "model.freeze_image_encoder=true, model.freeze_prompt_encoder=true, model.freeze_mask_decoder=true: ",
     "nothing of vit_tiny would train"),
    (("model.name=hq_vit_tiny", "model.freeze_mask_decoder=true"), "model.freeze_mask_decoder=true: ",
     "nothing of hq_vit_tiny would train"),
    ("model.peft={name: lroa}", "model.peft.name=lroa: ", "Did you mean 'lora'?"),
    ("model.peft=lroa", "model.peft.name=lroa: ", "Did you mean 'lora'?"),
    ("model.peft=4", "model.peft=4: ", "use a mapping {name: ..., **options} naming a PEFT method"),
    ("model.peft={rank: 4}", "model.peft={rank: 4}: ", "add the PEFT method's name"),
    ("model.peft={name: lora, rnak: 4}", "model.peft.rnak=4: ", "Did you mean 'rank'?"),
    ("model.peft={name: lora, rank: 0}", "model.peft.rank=0: ", "rank must be a whole number >= 1"),
    ("model.peft={name: lora, targets: [q, x]}", "model.peft.targets=[q, x]: ", "use a list of q, k, v, qkv"),
    ("model.peft={name: lora, blocks: [2]}", "model.peft (vit_tiny): ", "the image encoder has 2 blocks (0-1)"),
    (("model.name=vit_t", "model.image_size=256", "model.peft=adaptformer"), "model.peft=adaptformer: ",
     "vit_t's image encoder (tiny_vit) has no ViT blocks"),
    ("model.peft={name: adaptformer, scale: 0}", "model.peft.scale=0: ", "scale must be a number > 0"),
    ("model.peft={name: bias, parts: [neck]}", "model.peft.parts=[neck]: ", "use a list of image_encoder"),
    (("model.peft={name: lora}", "model.embedding_cache=cache", "model.freeze_image_encoder=true"),
     "model.embedding_cache=cache: ", "adapts the image encoder"),
    # data
    ("data.batch_size=0", "data.batch_size=0: ", "use a whole number >= 1"),
    ("data.max_masks=0", "data.max_masks=0: ", "use a whole number >= 1"),
    ("data.min_area=-1", "data.min_area=-1: ", "use a whole number >= 0"),
    ("data.max_area_frac=1.5", "data.max_area_frac=1.5: ", "use a number in (0, 1]"),
    ("data.min_predicted_iou=-0.1", "data.min_predicted_iou=-0.1: ", "use a number in [0, 1]"),
    ("data.min_stability=2", "data.min_stability=2.0: ", "use a number in [0, 1]"),
    ("data.num_workers=-1", "data.num_workers=-1: ", "use a whole number >= 0"),
    ("data.on_error=ignore", "data.on_error=ignore: ", "use one of skip, raise"),
    ("data.dist_clip=0", "data.dist_clip=0.0: ", "use a number > 0, or null for unclipped maps"),
    ("data.augment=[{name: HorizontalFlp}]", "data.augment[0]: ", "Did you mean 'HorizontalFlip'?"),
    # prompts
    ("prompts.mode=points", "prompts.mode=points: ", "use one of point, box, point_or_box"),
    ("prompts.box_prob=1.5", "prompts.box_prob=1.5: ", "use a number in [0, 1]"),
    ("prompts.correction_clicks=-1", "prompts.correction_clicks=-1: ", "use a whole number >= 0"),
    ("prompts.extra_rounds=-1", "prompts.extra_rounds=-1: ", "use a whole number >= 0"),
    ("prompts.round_loss=avg", "prompts.round_loss=avg: ", "use one of mean, sum, last"),
    # optim
    ("optim.lr=0", "optim.lr=0.0: ", "use a number > 0"),
    ("optim.lr=nan", "optim.lr=nan: ", "use a number > 0"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0]: ", "use two numbers in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]: ", "use two numbers in [0, 1)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: ", "use a number >= 0"),
    ("optim.encoder_lr=0", "optim.encoder_lr=0.0: ", "use a number > 0, or null for optim.lr"),
    ("optim.layer_decay=0", "optim.layer_decay=0.0: ", "use a number in (0, 1]"),
    ("optim.layer_decay=1.5", "optim.layer_decay=1.5: ", "use a number in (0, 1]"),
    ("optim.grad_clip=0", "optim.grad_clip=0.0: ", "use a number > 0, or null for no clipping"),
    # train
    ("train.steps=-5", "train.steps=-5: ", "use a whole number >= 1"),
    ("train.steps=0", "train.steps=0: ", "use a whole number >= 1"),
    ("train.device=gpu", "train.device=gpu: ", "use auto, cpu, cuda, cuda:N or mps"),
    ("train.device=cuda:x", "train.device='cuda:x': ", "use auto, cpu, cuda, cuda:N or mps"),
    ("train.precision=fp8", "train.precision=fp8: ", "use one of auto, fp32, bf16, fp16"),
    (("train.precision=fp16", "train.device=cpu"), "train.precision=fp16: ", "use train.precision=bf16 or fp32"),
    ("train.seed=-1", "train.seed=-1: ", "use a whole number >= 0"),
    ("train.grad_accum=0", "train.grad_accum=0: ", "use a whole number >= 1"),
    ("train.loss_resolution=full", "train.loss_resolution=full: ", "use one of low_res, input"),
    ("train.run_name=a/b", "train.run_name=a/b: ", "use a folder name without '/'"),
    ("train.val_every=0", "train.val_every=0: ", "use a whole number >= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every=0: ", "use a whole number >= 1"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps=0: ", "use a whole number >= 1"),
    ("train.grad_analysis_every=-1", "train.grad_analysis_every=-1: ", "use a whole number >= 0"),
    ("train.grad_analysis_layer=''", "train.grad_analysis_layer='': ", "use a module name"),
    ("train.threads=0", "train.threads=0: ", "use a whole number >= 1, or null"),
    # eval
    ("eval.max_images=0", "eval.max_images=0: ", "use a whole number >= 1"),
    ("eval.max_masks=0", "eval.max_masks=0: ", "use a whole number >= 1"),
    ("eval.clicks=-1", "eval.clicks=-1: ", "use a whole number >= 0"),
    ("eval.seed=-1", "eval.seed=-1: ", "use a whole number >= 0"),
    ("eval.best_mode=maximum", "eval.best_mode=maximum: ", "use one of max, min"),
    ("eval.best_metric=val/miou_pint", "eval.best_metric=val/miou_pint: ", "Did you mean 'val/miou_point'"),
    ("eval.best_metric=val/miou_click3", "eval.best_metric=val/miou_click3: ", "set eval.clicks=3"),
    ("eval.best_metric=val/everything_msa", "eval.best_metric=val/everything_msa: ", "set eval.everything.every=K"),
    ("eval.best_metric=val/num_masks", "eval.best_metric=val/num_masks: ", "has no better end"),
    ("eval.best_metric=val/iou_calibration_point", "eval.best_mode=max: ", "use eval.best_mode=min"),
    ("eval.everything.every=-1", "eval.everything.every=-1: ", "use a whole number >= 0"),
    ("eval.everything.max_images=0", "eval.everything.max_images=0: ", "use a whole number >= 1"),
    ("eval.everything.iou_grid=[]", "eval.everything.iou_grid=[]: ", "one or more thresholds in [0, 1]"),
    ("eval.everything.stability_grid=[1.5]", "eval.everything.stability_grid=[1.5]: ", "thresholds in [0, 1]"),
    ("eval.everything.best_metric=map", "eval.everything.best_metric=map: ", "use one of ap, ap50, ar100"),
    ("eval.everything.points_per_side=0", "eval.everything.points_per_side=0: ", "use a whole number >= 1"),
    ("eval.everything.points_per_batch=0", "eval.everything.points_per_batch=0: ", "use a whole number >= 1"),
    ("eval.everything.crop_n_layers=-1", "eval.everything.crop_n_layers=-1: ", "use a whole number >= 0"),
    # tracking
    ("tracking.experiment=' '", "tracking.experiment=' ': ", "use a non-empty name"),
    ("tracking.run_name=''", "tracking.run_name='': ", "use a non-empty name, or null"),
    ("tracking.log_every=0", "tracking.log_every=0: ", "use a whole number >= 1"),
    ("tracking.overlays=-1", "tracking.overlays=-1: ", "use a whole number >= 0"),
    # plugin specs, top-level and nested
    ("loss.name=dcie", "loss.name=dcie: ", "Unknown loss 'dcie'. Did you mean 'dice'?"),
    ("loss.focal_gama=3", "loss.focal_gama=3: ", "no option 'focal_gama'. Did you mean 'focal_gamma'"),
    ("loss.extra_terms={boundary: {name: bondary}}", "loss.extra_terms.boundary.name=bondary: ",
     "Unknown loss 'bondary'. Did you mean 'boundary'"),
    ("loss.extra_terms={boundary: bondary}", "loss.extra_terms.boundary.name=bondary: ", "Unknown loss 'bondary'"),
    ("loss.extra_terms={boundary: {name: boundary, smoth: 1}}", "loss.extra_terms.boundary.smoth=1: ",
     "loss 'boundary' has no option 'smoth'"),
    ("loss.extra_terms={dice: boundary}", "loss.extra_terms.dice: ", "the term name 'dice' is taken"),
    ("loss.extra_terms=[boundary]", "loss.extra_terms=[boundary]: ", "use a mapping {term: loss spec}"),
    ("loss={name: combined, terms: {dice: {weight: 2}, focal: {name: sigmoid_focal, gama: 2}}}",
     "loss.terms.focal.gama=2: ", "loss 'sigmoid_focal' has no option 'gama'. Did you mean 'gamma'?"),
    ("loss={name: combined, terms: {dcie: {weight: 1}}}", "loss.terms.dcie: ", "Unknown loss 'dcie'"),
    ("loss={name: weighted, base: {name: bce, reductio: none}}", "loss.base.reductio=none: ",
     "no option 'reductio'. Did you mean 'reduction'?"),
    ("loss={name: multi_granularity, normalize: foo}", "loss.normalize=foo: ", "normalize must be"),
    ("weighting.name=fixd", "weighting.name=fixd: ", "Did you mean 'fixed'?"),
    ("weighting.weights.iou={name: linaer, start: 0, end: 1, total_steps: 5}", "weighting.weights.iou.name=linaer: ",
     "Unknown schedule 'linaer'. Did you mean 'linear'?"),
    ("weighting.weights.iou={name: linear, start: 0, end: 1}", "weighting.weights.iou: ",
     "schedule 'linear' needs total_steps"),
    ("weighting.weights.iou={name: linear, start: 0, end: 1, total_steps: -3}",
     "weighting.weights.iou.total_steps=-3: ", "must be a non-negative whole number"),
    ("weighting.weights.iou=abc", "weighting.weights.iou=abc: ", "use a finite number or a schedule spec"),
    ("weighting.weights.boundry=0.5", "weighting.weights.boundry=0.5: ", "'boundry', which is not a loss term"),
    ("weighting={name: gradnorm, optimizer: sgdd}", "weighting.optimizer=sgdd: ", "must be one of adam, sgd"),
    ("schedule.after={name: cosin, start: 1.0, end: 0.0, total_steps: 5}", "schedule.after.name=cosin: ",
     "Did you mean 'cosine'?"),
    ("schedule.after.milestones=[5,3]", "schedule.after.milestones=[5, 3]: ", "non-decreasing"),
    ("schedule.warmup_steps=-1", "schedule.warmup_steps=-1: ", "must be a non-negative whole number"),
    ("schedule.after=nan", "schedule.after=nan: ", "use a finite number or a schedule spec"),
    # options of loss functions (bound, not called, when built) and of classes, named by the plugin's OptionError
    ("loss.iou_loss=mae", "loss.iou_loss=mae: ", "Option iou_loss must be one of mse, l1, smooth_l1"),
    ("loss.empty_target=drop", "loss.empty_target=drop: ", "Option empty_target must be one of zero, keep"),
    ("loss.focal_gamma=-1", "loss.focal_gamma=-1: ", "Option focal_gamma must be >= 0"),
    ("loss.extra_terms={boundary: {name: boundary, reduction: avg}}", "loss.extra_terms.boundary.reduction=avg: ",
     "Option reduction must be one of mean, sum, none"),
    ("loss={name: combined, terms: {dice: {smooth: -1}}}", "loss.terms.dice.smooth=-1: ", "Option smooth must be >= 0"),
    ("weighting={name: uncertainty, kinds: {dice: regresion}}", "weighting.kinds.dice=regresion: ",
     "kinds.dice must be one of regression, classification"),
    ("weighting={name: gradnorm, min_weight: 2}", "weighting.min_weight=2: ", "must be < 1"),
    ("schedule.after={name: piecewise, points: [[0, 1.0], [5]]}", "schedule.after.points=[[0, 1.0], [5]]: ",
     "points[1] must be a [step, value] pair"),
    ("schedule.after={name: boundary_transfer, role: edge, steps_per_epoch: 5}", "schedule.after.role=edge: ",
     "Option role must be one of"),
]

GOOD = [
    "train.device=cuda:1",  # availability is the runtime's to check
    "train.device=mps", "train.precision=bf16", "data.dist_clip=null", "optim.encoder_lr=null", "optim.grad_clip=1.0",
    "train.threads=null", "train.run_name=my-run", "prompts.mode=box", "data.on_error=raise", "eval.best_mode=max",
    ("model.name=vit_b", "model.image_size=1024"), "model.image_size=64", "model.image_size=16",
    "eval.best_metric=val/miou_click2", "eval.best_metric=val/baseline_miou_box",
    ("eval.best_metric=val/everything_msa", "eval.everything.every=10"),
    ("eval.best_metric=val/iou_calibration_point", "eval.best_mode=min"),
    "loss.extra_terms={boundary: boundary}",
    ("loss.extra_terms={boundary: {name: boundary}}", "weighting.weights.boundary=0.5", "data.with_dist_maps=true"),
    "weighting.weights.iou={name: linear, start: 0, end: 1, total_steps: 5}",
    "data.augment=[{name: HorizontalFlip, p: 0.5}]",
    ("model.embedding_cache=cache", "model.freeze_image_encoder=true"),
    "schedule.after=2.0",
    "loss.iou_loss=smooth_l1", "loss.empty_target=keep",
    "weighting={name: fixed, weights: {name: linear, start: 0, end: 1, total_steps: 5}}",  # one schedule, every term
    "model.peft={name: lora, rank: 8, alpha: 16, dropout: 0.1, targets: [q, v, proj, mlp, decoder], blocks: [0, 1]}",
    ("model.peft={name: lora, targets: [decoder]}", "model.embedding_cache=cache", "model.freeze_image_encoder=true"),
    ("model.name=vit_t", "model.image_size=256", "model.peft={name: lora, targets: [decoder]}"),
    "model.peft={name: ssf}", "model.peft=lora", "model.peft={name: norm, parts: [image_encoder, mask_decoder]}",
    ("model.peft={name: attention}", "model.freeze_image_encoder=true", "model.freeze_prompt_encoder=true",
     "model.freeze_mask_decoder=true"),
]


def overrides_of(case: str | tuple[str, ...]) -> list[str]:
    return [case] if isinstance(case, str) else list(case)


def case_id(case: str | tuple[str, ...]) -> str:
    return " ".join(overrides_of(case))


CASES = [(bad[0], bad[1:]) for bad in BAD] + [(good, None) for good in GOOD]


@pytest.mark.parametrize(("overrides", "error"), CASES, ids=[case_id(c[0]) for c in CASES])
def test_value_loads_or_is_one_line_naming_the_key(overrides, error: tuple[str, str] | None):
    if error is None:
        load(DEMO, overrides_of(overrides))
        return
    start, fragment = error
    with pytest.raises(ConfigError) as err:
        load(DEMO, overrides_of(overrides))
    message = str(err.value)
    assert message.startswith(start), message
    assert fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name: str):
    load(REPO / "configs" / name)


def _leaves(schema: type, prefix: str = "") -> dict[str, typing.Any]:
    out = {}
    for f in fields(schema):
        kind = typing.get_type_hints(schema)[f.name]
        if is_dataclass(kind):
            out.update(_leaves(kind, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = kind
    return out


def test_every_value_of_the_schema_has_a_check():
    leaves = {k: v for k, v in _leaves(config.Config).items() if k not in config.PLUGIN_SLOTS}
    unchecked = sorted(k for k, kind in leaves.items()
                       if kind is not bool and k not in config.RULES and k not in config.NOT_RULED)
    assert unchecked == [], "give these keys a rule in samft/config.py RULES (or list them in NOT_RULED)"
    assert set(config.RULES) | set(config.NOT_RULED) <= set(leaves)


def test_choices_agree_with_their_consumers():
    from samft.data.errors import ON_ERROR
    from samft.engine.interactive import ROUND_LOSSES
    from samft.engine.runtime import PRECISIONS
    from samft.engine.step import LOSS_RESOLUTIONS
    from samft.models import ARCHS
    from samft.models.attention import ATTENTIONS
    from samft.prompting import PROMPT_MODES

    assert tuple(ON_ERROR) == config.ON_ERROR and tuple(PROMPT_MODES) == config.PROMPT_MODES
    assert ROUND_LOSSES == config.ROUND_LOSSES and PRECISIONS == config.PRECISIONS
    assert ATTENTIONS == config.ATTENTIONS
    assert LOSS_RESOLUTIONS == config.LOSS_RESOLUTIONS and tuple(ARCHS) == config.MODEL_NAMES


def test_nested_spec_table_names_real_options():
    import inspect

    from samft.registry import LOSSES, SCHEDULES, WEIGHTINGS

    registries = {r.kind: r for r in (LOSSES, SCHEDULES, WEIGHTINGS)}
    for (kind, name), options in config.NESTED.items():
        params = inspect.signature(registries[kind].get(name)).parameters
        assert set(options) <= set(params), (kind, name)


def test_validation_keys_are_what_evaluation_logs(demo_data):
    """eval.best_metric is checked against these: every one must be logged, with a better end."""
    import torch

    from samft.data import SA1BDataset, collate_masks
    from samft.engine.evaluate import evaluate
    from samft.engine.runtime import make_runtime
    from samft.metrics import direction
    from samft.models import build_model

    values = config.to_dict(load(DEMO, ["eval.clicks=1"]))
    known = config._validation_keys(values)
    dataset = SA1BDataset(demo_data / "val", image_size=64, max_masks=2, prompt=None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_masks)
    logged = evaluate(build_model("vit_tiny", 64), loader, make_runtime("cpu"), max_images=1, max_masks=2,
                      clicks=1).metrics
    assert {k.removeprefix("val/") for k in known} <= set(logged)
    assert all(direction(k) in ("higher", "lower") for k in known)


PROBE = """
import sys
from samft.config import ConfigError, load
try:
    load(sys.argv[1], sys.argv[2:])
except ConfigError as exc:
    print(exc)
print("torch" in sys.modules)
"""


def test_plain_value_errors_come_before_torch_is_imported():
    done = subprocess.run([sys.executable, "-c", PROBE, str(DEMO), "train.steps=-5"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.stdout.splitlines() == ["train.steps=-5: use a whole number >= 1 (optimiser steps to train).",
                                        "False"], done.stdout + done.stderr


def test_train_tool_exits_2_with_one_error_line_and_writes_nothing(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SAMFT_DEBUG")}
    done = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), str(DEMO), "train.steps=-5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ["error: train.steps=-5: use a whole number >= 1 (optimiser steps to train)."]
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no outputs/<run>/, no MLflow store
