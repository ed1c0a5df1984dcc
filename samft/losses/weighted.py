"""Per-sample weighted losses ``sum_i lambda_i l_i`` with the weight rule named in the config.

The rules come from diffusion training (sigma^2, SNR, min-SNR), GloVe's capped frequency weight,
weighted least squares (inverse variance) and importance sampling (p / q). Weights are computed
without gradient: they say how much a sample counts, they are not something to optimise.
"""

from __future__ import annotations

from typing import Any

import torch

from samft.losses import regression as _regression  # noqa: F401 - registers the default base "mse"
from samft.losses._common import call_loss, compute_dtype, fp32_compute
from samft.losses.composite import LossSpec, require_per_element, resolve_loss
from samft.registry import LOSSES

RULE_INPUTS: dict[str, tuple[str, ...]] = {
    "uniform": (),
    "sigma_squared": ("sigma",),
    "snr": ("sigma",),
    "min_snr": ("sigma",),
    "glove": ("counts",),
    "inverse_variance": ("variance",),
    "importance": ("p", "q"),
}


def _require(ok: torch.Tensor, rule: str, what: str) -> None:
    if not bool(ok.all()):
        raise ValueError(f"weighted rule {rule!r}: {what}.")


def _snr(sigma: torch.Tensor, rule: str, allow_zero: bool) -> torch.Tensor:
    low_ok = sigma >= 0 if allow_zero else sigma > 0
    _require(low_ok & (sigma <= 1), rule, f"sigma must be in {'[0' if allow_zero else '(0'}, 1], got {sigma.tolist()}")
    # alpha_t = sqrt(1 - sigma^2), so SNR = alpha^2 / sigma^2 without the round trip through sqrt
    return (1 - sigma.square()) / sigma.square()


def sample_weights(
    rule: str,
    batch_size: int,
    *,
    min_snr_gamma: float = 5.0,
    x_max: float = 100.0,
    alpha: float = 0.75,
    **inputs: torch.Tensor,
) -> torch.Tensor:
    """Per-sample weights ``[N]`` of one rule, in fp32, without gradient.

    Rules (inputs are ``[N]`` tensors given by keyword):
        - ``uniform``: 1.
        - ``sigma_squared``: ``sigma^2`` (``sigma``).
        - ``snr``: ``alpha_t^2 / sigma^2`` with ``alpha_t = sqrt(1 - sigma^2)``, sigma in (0, 1].
        - ``min_snr``: ``min(SNR, min_snr_gamma)``, gamma 5 (Hang et al. 2023; clamping the SNR
          itself keeps sigma = 0, an infinite SNR, finite: it gives gamma).
        - ``glove``: ``(counts / x_max)^alpha`` below ``x_max``, else 1 (x_max 100, alpha 0.75).
        - ``inverse_variance``: ``1 / variance`` (variance > 0).
        - ``importance``: ``p / q`` (likelihood ratio; p >= 0, q > 0).

    Args:
        rule: One of ``RULE_INPUTS``.
        batch_size: ``N``; every input must have ``N`` elements.
        min_snr_gamma, x_max, alpha: Rule constants (see above).
        **inputs: The rule's inputs (``sigma``, ``counts``, ``variance``, ``p``, ``q``).

    Returns:
        ``[N]`` float32 weights.
    """
    if rule not in RULE_INPUTS:
        raise ValueError(f"weighted: unknown rule {rule!r}; choose one of {', '.join(RULE_INPUTS)}.")
    with torch.no_grad():
        x = {}
        for key in RULE_INPUTS[rule]:
            value = inputs.get(key)
            if value is None:
                raise ValueError(f"weighted rule {rule!r} needs the batch extra {key!r} ([N] tensor).")
            value = torch.as_tensor(value).detach().float().reshape(-1)
            if value.numel() != batch_size:
                raise ValueError(
                    f"weighted rule {rule!r}: {key} has {value.numel()} values for a batch of {batch_size}."
                )
            x[key] = value
        return _rule_weights(rule, x, batch_size, min_snr_gamma, x_max, alpha)


