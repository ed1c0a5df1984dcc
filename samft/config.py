"""Typed, validated configuration: YAML files with inheritance plus ``key=value`` overrides.

``load("configs/demo.yaml", ["train.steps=100"])`` reads the file, follows its ``base:`` chain
(paths relative to the file that names them), merges it onto the typed schema below, applies
the overrides and checks every value: ranges (:data:`RULES`), fixed choices, values that depend on
each other (``model.image_size`` and ``model.name``) and every plugin spec against its registry.
Unknown keys, wrong types and bad values are rejected with one line that names the key as typed
and says what to use (``train.steps=-5: use a whole number >= 1 ...``), before anything heavy
starts: the value checks import nothing, the plugin checks the registries (torch).

Plugin slots (``loss``, ``weighting``, ``schedule``, ``model.peft``) all have one shape, ``{name: ..., **options}``;
their options are checked against the registered callable's signature, and so are the specs
nested in them (:data:`NESTED`: ``loss.extra_terms``, schedules in ``weighting.weights``, ...).
Schedules are also built once, which checks their values.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, get_type_hints

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from samft.archs import ARCHS, PARTS, PATCH_SIZE
from samft.checks import OptionError
from samft.errors import UserError
from samft.registry import (
    LOSSES,
    MODELS,
    PEFT,
    SCHEDULES,
    WEIGHTINGS,
    Registry,
    RegistryError,
    check_options,
    did_you_mean,
)


class ConfigError(UserError, ValueError):
    """A config file, key or value that cannot be used; the message says what to do."""


@dataclass
class ModelConfig:
    name: str = "vit_b"  # vit_b | vit_l | vit_h | vit_tiny (a small CPU variant)
    checkpoint: Optional[str] = None  # SAM .pth or a samft checkpoint; None = random init
    image_size: int = 1024  # input side after resize + pad; only vit_tiny may change it
    freeze_image_encoder: bool = False
    freeze_prompt_encoder: bool = False
    freeze_mask_decoder: bool = False
    activation_checkpointing: bool = False  # recompute encoder block activations in backward (saves memory)
    decoder_checkpointing: bool = False  # recompute each round's decoder activations in backward (per mask)
    attention: str = "sdpa"  # sdpa: exact, never stores the [N, N] attention (samft.models.attention) | eager
    embedding_cache: Optional[str] = None  # folder caching image embeddings (frozen encoder, no augment)
    peft: Any = None  # a PEFT method, {name: lora, rank: 4, ...} or a bare name; None = full fine-tuning


@dataclass
class CropConfig:
    """Crops of large images: squares of ``multiple * model.image_size`` original pixels, resized to the
    input size, from images whose longest side is larger (training: random, around a mask with
    probability ``mask_prob``; evaluation: tiles overlapping by ``overlap``, each mask scored in one)."""

    enabled: bool = False
    multiple: float = 1.0
    mask_prob: float = 0.9
    overlap: float = 0.25


@dataclass
class DataConfig:
    # An SA-1B folder, a reader spec {name: sa1b | sa1b_tar | coco | label_images, ...options}, or a
    # list of specs (train: each with a sampling weight; val: each logged as val/<label>/<metric>).
    train: Any = "data/sa1b/train"
    val: Any = None  # None = no validation
    batch_size: int = 1  # images per step (each carries up to max_masks masks)
    max_masks: int = 64  # SAM: at most 64 masks per GPU per step
    min_area: int = 1
    max_area_frac: float = 0.9  # SAM drops masks covering > 90% of the image
    min_predicted_iou: float = 0.0
    min_stability: float = 0.0
    num_workers: int = 2
    on_error: str = "skip"  # skip | raise
    augment: list[Any] = field(default_factory=list)  # albumentations specs {name: ..., **kwargs}
    with_dist_maps: bool = False  # serve signed distance maps (boundary losses)
    dist_map_cache: Optional[str] = None  # precomputed maps; None: <data>/.samft_dist_maps if present, else on the fly
    dist_clip: Optional[float] = 0.05  # outside distances clipped at this share of the input side
    crop: CropConfig = field(default_factory=CropConfig)


@dataclass
class PromptConfig:
    mode: str = "point_or_box"  # point | box | point_or_box
    box_prob: float = 0.5  # SAM: point or box with equal probability
    multimask: bool = True  # 3 outputs + min-loss selection for single-point prompts
    correction_clicks: int = 8  # interactive rounds adding one error-region click each (SAM: 8, SAM 2: 7)
    extra_rounds: int = 2  # rounds with no new click, only the fed-back mask (SAM: 2)
    feed_back_mask: bool = True  # previous round's best low-res logits as the mask prompt
    round_loss: str = "mean"  # mean | sum | last: how the rounds' losses combine


@dataclass
class OptimConfig:
    lr: float = 8e-4  # SAM, ViT-B
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.1
    encoder_lr: Optional[float] = None  # separate lr for the image encoder; None = lr
    layer_decay: float = 1.0  # layer-wise lr decay of the ViT encoder (SAM: 0.6 ViT-B, 0.8 ViT-L/H)
    grad_clip: Optional[float] = None  # max L2 norm of all gradients; None = no clipping


@dataclass
class TrainConfig:
    steps: int = 90000
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA when supported, else fp32)
    seed: int = 0
    grad_accum: int = 1  # batches whose gradients add up before each optimiser step
    loss_resolution: str = "low_res"  # low_res (256 for 1024 inputs) | input (logits upsampled)
    output_dir: str = "outputs"
    run_name: Optional[str] = None  # folder under output_dir; None = a timestamp
    resume: Optional[str] = None  # None | auto (latest checkpoint of this run) | a checkpoint path
    val_every: int = 1000
    checkpoint_every: int = 1000
    max_nonfinite_steps: int = 10  # stop after this many non-finite losses in a row (each is skipped)
    grad_analysis_every: int = 0  # log per-term gradient norms at grad_analysis_layer every k steps (0: off)
    grad_analysis_layer: str = "mask_decoder.transformer.norm_final_attn"  # shared by every SAM output head
    progress: bool = True
    threads: Optional[int] = None  # intra-op CPU threads set by tools/train.py; None = the CPUs this process may use


@dataclass
class EverythingConfig:
    """"Segment everything" (automatic masks) evaluation: tools/evaluate.py --mode everything, and
    during training every ``every`` steps (logged as val/everything_<metric> at the best pair)."""

    every: int = 0  # steps between evaluations during training (0: only with tools/evaluate.py)
    max_images: int = 10
    iou_grid: list[float] = field(default_factory=lambda: [0.7, 0.76, 0.82, 0.88, 0.94])
    stability_grid: list[float] = field(default_factory=lambda: [0.8, 0.85, 0.9, 0.95, 0.98])
    best_metric: str = "msa"  # ap | ap50 | ar100 | ar1000 | msa: picks the pair reported
    points_per_side: int = 32  # SAM's automatic-mask recipe
    points_per_batch: int = 64
    crop_n_layers: int = 0


@dataclass
class EvalConfig:
    max_images: int = 50
    max_masks: int = 16  # per image
    clicks: int = 5  # also report mIoU after this many correction clicks (0: single prompts only)
    seed: int = 1234
    best_metric: str = "val/miou_point"  # checkpoints/best.pt keeps the best value of this metric
    best_mode: str = "max"  # max | min
    everything: EverythingConfig = field(default_factory=EverythingConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or the embedded store in the project folder
    experiment: str = "samft"
    run_name: Optional[str] = None
    log_every: int = 10
    log_checkpoint: bool = False
    system_metrics: bool = True
    overlays: int = 4


def _spec(**kwargs: Any) -> Any:
    return field(default_factory=lambda: dict(kwargs))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: dict[str, Any] = _spec(name="sam")
    weighting: dict[str, Any] = _spec(name="fixed")
    schedule: dict[str, Any] = _spec(name="constant", value=1.0)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _fraction_of(total: Any, fraction: Any) -> int:
    """``${frac:${train.steps},0.6667}``: a step count as a fraction of another, rounded."""
    return int(round(float(total) * float(fraction)))


# OmegaConf 2.4 renamed register_new_resolver; support both.
_register = getattr(OmegaConf, "register_resolver", OmegaConf.register_new_resolver)
_register("frac", _fraction_of, replace=True)

_BASE_KEY = "base"


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load, merge and validate a config.

    Args:
        path: YAML file; it may name a parent with ``base: other.yaml`` (relative to itself).
        overrides: ``key=value`` strings, e.g. ``["train.steps=100", "loss.name=sam"]``.

    Returns:
        A read-only DictConfig following :class:`Config`, interpolations resolved.

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type, a value out of its range or
            not among its choices, an unknown plugin or plugin option (also in nested specs such as
            ``loss.extra_terms``), or a schedule that cannot be built. The message is one line that
            starts with the key as typed (``train.steps=-5: ...``) and says what to use.
    """
    merged = OmegaConf.structured(Config)
    for layer_path, layer in _read_chain(Path(path)):
        merged = _merge(merged, layer, f"file {layer_path}")
    merged = _merge(merged, _parse_overrides(overrides), "command-line overrides")
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Cannot resolve an interpolation in the config: {exc}") from None
    values = to_dict(merged)
    # Cheapest first: a bad number or choice is reported before the plugin registries import torch.
    _check_values(values)
    _check_relations(values)
    _check_plugins(values)
    _check_best_metric(values)
    _check_augment(values)
    _check_datasets(values)
    OmegaConf.set_readonly(merged, True)
    return merged


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, as saved with every run."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain nested dicts and lists."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _read_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    path = path.expanduser().resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"Config inheritance loops: {chain}. Remove one of the 'base:' keys.")
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} does not exist. Pass an existing YAML file, e.g. configs/sam_ft.yaml."
        )
    try:
        layer = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors come in several exception types
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"Config file {path} must hold a mapping of sections, not a list.")
    base = layer.pop(_BASE_KEY, None)
    if base is None:
        return [(path, layer)]
    return [*_read_chain(path.parent / str(base), (*seen, path)), (path, layer)]


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"Override {item!r} is not of the form key=value (e.g. train.steps=100)."
            )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Cannot parse the command-line overrides: {exc}") from None


