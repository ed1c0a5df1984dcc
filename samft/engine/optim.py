"""AdamW with SAM's parameter groups and a registry schedule as the LR multiplier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                 encoder_lr: float | None = None) -> list[dict[str, Any]]:
    """Split trainable parameters into groups by (image encoder or not) x (decayed or not).

    Biases, norm weights and other 1-d parameters get no weight decay (SAM 2's fine-tuning recipe).

    Returns:
        Non-empty groups with keys ``params``, ``lr``, ``weight_decay`` and ``name`` (for logging).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("image_encoder.")
        decays = param.ndim > 1 and not name.endswith(".bias")
        groups.setdefault((is_encoder, decays), []).append(param)
    result = []
    for (is_encoder, decays), params in sorted(groups.items()):
        result.append({
            "params": params,
            "lr": encoder_lr if (is_encoder and encoder_lr is not None) else lr,
            "weight_decay": weight_decay if decays else 0.0,
            "name": f"{'encoder' if is_encoder else 'decoder'}{'' if decays else '_no_decay'}",
        })
    if not result:
        raise ValueError("The model has no trainable parameters: check the model.freeze_* flags.")
    return result


def build_optimizer(groups: list[dict[str, Any]], betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=betas)


def build_lr_scheduler(optimizer: torch.optim.Optimizer,
                       schedule: Callable[[int], float]) -> torch.optim.lr_scheduler.LambdaLR:
    """LR of every group = its base lr x ``schedule(step)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: float(schedule(step)))
