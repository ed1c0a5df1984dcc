"""Valid-pixel weighting: samples with little valid area are neither drowned nor over-counted.

A per-pixel loss is averaged over each sample's valid pixels, then the samples are combined
with weights ``sqrt(valid ratio)``, between equal weight per sample (ratio^0) and equal weight
per pixel (ratio^1). Padding added by resize-and-pad is invalid area: pass it as ``valid``.
"""

from __future__ import annotations

from typing import Any

import torch

from samft.losses._common import call_loss, check_pair, check_reduction, compute_dtype, fp32_compute, split_ignore
from samft.losses.composite import LossSpec, require_per_element, resolve_loss
from samft.registry import LOSSES


@LOSSES.register("valid_pixel_weighted")
class ValidPixelWeighted:
    """Per-pixel loss averaged over valid pixels, samples weighted by ``sqrt(valid ratio)``.

    Formula, per sample ``i`` with valid pixels ``V_i`` out of ``P`` pixels (all channels):
    ``L_i = mean_{p in V_i} base(logits, target)_p``, ``w_i = sqrt(|V_i| / P)``, and
    ``loss = sum_i w_i L_i / sum_i w_i``. Samples with ``|V_i| = 0`` have ``w_i = 0`` and are
    skipped; a batch without any valid pixel gives 0, still attached to the graph. The base loss
    sees the target with invalid pixels set to 0, so ignore values never reach it. Weights carry
    no gradient. Vectorised over the batch.

    Args:
        base: The per-pixel loss: a registered name, ``{name: ..., **kwargs}`` or a callable.
            It is called with ``reduction="none"`` and must return ``[N, ...]`` like ``logits``
            (e.g. ``bce``, ``sigmoid_focal``, ``mse``). Required.
        reduction: ``"mean"`` (the weighted mean above, default), ``"sum"`` (``sum_i w_i L_i``)
            or ``"none"`` (``L_i`` per sample ``[N]``, 0 for skipped samples).
    """

    def __init__(self, base: LossSpec | None = None, reduction: str = "mean") -> None:
        if base is None:
            raise ValueError(
                "valid_pixel_weighted needs a per-pixel base loss, e.g. base: {name: bce}."
            )
        check_reduction(reduction)
        self.base = resolve_loss(base, what="valid_pixel_weighted base")
        require_per_element(self.base, "valid_pixel_weighted")
        self.reduction = reduction

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None, **extras: Any
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``[N, ...]`` predictions passed to the base loss (logits or values).
            target: ``[N, ...]`` same shape; ``< 0`` means ignore.
            valid: Optional bool mask broadcastable to ``target`` (False = invalid, e.g. padding);
                a ``[N, H, W]`` mask also fits a ``[N, C, H, W]`` target.
            **extras: Forwarded to the base loss when it accepts them.

        Returns:
            Scalar (or ``[N]`` for ``reduction="none"``).
        """
        check_pair(logits, target, min_dim=2)
        with fp32_compute(logits.device):
            clean, weight = split_ignore(target, valid, compute_dtype(logits))
            keep = weight.flatten(1) > 0
            per_pixel = self._per_pixel(logits, clean, extras).flatten(1)
            count = keep.sum(1)
            per_sample = torch.where(keep, per_pixel, 0.0).sum(1) / count.clamp_min(1)
            if self.reduction == "none":
                return per_sample
            ratio_weight = (count / keep.shape[1]).sqrt()
            total = (ratio_weight * per_sample).sum()
            if self.reduction == "sum":
                return total
            # an all-invalid batch has total == 0 exactly; the clamp only avoids 0 / 0
            return total / ratio_weight.sum().clamp_min(torch.finfo(total.dtype).tiny)

    def _per_pixel(self, logits: torch.Tensor, target: torch.Tensor, extras: dict[str, Any]) -> torch.Tensor:
        out = call_loss(self.base, logits, target, reduction="none", **extras)
        if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"valid_pixel_weighted: the base loss must be per-pixel, returning {tuple(logits.shape)} "
                f"with reduction='none', got {shape}."
            )
        return out.to(compute_dtype(logits))