def _merge(base: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        _drop_renamed_specs(base, layer)
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except ConfigKeyError as exc:
        raise ConfigError(_unknown_key_message(exc, source)) from None
    except ValidationError as exc:
        raise ConfigError(
            f"Wrong type in {source}: key '{exc.full_key}' got {exc.value!r}. {exc.msg.splitlines()[0]}"
        ) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Cannot merge {source}: {exc}") from None


def _drop_renamed_specs(base: Any, layer: Any) -> None:
    """A plugin spec whose ``name`` a layer changes (or sets where there was none, as a schedule spec
    replacing per-term weights) starts from scratch: the old plugin's options would not fit the new
    one. Specs with the same name (or none) are deep-merged as usual."""
    if not isinstance(base, DictConfig) or not isinstance(layer, DictConfig):
        return
    for key in layer.keys():
        old, new = base.get(key), layer.get(key)
        if not isinstance(old, DictConfig) or not isinstance(new, DictConfig):
            continue
        is_spec = OmegaConf.get_type(old) is dict  # plugin specs are free-form dicts, sections typed
        if is_spec and "name" in new and old.get("name") != new.name:  # e.g. per-term weights -> one spec
            with open_dict(base):
                base[key] = {}
        else:
            _drop_renamed_specs(old, new)


# Names other frameworks use for samft's keys. Spelling-based suggestions cannot link
# `learning_rate` to `lr`, so the meaning is matched here; an alias is only suggested when its
# target is a key of the section the user wrote (`optim.learning_rate` -> `lr`).
ALIASES = {
    "learning_rate": "lr", "base_lr": "lr", "lr_rate": "lr",
    "wd": "weight_decay", "decay": "weight_decay",
    "max_steps": "steps", "num_steps": "steps", "iterations": "steps", "iters": "steps",
    "max_iters": "steps", "total_steps": "steps", "epochs": "steps", "num_epochs": "steps",
    "bs": "batch_size", "batch": "batch_size", "per_device_batch_size": "batch_size",
    "workers": "num_workers", "num_worker": "num_workers",
    "ckpt": "checkpoint", "weights": "checkpoint", "pretrained": "checkpoint", "resume_from": "resume",
    "arch": "name", "model_type": "name", "backbone": "name", "type": "name",
    "img_size": "image_size", "input_size": "image_size", "resolution": "image_size",
    "amp": "precision", "mixed_precision": "precision", "fp16": "precision", "dtype": "precision",
    "clip_grad": "grad_clip", "max_grad_norm": "grad_clip", "gradient_clipping": "grad_clip",
    "clip_grad_norm": "grad_clip",
    "accumulate_grad_batches": "grad_accum", "gradient_accumulation_steps": "grad_accum",
    "eval_every": "val_every", "val_interval": "val_every", "validate_every": "val_every",
    "save_every": "checkpoint_every", "ckpt_every": "checkpoint_every",
    "out_dir": "output_dir", "output": "output_dir", "work_dir": "output_dir",
    "name_of_run": "run_name", "experiment_name": "experiment", "tracking_uri": "uri",
    "log_interval": "log_every", "num_threads": "threads", "omp_num_threads": "threads",
    "clicks_per_mask": "correction_clicks", "num_clicks": "correction_clicks",
}


def _suggestion(key: str, known: list[str]) -> str:
    """" Did you mean ...?" by meaning (ALIASES) first, then by spelling."""
    alias = ALIASES.get(key.lower())
    if alias in known and alias != key:
        return f" Did you mean {alias!r}?"
    return did_you_mean(key, known)


def _unknown_key_message(exc: ConfigKeyError, source: str) -> str:
    full_key = str(exc.full_key or exc.key)
    parent, _, key = full_key.rpartition(".")
    known = _known_keys(parent)
    hint = _suggestion(key, known) if known else ""
    where = f"section '{parent}'" if parent else "the top level"
    return (
        f"Unknown config key '{full_key}' in {source}.{hint} "
        f"Keys of {where}: {', '.join(known)}."
    )


def _known_keys(dotted_parent: str) -> list[str]:
    """Field names of the schema section at ``dotted_parent`` ("" = top level); [] for free-form dicts."""
    schema: Any = Config
    for part in filter(None, dotted_parent.split(".")):
        schema = get_type_hints(schema).get(part)
        if not is_dataclass(schema):
            return []
    return [f.name for f in fields(schema)]


# -- values ------------------------------------------------------------------------------------
# Every value of the schema is checked here when a config loads, so that a bad value ends in one
# line naming the key (``train.steps=-5: use a whole number >= 1 ...``) before torch, data or a run
# folder. Paths are left to the code that opens them; plugin specs are checked by _check_plugins.
# The consumers keep these choices too (tests/test_config_values.py checks that both agree).

MODEL_NAMES = tuple(ARCHS)  # built-in models (samft.registry.MODELS); plugin models are added at check time
OBJECT_SCORE_LOSSES = ("sam2", "object_score")  # losses that need the decoder's object-score logits (SAM 2)
ATTENTIONS = ("sdpa", "eager")  # samft.models.attention
ON_ERROR = ("skip", "raise")  # samft.data.errors
PROMPT_MODES = ("point", "box", "point_or_box")  # samft.prompting
ROUND_LOSSES = ("mean", "sum", "last")  # samft.engine.interactive
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # samft.engine.runtime
LOSS_RESOLUTIONS = ("low_res", "input")  # samft.engine.step
BEST_MODES = ("max", "min")
EVERYTHING_METRICS = ("ap", "ap50", "ar100", "ar1000", "msa")  # samft.engine.everything
DEVICES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Rule:
    """What one config value must be.

    Attributes:
        ok: True for an acceptable value (never called with None when ``null`` is set).
        expect: What to use, completing "use ...", e.g. ``"a whole number >= 1"``.
        note: What the value means, shown in parentheses.
        null: When set, null is allowed too and this says what it means (``"for no clipping"``).
        choices: The allowed values of a fixed choice (a close one is suggested).
    """

    ok: Callable[[Any], bool]
    expect: str
    note: str = ""
    null: str = ""
    choices: tuple[str, ...] = ()

    def problem(self, key: str, value: Any) -> str | None:
        """The one-line message for ``key=value``, or None when the value is acceptable."""
        if (value is None and self.null) or (value is not None and self.ok(value)):
            return None
        use = f"use {self.expect}" + (f", or null {self.null}" if self.null else "")
        note = f" ({self.note})" if self.note else ""
        hint = did_you_mean(str(value), list(self.choices)) if self.choices and isinstance(value, str) else ""
        return f"{key}={shown(value)}: {use}{note}.{hint}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(low: int, note: str = "", null: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"a whole number >= {low}", note, null)


def _in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: (_is_real(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))


def _interval(low: float, high: float, low_open: bool = False, high_open: bool = False, note: str = "",
              null: str = "") -> Rule:
    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(_in(low, high, low_open, high_open), f"a number in {span}", note, null)


def _positive(note: str = "", null: str = "") -> Rule:
    return Rule(lambda v: _is_real(v) and v > 0, "a number > 0", note, null)


def _non_negative(note: str = "") -> Rule:
    return Rule(lambda v: _is_real(v) and v >= 0, "a number >= 0", note)


def _choice(choices: tuple[str, ...], note: str = "") -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(choices), note, choices=choices)


