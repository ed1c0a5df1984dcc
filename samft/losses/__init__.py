"""Built-in losses, registered in ``samft.registry.LOSSES`` on import.

One family per module: ``pixel`` (focal, BCE), ``overlap`` (dice, IoU, Lovasz), ``sam`` (SAM's
objective). ``call_loss`` calls any configured loss with the batch extras it accepts.
"""

from samft.losses import overlap, pixel, sam
from samft.losses import boundary, composite, regression, valid_pixel, weighted
from samft.losses._common import call_loss, per_mask

__all__ = ["call_loss", "per_mask", "overlap", "pixel", "sam"]
