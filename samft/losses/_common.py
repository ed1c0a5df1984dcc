"""Helpers shared by the built-in losses.

Conventions every built-in loss follows:

* ``loss(logits, target, **options)`` with logits first and ``target`` of the same shape
  ``[N, ...]`` (N masks).
* A target value < 0 marks an ignored pixel, and so does ``valid == False`` (padding added by
  resize-and-pad): ignored pixels contribute no value and receive zero gradient.
* Arithmetic runs in fp32 (fp64 inputs stay fp64) with autocast disabled, so bf16/fp16 logits and
  logits of +-1e4 give finite values and gradients.
* ``reduction``: ``"mean"``, ``"sum"`` or ``"none"``. Per-pixel losses return per-pixel values
  for ``"none"`` (ignored pixels are 0); region losses (dice, IoU, ...) return one value per mask.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch

from samft.checks import at_least, one_of

REDUCTIONS = ("mean", "sum", "none")


def option_checks(**more: Callable[[str, Any], Any]) -> dict[str, Callable[[str, Any], Any]]:
    """The ``checks=`` a built-in loss function registers with (``reduction`` and ``more``), so that
    a bad option fails when the config is loaded rather than when the loss first runs."""
    return {"reduction": functools.partial(one_of, choices=REDUCTIONS), **more}


#: An option check for a value that must be a finite number >= 0 (dice's smooth, focal's gamma).
non_negative = functools.partial(at_least, low=0)


def check_reduction(reduction: str) -> None:
    """Raise an OptionError unless ``reduction`` is one of ``"mean"``, ``"sum"``, ``"none"``."""
    one_of("reduction", reduction, REDUCTIONS)


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-element (or per-mask) loss values.

    Args:
        values: Loss values of any shape.
        reduction: ``"mean"`` (average of all entries), ``"sum"`` or ``"none"`` (unchanged).

    Returns:
        A 0-dim tensor for ``"mean"``/``"sum"``, ``values`` itself for ``"none"``.
    """
    check_reduction(reduction)
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def reduce_pixels(values: torch.Tensor, weight: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-pixel values whose ignored entries are already 0.

    Args:
        values: ``[N, ...]`` per-pixel losses, 0 where ``weight`` is 0.
        weight: ``[N, ...]`` 1 for counted pixels, 0 for ignored ones.
        reduction: ``"mean"`` divides the sum by the number of counted pixels (0 when there is
            none), ``"sum"`` sums, ``"none"`` returns ``values``.

    Returns:
        A 0-dim tensor, or ``values`` for ``"none"``.
    """
    check_reduction(reduction)
    if reduction == "mean":
        return values.sum() / weight.sum().clamp(min=1.0)
    if reduction == "sum":
        return values.sum()
    return values


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision and fp32 inputs; fp64 stays fp64 (gradcheck)."""
    return torch.promote_types(tensor.dtype, torch.float32)


@contextlib.contextmanager
def fp32_compute(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so that the losses' arithmetic is not cast down."""
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def check_pair(logits: torch.Tensor, target: torch.Tensor, *, min_dim: int = 1) -> None:
    """Validate the ``(logits, target)`` pair every loss receives.

    Args:
        logits: Floating-point tensor ``[N, ...]``.
        target: Tensor of the same shape.
        min_dim: Fewest dimensions the loss needs (2 for per-mask losses: ``[N, pixels...]``).

    Raises:
        ValueError: On a non-tensor, non-float logits, a shape mismatch or too few dimensions.
    """
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor; got {_describe(logits)}.")
    if not torch.is_tensor(target):
        raise ValueError(f"target must be a tensor; got {type(target).__name__}.")
    if logits.shape != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape "
            "[N, ...]; resize the target to the logits' resolution (or the logits to the target's)."
        )
    if logits.dim() < min_dim:
        raise ValueError(f"logits must have at least {min_dim} dimensions [N, ...]; got {tuple(logits.shape)}.")


def broadcast_valid(valid: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Bring a validity mask to ``shape`` as a bool tensor.

    Args:
        valid: Bool (or 0/1) tensor broadcastable to ``shape``; a ``[N, H, W]`` mask is accepted for
            ``[N, C, H, W]`` targets and a ``[N, 1, H, W]`` mask for ``[N, H, W]`` targets.
        shape: Target shape.

    Returns:
        Bool tensor of ``shape`` (an expanded view where possible).
    """
    if not torch.is_tensor(valid):
        raise ValueError(f"valid must be a bool tensor; got {type(valid).__name__}.")
    valid = valid if valid.dtype == torch.bool else valid != 0
    if valid.dim() == len(shape) + 1 and valid.shape[1] == 1:
        valid = valid.squeeze(1)
    elif valid.dim() == len(shape) - 1 and len(shape) >= 3:
        valid = valid.unsqueeze(1)
    try:
        return valid.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"valid {tuple(valid.shape)} does not broadcast to the target's shape {tuple(shape)}; "
            "pass a [N, H, W] (or [N, 1, H, W]) padding mask."
        ) from None


def split_ignore(
    target: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Separate ignored pixels (target < 0 or ``valid`` False) from the target.

    Args:
        target: ``[N, ...]`` ground truth; values < 0 are ignored.
        valid: Optional bool mask broadcastable to ``target`` (False = padding, ignored).
        dtype: Floating dtype of the results.

    Returns:
        ``(clean, weight)``: the target with ignored pixels set to 0, and a 0/1 weight that is 0 on
        ignored pixels. Both ``[N, ...]`` in ``dtype``.
    """
    target = target.to(dtype)
    keep = target >= 0
    if valid is not None:
        keep = keep & broadcast_valid(valid, target.shape)
    return torch.where(keep, target, 0.0), keep.to(dtype)


def safe_ratio(num: torch.Tensor, den: torch.Tensor, empty: float) -> torch.Tensor:
    """``num / den`` where ``den > 0``, else ``empty``; gradients stay finite in both branches."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, 1.0), empty)


def per_mask(values: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Average per-pixel values over the valid pixels of each mask.

    Args:
        values: ``[N, ...]`` per-pixel values.
        valid: Optional bool mask broadcastable to ``values`` (see ``broadcast_valid``); invalid
            entries are excluded even when they hold inf or NaN.

    Returns:
        ``[N]``: the mean over each mask's valid pixels; 0 for a mask without valid pixels.
    """
    if values.dim() < 1:
        raise ValueError("per_mask needs values of shape [N, ...]; got a 0-dim tensor.")
    flat = values.reshape(values.shape[0], -1)
    if valid is None:
        return flat.mean(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    keep = broadcast_valid(valid, values.shape).reshape(flat.shape)
    total = torch.where(keep, flat, 0.0).sum(1)
    return total / keep.sum(1).clamp(min=1).to(flat.dtype)


def call_loss(fn: Callable[..., Any], logits: torch.Tensor, target: torch.Tensor, **extras: Any) -> Any:
    """Call a configured loss with the batch extras its signature accepts.

    The engine offers every loss the same superset of extras (``iou_pred``, ``candidates``,
    ``valid``, ``dist_map``, ``num_masks``, ``epoch``, ``step``); each loss receives only the
    keywords it declares, or all of them when it takes ``**kwargs``. Options already bound by the
    config (keywords of a ``functools.partial``) win over extras of the same name.

    Args:
        fn: A loss: a function, a ``functools.partial`` from ``LOSSES.build``, or a callable object
            (an ``nn.Module`` is inspected through its ``forward``).
        logits: First positional argument.
        target: Second positional argument.
        extras: Candidate keyword arguments.

    Returns:
        Whatever ``fn`` returns.

    Raises:
        ValueError: When ``fn`` requires a keyword that ``extras`` does not provide.
    """
    accepted, required, bound = _keywords(fn)
    kwargs = {k: v for k, v in extras.items() if k not in bound and (accepted is None or k in accepted)}
    missing = [name for name in required if name not in kwargs and name not in bound]
    if missing:
        raise ValueError(
            f"The loss {_name(fn)} requires {', '.join(missing)}, which the caller did not provide "
            f"(offered: {', '.join(sorted(extras)) or 'nothing'})."
        )
    return fn(logits, target, **kwargs)


def _keywords(fn: Callable[..., Any]) -> tuple[set[str] | None, list[str], set[str]]:
    """(accepted keywords or None for **kwargs, required keyword-only names, partial-bound names)."""
    bound = set(fn.keywords) if isinstance(fn, functools.partial) else set()
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    params = list(inspect.signature(target).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None, [], bound
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # The first two positional slots take logits and target, so they are not extras.
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    accepted = {p.name for p in params if p.kind in keyword_kinds and p not in positional}
    required = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    return accepted, required, bound


def _name(fn: Callable[..., Any]) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return repr(getattr(inner, "__qualname__", type(inner).__name__))


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def declared_terms(spec: Any) -> list[str]:
    """The term names a loss spec's results carry, as the loss declares them when it registers
    (``terms=("focal", "dice")`` or ``terms=callable(options) -> names``; a plugin sets a ``terms``
    attribute on its callable). Undeclared: one term, ``loss`` (a loss returning a tensor)."""
    from samft.registry import LOSSES

    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name")
    terms = LOSSES.info(name).get("terms", getattr(LOSSES.get(name), "terms", ("loss",)))
    return list(terms(spec) if callable(terms) else terms)


def loss_terms(out: torch.Tensor | dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weightable terms of a loss result: 0-dim tensors that carry a gradient.

    A loss returning a single tensor has one term, ``loss``. A dict's ``loss`` entry is the loss's own
    weighted sum; the weighting strategy recombines the terms instead, so it is not a term itself.
    """
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    terms = {k: v for k, v in out.items()
             if k != "loss" and isinstance(v, torch.Tensor) and v.ndim == 0 and v.requires_grad}
    return terms or {"loss": out["loss"]}


def loss_stats(out: torch.Tensor | dict[str, Any]) -> dict[str, float]:
    """Scalar statistics a loss reports beside its terms (coverage, current weights, ...)."""
    if isinstance(out, torch.Tensor):
        return {}
    return {k: float(v) for k, v in out.items()
            if k != "loss" and (isinstance(v, (int, float)) or
                                (isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad))}
