"""Typed, validated configuration: YAML files with inheritance plus ``key=value`` overrides.

``load("configs/demo.yaml", ["train.steps=100"])`` reads the file, follows its ``base:`` chain
(paths relative to the file that names them), merges it onto the typed schema below, applies
the overrides and checks every plugin spec against its registry. Unknown keys and wrong types
are rejected with the full dotted key and a suggestion, before anything heavy starts.

Plugin slots (``loss``, ``weighting``, ``schedule``) all have one shape, ``{name: ..., **options}``;
their options are checked against the registered callable's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, get_type_hints

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from samft.registry import LOSSES, SCHEDULES, WEIGHTINGS, RegistryError, check_options, did_you_mean


class ConfigError(ValueError):
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
    embedding_cache: Optional[str] = None  # folder caching image embeddings (frozen encoder, no augment)


@dataclass
class DataConfig:
    train: str = "data/sa1b/train"  # folder of <id>.jpg + <id>.json pairs
    val: Optional[str] = None  # held-out folder for validation; None = no validation
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

PLUGIN_SLOTS = {"loss": LOSSES, "weighting": WEIGHTINGS, "schedule": SCHEDULES}
_BASE_KEY = "base"


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load, merge and validate a config.

    Args:
        path: YAML file; it may name a parent with ``base: other.yaml`` (relative to itself).
        overrides: ``key=value`` strings, e.g. ``["train.steps=100", "loss.name=sam"]``.

    Returns:
        A read-only DictConfig following :class:`Config`, interpolations resolved.

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type or unknown plugin option.
    """
    merged = OmegaConf.structured(Config)
    for layer_path, layer in _read_chain(Path(path)):
        merged = _merge(merged, layer, f"file {layer_path}")
    merged = _merge(merged, _parse_overrides(overrides), "command-line overrides")
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Cannot resolve an interpolation in the config: {exc}") from None
    _check_plugins(merged)
    _check_everything(merged.eval.everything)
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
    """A plugin spec whose ``name`` a layer changes starts from scratch: the old plugin's options
    would not fit the new one. Specs with the same name (or none) are deep-merged as usual."""
    if not isinstance(base, DictConfig) or not isinstance(layer, DictConfig):
        return
    for key in layer.keys():
        old, new = base.get(key), layer.get(key)
        if not isinstance(old, DictConfig) or not isinstance(new, DictConfig):
            continue
        is_spec = OmegaConf.get_type(old) is dict  # plugin specs are free-form dicts, sections typed
        if is_spec and "name" in new and "name" in old and new.name != old.name:
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


EVERYTHING_METRICS = ("ap", "ap50", "ar100", "ar1000", "msa")


def _check_everything(e: DictConfig) -> None:
    if e.best_metric not in EVERYTHING_METRICS:
        raise ConfigError(f"eval.everything.best_metric={e.best_metric!r}: use one of {', '.join(EVERYTHING_METRICS)}.")
    for key in ("every", "crop_n_layers"):
        if e[key] < 0:
            raise ConfigError(f"eval.everything.{key}={e[key]}: it must be >= 0.")
    for key in ("max_images", "points_per_side", "points_per_batch"):
        if e[key] < 1:
            raise ConfigError(f"eval.everything.{key}={e[key]}: it must be >= 1.")
    for key in ("iou_grid", "stability_grid"):
        if not e[key] or any(not 0.0 <= v <= 1.0 for v in e[key]):
            raise ConfigError(f"eval.everything.{key}={list(e[key])}: give one or more thresholds in [0, 1].")


def _check_plugins(cfg: DictConfig) -> None:
    for key, registry in PLUGIN_SLOTS.items():
        spec = OmegaConf.to_container(cfg[key], resolve=True)
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"Config key '{key}' must be a mapping with a 'name', got {spec!r}.")
        name = spec.pop("name")
        try:
            obj = registry.get(str(name))
            check_options(obj, spec, f"{registry.item} {name!r}")
        except RegistryError as exc:
            raise ConfigError(f"Config key '{key}': {exc}") from None
