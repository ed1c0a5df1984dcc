"""Objects built from a config that the trainer and the command-line tools share."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from samft.data import MaskDataset, MixedDataset
from samft.data.specs import dataset_specs
from samft.models import build_model, load_weights
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
    )


def _resolve(value: Any, root: Path) -> Any:
    if isinstance(value, (list, tuple)):
        return [_resolve(v, root) for v in value]
    return root / str(value)


def build_dataset(spec: dict[str, Any], settings: dict[str, Any], root: Path, dist_map_cache: Any) -> MaskDataset:
    """One reader from a normalised spec (:func:`samft.data.specs.dataset_specs`); its path options
    are taken relative to ``root`` (absolute paths stay)."""
    cls = DATASETS.get(spec["name"])
    paths = DATASETS.info(spec["name"]).get("paths", ())
    options = {k: _resolve(v, root) if k in paths else v for k, v in spec["options"].items()}
    if spec["name"] == "sa1b":
        options["dist_map_cache"] = dist_map_cache
    return cls(**options, **settings)


def datasets_from_config(cfg: DictConfig, root: Path, value: Any, *, seed: int,
                         train: bool = True) -> list[tuple[str, float, MaskDataset]]:
    """``(label, weight, dataset)`` for every dataset ``value`` (``data.train`` or ``data.val``) lists."""
    settings = _settings(cfg, root, seed=seed, train=train)
    cache = (root / cfg.data.dist_map_cache) if cfg.data.dist_map_cache else None
    specs = dataset_specs(value, "data.train" if train else "data.val")
    return [(s["label"], float(s["weight"]), build_dataset(s, settings, root, cache)) for s in specs]


def dataset_from_config(cfg: DictConfig, root: Path, value: Any, *, seed: int,
                        train: bool = True) -> MaskDataset | MixedDataset:
    """The training (augmented, configured prompts) or evaluation (plain) dataset ``value`` names: one
    dataset, or a :class:`MixedDataset` when it lists several."""
    built = datasets_from_config(cfg, root, value, seed=seed, train=train)
    if len(built) == 1:
        return built[0][2]
    return MixedDataset([d for _, _, d in built], [w for _, w, _ in built], [label for label, _, _ in built])


def model_from_config(cfg: DictConfig, root: Path) -> torch.nn.Module:
    """The configured SAM with ``model.checkpoint`` loaded (paths relative to ``root``), on the CPU."""
    model = build_model(cfg.model.name, cfg.model.image_size)
    if cfg.model.checkpoint:
        load_weights(model, root / cfg.model.checkpoint, cfg.model.name)
    return model


def dataset_fingerprint(dataset: MaskDataset | MixedDataset) -> str:
    """Short hash of the dataset's content as indexed (item names, image sizes, annotation counts and
    areas): equal for copies of the same data, different when a file or an annotation changes."""
    digest = hashlib.sha1()
    for rec in dataset.records:
        digest.update(repr((rec["json"], rec.get("height"), rec.get("width"), rec.get("area"))).encode())
    return digest.hexdigest()[:12]


__all__ = ["build_dataset", "dataset_fingerprint", "dataset_from_config", "datasets_from_config",
           "model_from_config"]
