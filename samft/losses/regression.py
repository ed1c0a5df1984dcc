"""Regression losses: plain, masked and class-balanced MSE, and the spectral angle.

Unlike the mask losses, the first argument here is the *prediction* itself (not logits), and a
negative target is an ordinary value, not "ignore": regions are excluded through ``mask``.
Arithmetic runs in fp32 (fp64 stays fp64) with autocast disabled, so bf16/fp16 inputs are safe.
"""

from __future__ import annotations

import torch

from samft.losses._common import check_pair, check_reduction, compute_dtype, fp32_compute, option_checks, reduce
from samft.registry import LOSSES

# Added under the square roots of the spectral angle: keeps the gradient finite at a perfect
# prediction (||a - b|| = 0) while changing the angle by at most ~1e-15 rad.
_TINY_SQ = 1e-30


def _binary_mask(mask: torch.Tensor, pred: torch.Tensor, threshold: float, loss: str) -> torch.Tensor:
    """Binarise ``mask`` (> threshold) and broadcast ``[N, H, W]`` / ``[N, 1, H, W]`` to ``pred``."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{loss}: mask must be a tensor, got {type(mask).__name__}.")
    if mask.dim() == pred.dim() - 1:
        mask = mask.unsqueeze(1)
    if mask.dim() != pred.dim() or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:] or (
        mask.shape[1] not in (1, pred.shape[1])
    ):
        raise ValueError(
            f"{loss}: mask {tuple(mask.shape)} must be [N, 1, ...], [N, C, ...] or [N, ...] "
            f"matching pred {tuple(pred.shape)}."
        )
    return (mask.to(pred.device).float() > threshold).expand_as(pred)


@LOSSES.register("mse", checks=option_checks())
def mse(pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Element-wise squared error ``(pred - target)^2``.

    Args:
        pred: Predictions (not logits), any shape ``[N, ...]``.
        target: Targets, same shape; every value counts (no ignore value).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per element, ``[N, ...]``).

    Returns:
        Scalar, or ``[N, ...]`` for ``"none"``. An empty tensor gives NaN for ``"mean"`` like torch.
    """
    check_pair(pred, target)
    check_reduction(reduction)
    dtype = compute_dtype(pred)
    with fp32_compute(pred.device):
        return reduce((pred.to(dtype) - target.to(dtype)).square(), reduction)


