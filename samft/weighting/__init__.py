"""Loss-weighting strategies: how the per-term losses become the one total that is back-propagated.

Every strategy is an ``nn.Module`` built as
``WEIGHTINGS.build({"name": ..., **options}, terms=["focal", "dice", "iou"])`` and called as
``total, weights = strategy(losses, step)`` (see :class:`WeightingStrategy` for the whole contract).

==============  ================================================================================
``fixed``       ``sum w_i(step) L_i``; numbers or schedules; SAM's focal 20, dice 1, iou 1 by default
``uncertainty`` learned log-variances (Kendall et al. 2018), optional floor
``gradnorm``    weights that equalise gradient norms at a shared layer (Chen et al. 2018)
``dwa``         weights from the epoch-to-epoch loss ratios (Liu et al. 2019)
==============  ================================================================================

:mod:`samft.weighting.analysis` measures per-term gradient norms at a shared layer.
"""

from samft.weighting.analysis import grad_norms, resolve_params, term_grad_norms
from samft.weighting.base import WeightingStrategy
from samft.weighting.dwa import DynamicWeightAverage
from samft.weighting.fixed import SAM_WEIGHTS, FixedWeighting
from samft.weighting.gradnorm import DEFAULT_SHARED, GradNormWeighting
from samft.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "DEFAULT_SHARED", "DynamicWeightAverage", "FixedWeighting", "GradNormWeighting", "SAM_WEIGHTS",
    "UncertaintyWeighting", "WeightingStrategy", "grad_norms", "resolve_params", "term_grad_norms",
]
