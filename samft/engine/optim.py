"""AdamW with SAM's parameter groups and a registry schedule as the LR multiplier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from samft.models import spec_of


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, encoder_lr: float | None = None,
                 layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning rate and weight decay.

    Biases, norm weights and other 1-d parameters get no weight decay (SAM 2's fine-tuning recipe).
    With ``layer_decay < 1`` the image encoder's lr falls geometrically from the neck to the patch
    embedding (SAM: 0.6 for ViT-B, 0.8 for ViT-L/H; SAM 2 fine-tuning: 0.9): a parameter at depth
    ``i`` (0 = patch/position embedding, ``L + 1`` = neck, ``L`` blocks) gets
    ``encoder_lr * layer_decay ** (L + 1 - i)``; the model's registry entry (``decay_layer``) says each
    parameter's depth (MobileSAM's TinyViT counts blocks over all its stages).

    Returns:
        Non-empty groups with keys ``params``, ``lr``, ``weight_decay`` and ``name`` (for logging).
    """
    decay_layer = spec_of(model).decay_layer  # the model's registry entry says where layer decay applies
    depth = 0
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = param.ndim > 1 and not name.endswith(".bias")
            layer = -1
            if name.startswith("image_encoder."):
                layer, depth = decay_layer(model, name.removeprefix("image_encoder."))
            groups.setdefault((layer, decays), []).append(param)
    base_encoder_lr = encoder_lr if encoder_lr is not None else lr
    result = []
    for (layer, decays), params in sorted(groups.items()):
        is_encoder = layer >= 0
        result.append({
            "params": params,
            "lr": base_encoder_lr * layer_decay ** (depth + 1 - layer) if is_encoder else lr,
            "weight_decay": weight_decay if decays else 0.0,
            "name": (f"encoder{layer}" if is_encoder and layer_decay != 1.0 else "encoder" if is_encoder
                     else "decoder") + ("" if decays else "_no_decay"),
        })
    if not result:
        raise ValueError("The model has no trainable parameters: check the model.freeze_* flags.")
    return _merge_same(result)


def _merge_same(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per (name): without layer decay all encoder layers share a name and an lr."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        if group["name"] in merged and merged[group["name"]]["lr"] == group["lr"]:
            merged[group["name"]]["params"] += group["params"]
        else:
            merged.setdefault(group["name"], group)
    return list(merged.values())


def build_optimizer(groups: list[dict[str, Any]], betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=betas)


def build_lr_scheduler(optimizer: torch.optim.Optimizer,
                       schedule: Callable[[int], float]) -> torch.optim.lr_scheduler.LambdaLR:
    """LR of every group = its base lr x ``schedule(step)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: float(schedule(step)))