def _text(expect: str = "a non-empty text", note: str = "", null: str = "") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v.strip() != "", expect, note, null)


def _folder_name(v: Any) -> bool:
    return isinstance(v, str) and v.strip() == v and v not in ("", ".", "..") and not set(v) & set("/\\")


def _grid(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_in(0.0, 1.0)(t) for t in v)


def _model_name_rule() -> Rule:
    """Built-in models and those plugins add (entry points of ``samft.models``, listed without importing)."""
    names = MODEL_NAMES + tuple(n for n in MODELS.plugin_names() if n not in MODEL_NAMES)
    return Rule(lambda v: v in names, "one of " + ", ".join(names),
                "the model: vit_tiny a small CPU SAM, vit_t MobileSAM, hq_* HQ-SAM, sam2_1_hiera_* SAM 2.1",
                choices=names)


SEED = Rule(lambda v: _is_int(v) and 0 <= v < 2**62, "a whole number >= 0 and < 2**62",
            "torch's generators take a 64-bit seed, offset by the rank")

# Every key of the schema that is not a bool has a rule here or in NOT_RULED (tests enforce it).
RULES: dict[str, Rule] = {
    "model.name": _model_name_rule(),
    "model.attention": _choice(ATTENTIONS, "the image encoder's attention; sdpa is exact and stores no "
                               "[N, N] attention matrix, eager is segment_anything's own"),
    "data.batch_size": _count(1, "images per step and rank"),
    "data.max_masks": _count(1, "masks per image and step"),
    "data.min_area": _count(0, "masks with fewer pixels are dropped"),
    "data.max_area_frac": _interval(0, 1, low_open=True, note="masks covering a larger share of the image are dropped"),
    "data.min_predicted_iou": _interval(0, 1, note="masks whose predicted_iou is lower are dropped"),
    "data.min_stability": _interval(0, 1, note="masks whose stability_score is lower are dropped"),
    "data.num_workers": _count(0, "data loader processes; 0 loads in the training process"),
    "data.on_error": _choice(ON_ERROR, "skip: log, count and leave a bad file out; raise: stop"),
    "data.dist_clip": _positive("a share of the input side", null="for unclipped maps"),
    "data.crop.multiple": Rule(lambda v: _is_real(v) and v >= 1, "a number >= 1",
                               "the crop side in model input sides; larger crops are resized to the input"),
    "data.crop.mask_prob": _interval(0, 1, note="the probability that a training crop is placed around a mask"),
    "data.crop.overlap": _interval(0, 1, high_open=True, note="the share of the tile side evaluation tiles overlap"),
    "prompts.mode": _choice(PROMPT_MODES, "the first prompt of every mask"),
    "prompts.box_prob": _interval(0, 1, note="the probability of a box in point_or_box mode"),
    "prompts.correction_clicks": _count(0, "rounds adding one click each"),
    "prompts.extra_rounds": _count(0, "rounds with only the fed-back mask"),
    "prompts.round_loss": _choice(ROUND_LOSSES, "how the rounds' losses combine"),
    "optim.lr": _positive("the base learning rate, e.g. 8e-4"),
    "optim.betas": Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(_in(0, 1, high_open=True)(b) for b in v),
                        "two numbers in [0, 1), e.g. [0.9, 0.999]", "AdamW's betas"),
    "optim.weight_decay": _non_negative("AdamW's decoupled weight decay"),
    "optim.encoder_lr": _positive("to keep the encoder fixed, set model.freeze_image_encoder=true instead",
                                  null="for optim.lr"),
    "optim.layer_decay": _interval(0, 1, low_open=True, note="1: no layer-wise decay; SAM: 0.6 ViT-B, 0.8 ViT-L/H"),
    "optim.grad_clip": _positive("the max L2 norm of all gradients", null="for no clipping"),
    "train.steps": _count(1, "optimiser steps to train"),
    "train.device": Rule(lambda v: isinstance(v, str) and DEVICES.fullmatch(v) is not None,
                         "auto, cpu, cuda, cuda:N or mps", choices=("auto", "cpu", "cuda", "mps")),
    "train.precision": _choice(PRECISIONS, "auto: bf16 on CUDA when supported, else fp32"),
    "train.seed": SEED,
    "train.grad_accum": _count(1, "batches per optimiser step; 1 = no accumulation"),
    "train.loss_resolution": _choice(LOSS_RESOLUTIONS, "low_res: the decoder's logits; input: upsampled"),
    "train.run_name": Rule(_folder_name, "a folder name without '/'", null="for <config name>-<time>"),
    "train.val_every": _count(1, "steps between validations"),
    "train.checkpoint_every": _count(1, "steps between checkpoints"),
    "train.max_nonfinite_steps": _count(1, "non-finite losses in a row that stop the run"),
    "train.grad_analysis_every": _count(0, "0: off"),
    "train.grad_analysis_layer": _text("a module name, e.g. mask_decoder.transformer.norm_final_attn"),
    "train.threads": _count(1, "intra-op CPU threads", null="to choose from the usable CPUs"),
    "eval.max_images": _count(1, "validation images"),
    "eval.max_masks": _count(1, "masks per validation image"),
    "eval.clicks": _count(0, "correction clicks of the click metric; 0: single prompts only"),
    "eval.seed": SEED,
    "eval.best_mode": _choice(BEST_MODES, "whether a larger or a smaller eval.best_metric is better"),
    "eval.everything.every": _count(0, "steps between evaluations during training; 0: only with tools/evaluate.py"),
    "eval.everything.max_images": _count(1),
    "eval.everything.iou_grid": Rule(_grid, "one or more thresholds in [0, 1]"),
    "eval.everything.stability_grid": Rule(_grid, "one or more thresholds in [0, 1]"),
    "eval.everything.best_metric": _choice(EVERYTHING_METRICS, "picks the threshold pair reported"),
    "eval.everything.points_per_side": _count(1),
    "eval.everything.points_per_batch": _count(1),
    "eval.everything.crop_n_layers": _count(0),
    "tracking.experiment": _text("a non-empty name"),
    "tracking.run_name": _text("a non-empty name", null="for the run folder's name"),
    "tracking.log_every": _count(1, "steps between logged training metrics"),
    "tracking.overlays": _count(0, "validation images drawn with their masks"),
}