def _rule_weights(
    rule: str, x: dict[str, torch.Tensor], n: int, gamma: float, x_max: float, alpha: float
) -> torch.Tensor:
    if rule == "uniform":
        return torch.ones(n)
    if rule == "sigma_squared":
        return x["sigma"].square()
    if rule in ("snr", "min_snr"):
        snr = _snr(x["sigma"], rule, allow_zero=rule == "min_snr")
        return snr if rule == "snr" else snr.clamp(max=gamma)
    if rule == "glove":
        counts = x["counts"]
        _require(counts >= 0, rule, f"counts must be >= 0, got {counts.tolist()}")
        return torch.where(counts < x_max, (counts / x_max).pow(alpha), 1.0)
    if rule == "inverse_variance":
        _require(x["variance"] > 0, rule, f"variance must be > 0, got {x['variance'].tolist()}")
        return 1.0 / x["variance"]
    _require((x["p"] >= 0) & (x["q"] > 0), rule, "p must be >= 0 and q > 0")
    return x["p"] / x["q"]


@LOSSES.register("weighted")
class Weighted:
    """Per-sample weighted loss ``sum_i lambda_i l_i``.

    Formula: ``l_i`` = the base loss with ``reduction="none"`` averaged over all non-batch dims;
    ``lambda_i`` from ``rule`` (see ``sample_weights``), computed without gradient. Normalised:
    ``sum_i (lambda_i / sum_j lambda_j) l_i`` (importance sampling, comparable across batches);
    otherwise ``mean_i lambda_i l_i``. All-zero weights with ``normalize`` give 0.

    Args:
        rule: ``uniform`` (default), ``sigma_squared``, ``snr``, ``min_snr``, ``glove``,
            ``inverse_variance`` or ``importance``.
        base: Base loss spec (default ``"mse"``); must accept ``reduction="none"`` and return
            ``[N]`` or ``[N, ...]``. For ``mse`` the first argument is the prediction.
        normalize: Normalise the weights to sum 1 (default False).
        min_snr_gamma: Clamp of ``min_snr`` (default 5.0).
        x_max: GloVe cap (default 100).
        alpha: GloVe exponent (default 0.75).
    """

    def __init__(
        self,
        rule: str = "uniform",
        base: LossSpec = "mse",
        normalize: bool = False,
        min_snr_gamma: float = 5.0,
        x_max: float = 100.0,
        alpha: float = 0.75,
    ) -> None:
        if rule not in RULE_INPUTS:
            raise ValueError(f"weighted: unknown rule {rule!r}; choose one of {', '.join(RULE_INPUTS)}.")
        self.rule, self.normalize = rule, bool(normalize)
        self.constants = {"min_snr_gamma": min_snr_gamma, "x_max": x_max, "alpha": alpha}
        self.base = resolve_loss(base, what="weighted base")
        require_per_element(self.base, "weighted")

    def __call__(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        *,
        sigma: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
        variance: torch.Tensor | None = None,
        p: torch.Tensor | None = None,
        q: torch.Tensor | None = None,
        **extras: Any,
    ) -> torch.Tensor:
        """Compute the weighted loss.

        Args:
            pred: ``[N, ...]`` prediction (or logits, whatever the base loss takes).
            target: ``[N, ...]`` target.
            sigma, counts, variance, p, q: ``[N]`` rule inputs (only the rule's are required).
            **extras: Forwarded to the base loss when it accepts them.

        Returns:
            Scalar tensor.
        """
        inputs = {"sigma": sigma, "counts": counts, "variance": variance, "p": p, "q": q}
        with fp32_compute(pred.device):
            per_sample = self._per_sample(pred, target, extras)
            weights = sample_weights(self.rule, per_sample.shape[0], **self.constants, **inputs)
            weights = weights.to(device=per_sample.device, dtype=per_sample.dtype)
            if self.normalize:
                return (weights * per_sample).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
            return (weights * per_sample).mean()

    def _per_sample(self, pred: torch.Tensor, target: torch.Tensor, extras: dict[str, Any]) -> torch.Tensor:
        out = call_loss(self.base, pred, target, reduction="none", **extras)
        if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != pred.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"weighted: the base loss must return [N] or [N, ...] with reduction='none' "
                f"(N = {pred.shape[0]}), got {shape}."
            )
        out = out.to(compute_dtype(pred))
        return out.flatten(1).mean(1) if out.dim() > 1 else out