@LOSSES.register("masked_mse")
def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None, threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Per-channel MSE over the masked pixels only (e.g. leaf pixels of a multispectral image).

    Formula: ``mse_c = sum_{n,p} m (pred - target)^2 / sum_{n,p} m`` per channel ``c`` over the
    batch and all pixels, with ``m = mask > threshold``; ``loss = mean_c mse_c`` over the channels
    that have at least one masked pixel. Pixels outside the mask never reach the result (their
    values may be NaN padding).

    Args:
        pred: Predictions (not logits) ``[N, C, ...]``; channel dim 1.
        target: Targets, same shape.
        mask: ``[N, 1, ...]`` (broadcast over channels), ``[N, ...]`` or ``[N, C, ...]``; values
            ``> threshold`` count. ``None`` means every pixel.
        threshold: Binarisation threshold of ``mask`` (default 0.5).

    Returns:
        Dict with ``loss`` (scalar, the only entry with a gradient), ``mse_c0``, ``mse_c1``...
        (per channel, detached, 0 for a channel without masked pixels), ``coverage`` (masked
        fraction), ``valid_pixels`` and ``total_pixels`` (counted over ``mask`` as given:
        spatial pixels for a 1-channel mask). An all-empty mask gives ``loss`` 0 with the graph
        intact.
    """
    check_pair(pred, target, min_dim=2)
    if mask is None:
        mask = torch.ones_like(pred[:, :1], dtype=torch.bool)
    m = _binary_mask(mask, pred, threshold, "masked_mse")
    mask_in = mask.unsqueeze(1) if mask.dim() == pred.dim() - 1 else mask
    dtype = compute_dtype(pred)
    with fp32_compute(pred.device):
        # select before squaring: NaN padding outside the mask then cannot leak into the gradient
        sq = torch.where(m, pred.to(dtype) - target.to(dtype), 0.0).square()
        reduce_dims = [0, *range(2, pred.dim())]
        count = m.sum(dim=reduce_dims)
        per_channel = sq.sum(dim=reduce_dims) / count.clamp_min(1)
        has = (count > 0).to(dtype)
        loss = (per_channel * has).sum() / has.sum().clamp_min(1)
    valid = (mask_in.to(pred.device).float() > threshold).sum()
    out = {"loss": loss, **{f"mse_c{c}": v.detach() for c, v in enumerate(per_channel.unbind())}}
    out.update(
        coverage=valid.float() / max(mask_in.numel(), 1),
        valid_pixels=valid,
        total_pixels=torch.tensor(mask_in.numel(), device=pred.device),
    )
    return out


@LOSSES.register("spectral_angle", checks=option_checks())
def spectral_angle(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> torch.Tensor:
    """Spectral angle mapper: the angle (radians) between predicted and target spectra per pixel.

    Formula: with unit vectors ``a = pred / max(|pred|, eps)`` and ``b = target / |target|`` along
    channel dim 1, ``angle = 2 atan2(|a - b|, |a + b|)`` (equal to ``acos(a . b)``, but accurate
    near 0 and pi, and with finite gradients everywhere, including a perfect prediction).
    Pixels whose target magnitude ``|target| <= eps`` (default 1e-6) have no direction and are
    excluded, as are pixels outside ``mask``. A zero prediction counts as orthogonal (pi/2).

    Args:
        pred: Predicted spectra (not logits) ``[N, C, ...]``.
        target: Target spectra, same shape.
        mask: Optional ``[N, ...]``, ``[N, 1, ...]`` or ``[N, C, ...]`` (a pixel counts when all
            its channels are ``> 0.5``).
        eps: Magnitude threshold for valid target pixels and floor of ``|pred|``.
        reduction: ``"mean"`` over valid pixels of the batch (default), ``"sum"``, or ``"none"``
            (the angle map ``[N, ...]``, 0 at excluded pixels).

    Returns:
        Scalar in ``[0, pi]`` (or the map). No valid pixel gives 0 with the graph intact.
    """
    check_pair(pred, target, min_dim=2)
    check_reduction(reduction)
    dtype = compute_dtype(pred)
    with fp32_compute(pred.device):
        p, t = pred.to(dtype), target.to(dtype)
        t_norm = t.square().sum(1, keepdim=True).sqrt()
        valid = (t_norm > eps).squeeze(1)
        if mask is not None:
            valid = valid & _binary_mask(mask, p, 0.5, "spectral_angle").all(dim=1)
        # excluded pixels get harmless constants so that no NaN/inf there reaches the gradient
        keep = valid.unsqueeze(1)
        p, t = torch.where(keep, p, 1.0), torch.where(keep, t, 1.0)
        a = p / p.square().sum(1, keepdim=True).add(_TINY_SQ).sqrt().clamp_min(eps)
        b = t / t.square().sum(1, keepdim=True).sqrt()
        diff = (a - b).square().sum(1).add(_TINY_SQ).sqrt()
        summ = (a + b).square().sum(1).add(_TINY_SQ).sqrt()
        angle = torch.where(valid, 2.0 * torch.atan2(diff, summ), 0.0)
        if reduction == "mean":
            return angle.sum() / valid.sum().clamp_min(1)
        return reduce(angle, reduction)


@LOSSES.register("acb_mse")
def acb_mse(
    pred: torch.Tensor, target: torch.Tensor, *, zero_weight: float = 1.0, nonzero_weight: float = 1.0
) -> torch.Tensor:
    """Automatic class-balanced MSE: the zero and non-zero target pixels are averaged separately.

    Formula: ``A * mean_{t == 0} (pred - t)^2 + B * mean_{t != 0} (pred - t)^2`` over the whole
    batch, ``A = zero_weight``, ``B = nonzero_weight`` (both default 1.0). Each class then weighs
    the same however rare it is. A class without pixels contributes 0. Unlike the published
    package (which returns a Python float), the result is a differentiable tensor.

    Args:
        pred: Predictions (not logits), any shape ``[N, ...]``.
        target: Targets, same shape; exact zeros form the first class.
        zero_weight: ``A``.
        nonzero_weight: ``B``.

    Returns:
        Scalar tensor.
    """
    check_pair(pred, target)
    dtype = compute_dtype(pred)
    with fp32_compute(pred.device):
        p, t = pred.to(dtype), target.to(dtype)
        zero = t == 0
        # select before squaring, as in masked_mse, so each class's gradient stays its own
        mse_zero = torch.where(zero, p - t, 0.0).square().sum() / zero.sum().clamp_min(1)
        mse_nonzero = torch.where(zero, 0.0, p - t).square().sum() / (~zero).sum().clamp_min(1)
        return zero_weight * mse_zero + nonzero_weight * mse_nonzero
