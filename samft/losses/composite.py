"""Losses made of other losses: a weighted sum of named terms, and a mean over granularity levels.

Both are classes so that their sub-losses are looked up and validated once, when the config is
built, not on every call. Batch extras reach each sub-loss through ``_common.call_loss`` (only
the keywords it declares). ``resolve_loss``, ``require_per_element`` and ``loss_value`` are
shared with the wrapping losses of ``valid_pixel`` and ``weighted``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from samft.checks import at_least, fail, finite
from samft.losses._common import call_loss, compute_dtype
from samft.registry import LOSSES

LossSpec = str | Mapping[str, Any] | Callable[..., Any]


def resolve_loss(spec: LossSpec, *, what: str) -> Callable[..., Any]:
    """Turn a loss spec into a callable.

    Args:
        spec: A registered name (``"dice"``), a registry spec (``{"name": "dice", "smooth": 1}``)
            or a callable used as is.
        what: Where the spec came from, for error messages (``"combined term 'dice'"``).

    Returns:
        The callable loss.
    """
    if callable(spec):
        return spec
    if isinstance(spec, (str, Mapping)):
        return LOSSES.build(spec)
    raise ValueError(
        f"{what}: expected a loss name, a mapping {{name: ..., **kwargs}} or a callable, "
        f"got {type(spec).__name__} {spec!r}."
    )


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (or ``**kwargs``) and the config has not bound it.

    Args:
        fn: A loss callable (function, ``functools.partial``, object, ``nn.Module``).
        name: Keyword to look for, e.g. ``"reduction"``.
    """
    if isinstance(fn, functools.partial) and name in fn.keywords:
        return False
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return name in params and params[name].kind in keyword_kinds


def require_per_element(fn: Callable[..., Any], what: str) -> None:
    """Raise a ValueError unless the wrapped loss ``fn`` can be called with ``reduction="none"``."""
    if not accepts_keyword(fn, "reduction"):
        raise ValueError(
            f"{what}: the loss {fn!r} must accept reduction='none' (set by the wrapper, so leave "
            "reduction out of its spec): use a per-element loss such as bce, sigmoid_focal or mse."
        )


def loss_value(out: Any, *, what: str) -> torch.Tensor:
    """The scalar of a loss result: the tensor itself, or the ``loss`` key of a dict."""
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ValueError(f"{what} returned a dict without a 'loss' key (keys: {sorted(out)}).")
        out = out["loss"]
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{what} must return a scalar tensor or a dict with a scalar 'loss', got {shape}. "
            "Use reduction='mean' (or 'sum') for that term."
        )
    # a half-precision term (third-party loss) is summed in fp32 like everything else
    return out.reshape(()).to(compute_dtype(out))


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


@LOSSES.register("combined")
class Combined:
    """Weighted sum of named loss terms; each term is also reported unweighted for logging.

    Config example (a term's key is its metric key; ``name`` defaults to the key)::

        name: combined
        terms:
          focal: {name: sigmoid_focal, weight: 20}
          dice: {weight: 1}

    Formula: ``loss = sum_k weight_k * term_k(logits, target, **extras accepted by term_k)``.
    A term returning a dict contributes its ``loss``; its other keys are reported, detached, as
    ``"<term>/<key>"``. Extras are handed to a term only when its signature accepts them
    (or takes ``**kwargs``), so one batch can feed ``dice`` and ``boundary`` (``dist_map``) alike.
    The term values keep their gradient: samft's trainer hands grad-carrying scalars to the
    weighting strategy, which recombines them (``loss`` is this class's own weighted sum).
    Shapes and empty-target behaviour are those of the terms.

    Args:
        terms: Mapping term key -> ``{name: registered loss (default: the key), weight: float
            (default 1.0), **loss kwargs}``, a bare registered name or a callable (weight 1).
    """

    def __init__(self, terms: Mapping[str, Any]) -> None:
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError(f"combined: terms must be a non-empty mapping of term -> spec, got {terms!r}.")
        self.terms = {str(key): _term(str(key), spec) for key, spec in terms.items()}

    def __call__(self, logits: Any, target: Any, **extras: Any) -> dict[str, torch.Tensor]:
        """Compute all terms.

        Args:
            logits: Passed to every term as is (usually ``[N, ...]`` float logits).
            target: Passed to every term as is (same shape as ``logits``).
            **extras: Batch extras (``valid``, ``dist_map``, ``epoch``...), forwarded per term.

        Returns:
            ``{"loss": weighted sum (scalar), "<term>": unweighted term value, "<term>/<key>": ...}``.
        """
        out: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for key, (weight, fn) in self.terms.items():
            result = call_loss(fn, logits, target, **extras)
            value = loss_value(result, what=f"combined term {key!r}")
            out[key] = value
            if isinstance(result, Mapping):
                # detached: the engine treats grad-carrying scalars as weightable terms, and a
                # term's own components must not be counted a second time
                out.update({f"{key}/{k}": _detach(v) for k, v in result.items() if k != "loss"})
            total = weight * value if total is None else total + weight * value
        return {"loss": total, **out}


