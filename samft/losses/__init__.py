"""Built-in losses, registered in ``samft.registry.LOSSES`` on import.

One family per module: ``pixel`` (focal, BCE), ``overlap`` (dice, IoU, Lovasz), ``sam`` (SAM's
objective), ``object_score`` (SAM 2's object-score loss and objective), ``boundary`` (distance-map
losses), ``regression`` (MSE family), ``valid_pixel`` (valid-pixel weighting), ``weighted``
(per-sample weights) and ``composite`` (sums of losses).
``call_loss`` calls any configured loss with the batch extras it accepts; ``per_mask`` averages
per-pixel values over each mask's valid pixels.
"""

from samft.losses import boundary, composite, object_score, overlap, pixel, regression, sam, valid_pixel, weighted
from samft.losses._common import call_loss, declared_terms, loss_stats, loss_terms, per_mask

__all__ = [
    "boundary",
    "call_loss",
    "declared_terms",
    "loss_stats",
    "loss_terms",
    "composite",
    "object_score",
    "overlap",
    "per_mask",
    "pixel",
    "regression",
    "sam",
    "valid_pixel",
    "weighted",
]