# Keys without a rule above: paths and URIs (checked where they are opened) and values checked
# with the others they depend on (_check_relations, _check_best_metric, _check_augment).
NOT_RULED = frozenset({
    "model.peft",  # a plugin spec: checked by _check_plugins
    "model.checkpoint", "model.embedding_cache", "model.image_size", "data.train", "data.val", "data.augment",
    "data.dist_map_cache", "train.output_dir", "train.resume", "eval.best_metric", "tracking.uri",
})


def shown(value: Any) -> str:
    """``value`` written as it would be typed in an override (``null``, ``true``, ``[0.9, 0.999]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        plain = value and value.strip() == value and not set(value) & set(",[]{}:='\"")
        return value if plain else repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


def _value(values: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def _check_values(values: Mapping[str, Any]) -> None:
    for key, rule in RULES.items():
        problem = rule.problem(key, _value(values, key))
        if problem:
            raise ConfigError(problem)


def _check_relations(values: Mapping[str, Any]) -> None:
    """Values that are only wrong together with others."""
    m, d, t = values["model"], values["data"], values["train"]
    size, arch = m["image_size"], ARCHS.get(m["name"])  # a plugin model checks its own size when it is built
    multiple = arch.size_multiple if arch is not None else PATCH_SIZE
    if not _is_int(size) or size < multiple or size % multiple:
        raise ConfigError(f"model.image_size={shown(size)}: use a multiple of {multiple} "
                          f"(the input side after resize and pad; e.g. {(arch and arch.fixed_image_size) or 256}).")
    if arch is not None and arch.fixed_image_size is not None and size != arch.fixed_image_size:
        raise ConfigError(
            f"model.image_size={size}: {m['name']} needs {arch.fixed_image_size} (its positional embeddings and "
            f"released checkpoints are for it). Use model.image_size={arch.fixed_image_size} or model.name=vit_tiny.")
    object_losses = [n for n in _loss_names(values["loss"]) if n in OBJECT_SCORE_LOSSES]
    if object_losses and arch is not None and arch.decoder != "sam2":
        raise ConfigError(f"loss: {object_losses[0]} trains SAM 2's object-score head, which {m['name']} has not; "
                          "use loss.name=sam without it (or a SAM 2 model, model.name=sam2_1_hiera_*).")
    if arch is not None and arch.encoder == "hiera" and values["eval"]["everything"]["every"]:
        raise ConfigError(f"eval.everything.every={values['eval']['everything']['every']}: segment-everything runs "
                          f"segment_anything's mask generator, which cannot run {m['name']} (SAM 2.1); set it to 0.")
    # HQ-SAM trains only its additions, all inside the mask decoder; the others train in every part.
    trains_in = ("mask_decoder",) if arch is not None and arch.decoder == "hq" else PARTS
    if arch is not None and m["peft"] is None and all(m[f"freeze_{part}"] for part in trains_in):
        raise ConfigError(f"model.freeze_{'=true, model.freeze_'.join(trains_in)}=true: nothing of {m['name']} "
                          f"would train; set model.freeze_{trains_in[-1]}=false (or add model.peft).")
    if t["precision"] == "fp16" and t["device"] == "cpu":
        raise ConfigError("train.precision=fp16: fp16 needs a GPU, and train.device=cpu; "
                          "use train.precision=bf16 or fp32 on a CPU.")
    if m["embedding_cache"] and not m["freeze_image_encoder"]:
        raise ConfigError(f"model.embedding_cache={shown(m['embedding_cache'])}: the cache needs "
                          "model.freeze_image_encoder=true (a trained encoder changes its embeddings every step).")
    if m["embedding_cache"] and d["crop"]["enabled"]:
        raise ConfigError(f"model.embedding_cache={shown(m['embedding_cache'])}: the cache needs "
                          "data.crop.enabled=false (random crops differ every epoch, so their embeddings cannot "
                          "be reused).")
    if m["embedding_cache"] and d["augment"]:
        raise ConfigError(f"model.embedding_cache={shown(m['embedding_cache'])}: the cache needs data.augment=[] "
                          "(augmented images differ every epoch, so their embeddings cannot be reused).")


def _validation_keys(values: Mapping[str, Any]) -> list[str]:
    """The metrics validation logs with this config (samft.engine.evaluate; samft.metrics declares them)."""
    from samft.metrics import VALIDATION_METRICS

    e = values["eval"]
    names = [k for k, better in VALIDATION_METRICS.items() if better and "*" not in k and "everything" not in k]
    names += ["baseline_miou_point", "baseline_miou_box"]
    if e["clicks"]:
        names.append(f"miou_click{e['clicks']}")
    if e["everything"]["every"]:
        names += [f"everything_{m}" for m in EVERYTHING_METRICS]
    return [f"val/{k}" for k in names]


def _val_labels(values: Mapping[str, Any]) -> list[str]:
    """The labels of the validation datasets when there are several (their metrics: val/<label>/<metric>)."""
    val = values["data"]["val"]
    if not isinstance(val, list) or len(val) < 2:
        return []
    from samft.data.specs import dataset_specs

    try:
        return [s["label"] for s in dataset_specs(val, "data.val")]
    except ValueError:
        return []  # reported by _check_datasets


def _check_best_metric(values: Mapping[str, Any]) -> None:
    from samft.metrics import VALIDATION_METRICS, direction

    e = values["eval"]
    key, known = e["best_metric"], _validation_keys(values)
    parts = str(key).split("/")
    if len(parts) == 3 and parts[1] in _val_labels(values):  # one validation dataset's metric
        key = f"val/{parts[2]}"
    if key not in known:
        name = str(key).removeprefix("val/")
        clicks = re.fullmatch(r"miou_click(\d+)", name)
        if str(key).startswith("val/") and name in VALIDATION_METRICS and VALIDATION_METRICS[name] is None:
            why = f"{key} has no better end (a count or a setting); use a score"
        elif clicks:
            now = f"val/miou_click{e['clicks']}" if e["clicks"] else "no click metric (eval.clicks=0)"
            why = f"validation logs {now} with this config; set eval.clicks={clicks[1]} as well, or use another metric"
        elif name.removeprefix("everything_") in EVERYTHING_METRICS and not e["everything"]["every"]:
            why = ("validation logs no 'segment everything' metric with this config (eval.everything.every=0); "
                   "set eval.everything.every=K (steps between those evaluations), or use another metric")
        else:
            why = "not a metric validation logs with this config; use one of them"
        raise ConfigError(f"eval.best_metric={shown(key)}: {why}. Metrics: {', '.join(known)}."
                          f"{did_you_mean(str(key), known)}")
    mode = "max" if direction(key) == "higher" else "min"
    if e["best_mode"] != mode:
        raise ConfigError(f"eval.best_mode={e['best_mode']}: {key} is better {direction(key)}, "
                          f"so use eval.best_mode={mode} (or pick another eval.best_metric).")


def _check_augment(values: Mapping[str, Any]) -> None:
    specs = values["data"]["augment"]
    if not specs:
        return
    from samft.data.errors import DataError
    from samft.data.transforms import build_augmentation  # albumentations: only for configs that augment

    try:
        build_augmentation(specs, where="data.augment")
    except DataError as exc:
        raise ConfigError(str(exc)) from None


# -- datasets -------------------------------------------------------------------------------------
def _check_datasets(values: Mapping[str, Any]) -> None:
    """``data.train`` and ``data.val``: known readers, known and complete options, existing paths, weights
    and labels (see :mod:`samft.data.specs`). A plain folder (the original form) is checked when opened."""
    from samft.data.specs import dataset_specs
    from samft.registry import DATASETS

    for key in ("data.train", "data.val"):
        value = _value(values, key)
        if value is None or isinstance(value, str):
            continue
        try:
            specs = dataset_specs(value, key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        labels: set[str] = set()
        for spec in specs:
            _check_dataset_spec(spec, DATASETS, key)
            label = spec["label"]
            if not isinstance(label, str) or not _folder_name(label) or label in labels:
                why = "is used twice" if label in labels else "is not a plain name"
                raise ConfigError(f"{spec['where']}.label={shown(label)}: the label {why}; give every dataset "
                                  "its own name without '/' (it is logged as val/<label>/<metric>).")
            labels.add(label)
    val = values["data"]["val"]
    if values["eval"]["everything"]["every"] and val is not None and not isinstance(val, str):
        raise ConfigError(f"eval.everything.every={values['eval']['everything']['every']}: 'segment everything' "
                          "validation reads an SA-1B folder; set data.val=FOLDER or eval.everything.every=0.")


def _check_dataset_spec(spec: dict[str, Any], registry: Registry, key: str) -> None:
    from samft.data.specs import reader_options

    at = spec["where"]
    try:
        cls = registry.get(spec["name"])
    except RegistryError as exc:
        raise ConfigError(f"{at}.name={shown(spec['name'])}: {exc}") from None
    weight = spec["weight"]
    if not _is_real(weight) or weight <= 0:
        raise ConfigError(f"{at}.weight={shown(weight)}: use a number > 0 (the dataset's sampling weight in the "
                          "training mixture).")
    if key == "data.val" and weight != 1.0:
        raise ConfigError(f"{at}.weight={shown(weight)}: validation scores every dataset; weights are for "
                          "data.train.")
    names, required = reader_options(cls)
    for option, value in spec["options"].items():
        if option not in names:
            raise ConfigError(f"{at}.{option}={shown(value)}: reader {spec['name']!r} has no option {option!r}."
                              f"{did_you_mean(option, names)} Its options: {', '.join(names)}, weight, label.")
    for option, choices in getattr(cls, "OPTION_CHOICES", {}).items():
        if option in spec["options"] and spec["options"][option] not in choices:
            value = spec["options"][option]
            raise ConfigError(f"{at}.{option}={shown(value)}: use one of {', '.join(choices)}."
                              f"{did_you_mean(str(value), list(choices))}")
    missing = [n for n in required if n not in spec["options"]]
    if missing:
        raise ConfigError(f"{at}: reader {spec['name']!r} needs {', '.join(missing)} (e.g. {at}.{missing[0]}=...). "
                          f"Its options: {', '.join(names)}, weight, label.")
    for option in registry.info(spec["name"]).get("paths", ()):
        value = spec["options"].get(option)
        for entry in value if isinstance(value, list) else [value] if value is not None else []:
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigError(f"{at}.{option}={shown(value)}: use a path.")
            pattern = any(c in entry for c in "*?[")
            if not pattern and not Path(entry).expanduser().exists():
                raise ConfigError(f"{at}.{option}={shown(entry)}: {entry} does not exist (paths are relative to the "
                                  "folder you run from).")


# -- plugin specs --------------------------------------------------------------------------------
PLUGIN_SLOTS = {"loss": LOSSES, "weighting": WEIGHTINGS, "schedule": SCHEDULES}

# Options of built-in plugins that hold further specs, checked like the slots (name, options; a
# schedule also by building it): (registry kind, plugin) -> {option: shape}, the shapes being
#   loss       a loss spec (a name or {name: ..., **options})
#   loss_terms {term: loss spec}, terms named apart from the sam objective's own
#   combined   {term: loss spec, its name defaulting to the term, with a weight}
#   schedule   a number or a schedule spec
#   weights    a number or schedule spec for every term, or {term: number or schedule spec}
NESTED: dict[tuple[str, str], dict[str, str]] = {
    ("losses", "sam"): {"extra_terms": "loss_terms"},
    ("losses", "combined"): {"terms": "combined"},
    ("losses", "multi_granularity"): {"loss": "loss"},
    ("losses", "valid_pixel_weighted"): {"base": "loss"},
    ("losses", "weighted"): {"base": "loss"},
    ("weightings", "fixed"): {"weights": "weights"},
    ("schedules", "warmup"): {"after": "schedule"},
}


def _check_plugins(values: Mapping[str, Any]) -> None:
    for key, registry in PLUGIN_SLOTS.items():
        _check_spec(values[key], registry, key)
    _check_peft(values["model"])
    from samft.losses import declared_terms

    weighting = dict(values["weighting"])
    _build(WEIGHTINGS, str(weighting.pop("name")), weighting, "weighting", terms=declared_terms(values["loss"]))


def _check_peft(model: Mapping[str, Any]) -> None:
    """``model.peft``: a known method with valid options that fit the model, and none that adapts the
    image encoder together with the embedding cache (an adapted encoder changes its embeddings)."""
    spec = model["peft"]
    if spec is None:
        return
    _check_spec(spec, PEFT, "model.peft")
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    method = PEFT.build(options)
    arch = ARCHS.get(model["name"])  # None: a plugin model, checked against its entry when it is built
    if arch is not None and arch.encoder == "hiera" and "image_encoder" in method.adapts:
        _check_hiera_peft(spec, options, method, model["name"])
    elif arch is not None and arch.encoder != "vit" and "image_encoder" in method.adapts and method.needs_vit_blocks:
        raise ConfigError(f"model.peft={shown(spec)}: {model['name']}'s image encoder ({arch.encoder}) has no "
                          "ViT blocks for it; use lora (targets q, k, v, qkv or decoder), bias, norm or attention, "
                          "or choose a ViT model (vit_b, vit_l, vit_h, vit_tiny, hq_*).")
    try:
        if arch is not None:
            method.check(arch.depth, PARTS)  # every built-in has SAM's parts
    except OptionError as exc:
        raise ConfigError(f"model.peft.{exc.option}={shown(options.get(exc.option))}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"model.peft ({model['name']}): {exc}.") from None
    if model["embedding_cache"] and "image_encoder" in method.adapts:
        raise ConfigError(f"model.embedding_cache={shown(model['embedding_cache'])}: model.peft={shown(spec)} adapts "
                          "the image encoder, so its embeddings change every step; adapt only the decoder "
                          "(e.g. model.peft={name: lora, targets: [decoder]}) or drop the cache.")


# PEFT on SAM 2.1's Hiera: the methods whose hooks fit its blocks (attention qkv/proj Linears; MLPs differ from
# segment_anything's, and its parameter names are trunk.blocks.*, which the block-selecting methods do not read).
HIERA_PEFT = {"lora": ("q", "k", "v", "qkv", "proj", "decoder"), "bias": (), "norm": ()}


def _loss_names(spec: Any) -> list[str]:
    """Every loss a ``loss`` spec names, those nested in ``extra_terms`` and ``terms`` (``combined``) included."""
    if isinstance(spec, str):
        return [spec]
    if not isinstance(spec, Mapping):
        return []
    names = [str(spec["name"])] if "name" in spec else []
    for key in ("extra_terms", "terms"):
        if isinstance(spec.get(key), Mapping):
            names += [n for sub in spec[key].values() for n in _loss_names(sub)]
    return names


def _check_hiera_peft(spec: Any, options: dict[str, Any], method: Any, name: str) -> None:
    kind = options["name"]
    targets = [t for t in getattr(method, "targets", ()) if t not in HIERA_PEFT.get(kind, ())]
    if kind not in HIERA_PEFT or targets or (kind != "lora" and getattr(method, "blocks", None) is not None):
        raise ConfigError(f"model.peft={shown(spec)}: on {name} (SAM 2.1's Hiera) use lora with targets from "
                          f"{', '.join(HIERA_PEFT['lora'])}, or bias / norm without blocks; or adapt only the "
                          "decoder (model.peft={name: lora, targets: [decoder]}).")


def _check_spec(spec: Any, registry: Registry, path: str, default_name: str | None = None) -> None:
    """Check one plugin spec at ``path``: a known name, known options, its nested specs and, for a
    schedule, its values (schedules are cheap to build and have no other inputs)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    known = f"Known {registry.kind}: {', '.join(registry.names())}."
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}={shown(spec)}: use a mapping {{name: ..., **options}} naming a {registry.item}. "
                          f"{known}")
    given, spec = spec, dict(spec)
    name = spec.pop("name", default_name)
    if name is None:
        raise ConfigError(f"{path}={shown(given)}: add the {registry.item}'s name ({path}.name=...). {known}")
    try:
        obj = registry.get(str(name))
    except RegistryError as exc:
        where = f"{path}.name={shown(name)}" if default_name is None or name != default_name else path
        raise ConfigError(f"{where}: {exc}") from None
    for option, value in spec.items():
        try:
            check_options(obj, {option: value}, f"{registry.item} {name!r}")
        except RegistryError as exc:
            raise ConfigError(f"{path}.{option}={shown(value)}: {exc}") from None
    for option, shape in NESTED.get((registry.kind, str(name)), {}).items():
        if spec.get(option) is not None:
            _check_nested(spec[option], shape, f"{path}.{option}")
    if registry is SCHEDULES:
        _check_required(obj, str(name), spec, path)
    if registry is not WEIGHTINGS:  # a weighting needs the loss's terms: _check_plugins builds it
        _build(registry, str(name), spec, path)


