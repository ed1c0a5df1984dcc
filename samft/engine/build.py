"""Objects built from a config that the trainer and the command-line tools share."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from omegaconf import DictConfig

from samft.data import SA1BDataset
from samft.models import build_model, load_weights


def dataset_from_config(cfg: DictConfig, root: Path, folder: str, *, seed: int, train: bool = True) -> SA1BDataset:
    """The training (augmented, configured prompts) or evaluation (plain) dataset of ``root / folder``.

    The evaluation dataset reads ``eval.max_masks`` masks per image and samples no prompt: evaluation
    prompts every mask itself (centre point, tight box, correction clicks)."""
    d, p = cfg.data, cfg.prompts
    return SA1BDataset(
        root / folder, image_size=cfg.model.image_size, max_masks=d.max_masks if train else cfg.eval.max_masks,
        prompt=p.mode if train else None,
        box_prob=p.box_prob, transforms=list(d.augment) if train else None, min_area=d.min_area,
        max_area_frac=d.max_area_frac, min_predicted_iou=d.min_predicted_iou, min_stability=d.min_stability,
        on_error=d.on_error, with_dist_maps=d.with_dist_maps, seed=seed, dist_clip=d.dist_clip,
        dist_map_cache=(root / d.dist_map_cache) if d.dist_map_cache else None,
    )


def model_from_config(cfg: DictConfig, root: Path) -> torch.nn.Module:
    """The configured SAM with ``model.checkpoint`` loaded (paths relative to ``root``), on the CPU."""
    model = build_model(cfg.model.name, cfg.model.image_size, attention=cfg.model.attention)
    if cfg.model.checkpoint:
        load_weights(model, root / cfg.model.checkpoint, cfg.model.name)
    return model


def dataset_fingerprint(dataset: SA1BDataset) -> str:
    """Short hash of the dataset's content as indexed (json names, image sizes, annotation counts and
    areas): equal for copies of the same data, different when a file or an annotation changes."""
    digest = hashlib.sha1()
    for rec in dataset.records:
        digest.update(repr((rec["json"], rec.get("height"), rec.get("width"), rec.get("area"))).encode())
    return digest.hexdigest()[:12]
