"""Objects built from a config that the trainer and the command-line tools share."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from samft.archs import input_frame
from samft.data import MaskDataset, MixedDataset
from samft.data.specs import dataset_specs
from samft.models import CheckpointError, apply_peft, build_model, freeze, load_weights, trainable_state
from samft.models.checkpoint import read_checkpoint
from samft.models.peft import base_identity, check_base, load_trainable
from samft.registry import DATASETS


def _settings(cfg: DictConfig, root: Path, *, seed: int, train: bool) -> dict[str, Any]:
    """The shared pipeline's settings (:class:`samft.data.base.MaskDataset`) for training or evaluation.

    The evaluation dataset reads ``eval.max_masks`` masks per image and samples no prompt: evaluation
    prompts every mask itself (centre point, tight box, correction clicks)."""
    d, p = cfg.data, cfg.prompts
    crop = d.crop
    return dict(
        image_size=cfg.model.image_size, max_masks=d.max_masks if train else cfg.eval.max_masks,
        prompt=p.mode if train else None,
        box_prob=p.box_prob, transforms=list(d.augment) if train else None, min_area=d.min_area,
        max_area_frac=d.max_area_frac, min_predicted_iou=d.min_predicted_iou, min_stability=d.min_stability,
        on_error=d.on_error, with_dist_maps=d.with_dist_maps, seed=seed, dist_clip=d.dist_clip,
        crop={"multiple": crop.multiple, "mask_prob": crop.mask_prob, "overlap": crop.overlap} if crop.enabled
        else None,
        dist_map_cache=(root / d.dist_map_cache) if d.dist_map_cache else None,
        input_frame=input_frame(cfg.model.name),  # SAM 2.1 is served stretched to the square, as it deploys
    )


def _resolve(value: Any, root: Path) -> Any:
    if isinstance(value, (list, tuple)):
        return [_resolve(v, root) for v in value]
    return root / str(value)


def build_dataset(spec: dict[str, Any], settings: dict[str, Any], root: Path) -> MaskDataset:
    """One reader from a normalised spec (:func:`samft.data.specs.dataset_specs`); its path options
    are taken relative to ``root`` (absolute paths stay)."""
    cls = DATASETS.get(spec["name"])
    paths = DATASETS.info(spec["name"]).get("paths", ())
    options = {k: _resolve(v, root) if k in paths else v for k, v in spec["options"].items()}
    return cls(**options, **settings)


def datasets_from_config(cfg: DictConfig, root: Path, value: Any, *, seed: int,
                         train: bool = True) -> list[tuple[str, float, MaskDataset]]:
    """``(label, weight, dataset)`` for every dataset ``value`` (``data.train`` or ``data.val``) lists."""
    settings = _settings(cfg, root, seed=seed, train=train)
    specs = dataset_specs(value, "data.train" if train else "data.val")
    return [(s["label"], float(s["weight"]), build_dataset(s, settings, root)) for s in specs]


def dataset_from_config(cfg: DictConfig, root: Path, value: Any, *, seed: int,
                        train: bool = True) -> MaskDataset | MixedDataset:
    """The training (augmented, configured prompts) or evaluation (plain) dataset ``value`` names: one
    dataset, or a :class:`MixedDataset` when it lists several."""
    built = datasets_from_config(cfg, root, value, seed=seed, train=train)
    if len(built) == 1:
        return built[0][2]
    return MixedDataset([d for _, _, d in built], [w for _, w, _ in built], [label for label, _, _ in built])


def model_from_config(cfg: DictConfig, root: Path) -> torch.nn.Module:
    """The configured SAM on the CPU: built, ``model.checkpoint`` loaded (paths relative to ``root``),
    the ``model.freeze_*`` flags and ``model.peft`` applied.

    With ``model.peft``, ``model.checkpoint`` is the base weights (Meta's ``.pth``, a full samft checkpoint,
    or null: a random initialisation from ``train.seed``) or a checkpoint of a PEFT run: that holds only
    the trained tensors, and its base is read from the file it records, checked by its sha256. The model
    carries its base's identity as ``model.samft_base`` (what its checkpoints record).
    """
    m = cfg.model
    path = root / m.checkpoint if m.checkpoint else None
    obj = read_checkpoint(path) if path is not None else None
    saved = obj.get("peft") if isinstance(obj, dict) else None
    if saved is not None and not m.peft:
        raise CheckpointError(f"Checkpoint {path} is a PEFT checkpoint (model.peft={saved['method']}) holding only "
                              "trained tensors: set the same model.peft (or evaluate with the run's own config.yaml).")
    base_path = path if saved is None else (Path(saved["base"]["path"]) if saved["base"]["path"] else None)
    if saved is not None and base_path is not None and not base_path.is_file():
        raise CheckpointError(f"Checkpoint {path} adapts the base weights {base_path} (sha256 "
                              f"{str(saved['base']['sha256'])[:12]}), which do not exist: put that file back at "
                              "that path (a PEFT checkpoint holds only the trained tensors).")
    model = _base_model(cfg, random_from_seed=bool(m.peft) and base_path is None)
    if base_path is not None:
        load_weights(model, base_path, m.name, obj=obj if saved is None else None)
    freeze(model, image_encoder=m.freeze_image_encoder, prompt_encoder=m.freeze_prompt_encoder,
           mask_decoder=m.freeze_mask_decoder, adapters=bool(m.peft))
    if m.peft:
        identity = base_identity(model, str(base_path.resolve()) if base_path is not None else None, cfg.train.seed)
        apply_peft(model, OmegaConf.to_container(m.peft, resolve=True) if isinstance(m.peft, DictConfig) else m.peft)
        model.samft_base = identity
        if saved is not None:
            check_base(saved["base"], identity, f"Checkpoint {path}")
            load_trainable(model, obj["model"], f"Checkpoint {path}")
    return model


def _base_model(cfg: DictConfig, *, random_from_seed: bool) -> torch.nn.Module:
    """The untrained model. A PEFT run's random base is drawn from ``train.seed`` alone, so that evaluation
    and export rebuild the very weights its checkpoints adapt (and the global random stream is untouched)."""
    if not random_from_seed:
        return build_model(cfg.model.name, cfg.model.image_size, attention=cfg.model.attention)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg.model.name, cfg.model.image_size, attention=cfg.model.attention)


def peft_checkpoint_fields(model: torch.nn.Module, spec: Any) -> dict[str, Any]:
    """What a PEFT run's checkpoint holds besides the training state: the trained tensors only, the
    method and the identity of the base weights (read back by :func:`model_from_config`)."""
    return {"model": trainable_state(model), "peft": {"method": spec, "base": model.samft_base}}


def dataset_fingerprint(dataset: MaskDataset | MixedDataset) -> str:
    """Short hash of the dataset's content as indexed (item names, image sizes, annotation counts and
    areas): equal for copies of the same data, different when a file or an annotation changes."""
    digest = hashlib.sha1()
    for rec in dataset.records:
        digest.update(repr((rec["json"], rec.get("height"), rec.get("width"), rec.get("area"))).encode())
    return digest.hexdigest()[:12]


__all__ = ["build_dataset", "dataset_fingerprint", "dataset_from_config", "datasets_from_config",
           "model_from_config"]