def _check_nested(value: Any, shape: str, path: str) -> None:
    if shape == "loss":
        _check_spec(value, LOSSES, path)
    elif shape == "schedule":
        _check_schedule_value(value, path)
    elif shape == "weights":
        if isinstance(value, Mapping) and "name" not in value:
            for term, each in value.items():
                _check_schedule_value(each, f"{path}.{term}")
        else:
            _check_schedule_value(value, path)
    else:  # a mapping of named terms
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}={shown(value)}: use a mapping {{term: loss spec}}, "
                              f"e.g. {path}={{boundary: {{name: boundary}}}}.")
        from samft.losses.sam import OWN_KEYS  # the registries are loaded by now (torch imported)

        for term, spec in value.items():
            reserved = term in OWN_KEYS if shape == "loss_terms" else term == "loss" or "/" in str(term)
            if reserved:
                why = (f"the sam objective's own terms are {', '.join(OWN_KEYS)}" if shape == "loss_terms"
                       else "'loss' is the total and '/' separates a term's parts")
                raise ConfigError(f"{path}.{term}: the term name {term!r} is taken ({why}); rename the term.")
            if shape == "combined" and isinstance(spec, Mapping):
                spec = dict(spec)
                weight = spec.pop("weight", 1.0)
                if not _is_real(weight):
                    raise ConfigError(f"{path}.{term}.weight={shown(weight)}: use a finite number.")
            _check_spec(spec, LOSSES, f"{path}.{term}", default_name=str(term) if shape == "combined" else None)