def _term(key: str, spec: Any) -> tuple[float, Callable[..., Any]]:
    """``(weight, loss)`` of one ``combined`` term spec."""
    what = f"combined term {key!r}"
    if key == "loss" or "/" in key:
        raise ValueError(f"{what}: the key is reserved or contains '/'; rename the term.")
    if isinstance(spec, str) or callable(spec):
        return 1.0, resolve_loss(spec, what=what)
    if not isinstance(spec, Mapping):
        raise ValueError(f"{what}: expected a loss name or a mapping {{name, weight, **kwargs}}, got {spec!r}.")
    spec = dict(spec)
    spec.setdefault("name", key)
    weight = finite(f"weight of {what}", spec.pop("weight", 1.0))
    return weight, resolve_loss(spec, what=what)


@LOSSES.register("multi_granularity")
class MultiGranularity:
    """Weighted mean of one mask loss over granularity levels (e.g. fine / medium / coarse masks).

    Formula: ``loss = sum_l w_l L_l / sum_l w_l`` (``normalize="weights"``, default) or
    ``sum_l w_l L_l / num_levels`` (``normalize="count"``). ``"count"`` divides a weighted *sum* by
    the number of levels, which is only a mean when the weights sum to that number; with
    ``"weights"`` the result is a true weighted mean, so scaling all weights changes nothing.
    Empty targets behave as in the level loss (``sam_mask`` zeroes masks without foreground).

    Args:
        loss: Mask loss spec used at every level (default ``"sam_mask"``: focal 20 + dice 1).
        weights: One non-negative weight per level (default 1 for every level).
        normalize: ``"weights"`` or ``"count"`` (see formula).
        level_dim: The level dimension when logits/targets are single tensors (default 1,
            i.e. ``[N, L, H, W]``); ignored for lists.
    """

    def __init__(
        self,
        loss: LossSpec = "sam_mask",
        weights: Sequence[float] | None = None,
        normalize: str = "weights",
        level_dim: int = 1,
    ) -> None:
        if normalize not in ("weights", "count"):
            raise fail("normalize", f"multi_granularity: normalize must be 'weights' or 'count', got {normalize!r}.")
        if weights is not None:
            weights = [at_least(f"weights[{i}]", w, 0) for i, w in enumerate(weights)]
            if sum(weights) <= 0:
                raise fail("weights", f"Option multi_granularity weights needs a weight > 0, got {weights!r}.")
        self.loss = resolve_loss(loss, what="multi_granularity loss")
        self.weights = weights
        self.normalize = normalize
        self.level_dim = level_dim

    def __call__(self, logits: Any, target: Any, **extras: Any) -> dict[str, torch.Tensor]:
        """Compute the level losses and their weighted mean.

        Args:
            logits: A list/tuple of per-level logits (shapes may differ between levels) or a
                tensor with the levels along ``level_dim``.
            target: The matching targets, same structure and shapes.
            **extras: Forwarded to the mask loss when it accepts them (the same for every level).

        Returns:
            ``{"loss": weighted mean (scalar), "level_0": L_0, "level_1": L_1, ...}``; the level
            values are detached (for logging), the level weights being part of this loss.
        """
        preds, targets = self._levels(logits, "logits"), self._levels(target, "target")
        if len(preds) != len(targets):
            raise ValueError(f"multi_granularity: {len(preds)} logits levels but {len(targets)} target levels.")
        weights = self.weights or [1.0] * len(preds)
        if len(weights) != len(preds):
            raise ValueError(f"multi_granularity: {len(weights)} weights for {len(preds)} levels.")
        values = [
            loss_value(call_loss(self.loss, p, t, **extras), what=f"multi_granularity level {i}")
            for i, (p, t) in enumerate(zip(preds, targets))
        ]
        total = sum(w * v for w, v in zip(weights, values))
        denom = sum(weights) if self.normalize == "weights" else len(values)
        return {"loss": total / denom, **{f"level_{i}": v.detach() for i, v in enumerate(values)}}

    def _levels(self, x: Any, name: str) -> list[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            if x.dim() <= self.level_dim:
                raise ValueError(
                    f"multi_granularity: {name} of shape {tuple(x.shape)} has no level dim {self.level_dim}."
                )
            levels = list(x.unbind(self.level_dim))
        elif isinstance(x, (list, tuple)):
            levels = list(x)
        else:
            raise ValueError(f"multi_granularity: {name} must be a list/tuple or a tensor, got {type(x).__name__}.")
        if not levels:
            raise ValueError(f"multi_granularity: {name} has no levels.")
        return levels