def _check_schedule_value(value: Any, path: str) -> None:
    if isinstance(value, Mapping):
        _check_spec(value, SCHEDULES, path)
    elif not _is_real(value):
        raise ConfigError(f"{path}={shown(value)}: use a finite number or a schedule spec such as "
                          "{name: linear, start: 0.0, end: 1.0, total_steps: 1000}.")


def _check_required(obj: Any, name: str, options: Mapping[str, Any], path: str) -> None:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # no signature: building it will tell
        return
    missing = [p for p, param in params.items() if param.default is param.empty
               and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and p not in options]
    if missing:
        raise ConfigError(f"{path}: schedule {name!r} needs {', '.join(missing)} (e.g. {path}.{missing[0]}=...). "
                          f"Its options: {', '.join(params)}.")


def _build(registry: Registry, name: str, options: Mapping[str, Any], path: str, **extra: Any) -> None:
    """Build the plugin once, as the trainer will: its constructor checks the option values. Losses
    and schedules are cheap to build and pure; the built object is dropped."""
    try:
        registry.build({"name": name, **options}, **extra)
    except OptionError as exc:  # the plugin names the option: point at the key the user typed
        if exc.option not in options:  # an option the caller supplies (terms) or a nested plugin's
            raise ConfigError(f"{path} ({registry.item} {name!r}): {exc}") from None
        key, value = f"{path}.{exc.option}", options[exc.option]
        if exc.entry is not None and isinstance(value, Mapping) and exc.entry in value:
            key, value = f"{key}.{exc.entry}", value[exc.entry]
        raise ConfigError(f"{key}={shown(value)}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} ({registry.item} {name!r}): {exc}") from None
