"""The contract every loss-weighting strategy follows, and the checks they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from samft.checks import fail
from samft.registry import did_you_mean


class WeightingStrategy(nn.Module):
    """Combines per-term losses into one total; subclasses implement :meth:`forward`.

    The engine's calls, in order::

        strategy = WEIGHTINGS.build({"name": ..., **options}, terms=["focal", "dice", "iou"])
        strategy.bind(model)                        # once, after the model is built
        groups = strategy.param_groups(base_lr)     # learnable weights for the model's optimiser
        total, weights = strategy(losses, step)     # every micro-batch; total.backward() follows
        strategy.step_end(stepped)                  # once per optimiser step, on every rank
        strategy.epoch_end(epoch_losses)            # after every epoch (means over all ranks)
        strategy.state_dict() / load_state_dict()   # everything needed to resume exactly

    Args:
        terms: Names of the loss terms, in a fixed order (e.g. ``["focal", "dice", "iou"]``).
    """

    def __init__(self, terms: Sequence[str]) -> None:
        super().__init__()
        if isinstance(terms, str) or not isinstance(terms, Sequence) or len(terms) == 0:
            raise ValueError(f"terms must be a non-empty list of loss-term names, got {terms!r}.")
        if any(not isinstance(t, str) or not t for t in terms):
            raise ValueError(f"Every loss-term name must be a non-empty string, got {list(terms)!r}.")
        if len(set(terms)) != len(terms):
            raise ValueError(f"Loss-term names must be unique, got {list(terms)!r}.")
        self.terms: tuple[str, ...] = tuple(str(t) for t in terms)

    def bind(self, model: nn.Module) -> None:
        """Give the strategy the model it weights the losses of (no-op unless a strategy needs it)."""

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimiser param groups of the strategy's learnable parameters (none by default)."""
        return []

    def step_end(self, stepped: bool) -> None:
        """Called once per optimiser step, after the engine decided (on all ranks alike) whether the
        step was taken; ``stepped`` is False for a skipped step (non-finite loss, fp16 overflow).
        A strategy with its own updates makes them here, once per step however many micro-batches
        it saw (no-op by default)."""

    def epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Called after every epoch with the mean unweighted loss of each term (no-op by default)."""

    def stack_losses(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The losses as one fp32 tensor ``[T]`` in ``terms`` order, after checking names and shapes.

        Raises:
            ValueError: a configured term is missing, an unknown term is present, or a loss is not
                a scalar tensor.
        """
        check_terms(self.terms, losses, "losses")
        for name in self.terms:
            value = losses[name]
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"Loss term {name!r} must be a scalar tensor, got {shape}.")
        return torch.stack([losses[name].reshape(()).float() for name in self.terms])

    def as_dict(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{term: weight}`` of a ``[T]`` tensor, for logging, as detached 0-dim tensors: reading them
        as numbers would make the host wait for the device, so the engine does it at log steps only."""
        return dict(zip(self.terms, weights.detach().unbind()))

    def extra_repr(self) -> str:
        return f"terms={list(self.terms)}"


def check_terms(terms: Sequence[str], given: Mapping[str, Any], what: str) -> None:
    """Raise a ValueError naming missing and unknown terms when ``given``'s keys differ from ``terms``."""
    missing = [t for t in terms if t not in given]
    unknown = [k for k in given if k not in terms]
    if not missing and not unknown:
        return
    parts = []
    if missing:
        parts.append(f"missing term(s) {', '.join(repr(t) for t in missing)}")
    for key in unknown:
        parts.append(f"unknown term {key!r}.{did_you_mean(str(key), list(terms))}".rstrip("."))
    raise ValueError(
        f"The {what} do not match the configured terms {list(terms)}: {'; '.join(parts)}. "
        "The weighting is built with the terms the loss returns; rebuild it when the loss changes."
    )


def per_term(option: str, value: Any, terms: Sequence[str], default: Any) -> dict[str, Any]:
    """Expand an option given once for all terms or as ``{term: value}`` into a dict over ``terms``.

    A mapping with a ``name`` key is one plugin spec (a schedule, ``{name: linear, ...}``) given
    once for all terms, not a per-term mapping: ``name`` is never a loss term's key, and the config
    check reads the option the same way. Unlisted terms get ``default``; a listed name that is not
    a term is an :class:`~samft.checks.OptionError` naming it.
    """
    if value is None:
        return {t: default for t in terms}
    if not isinstance(value, Mapping) or "name" in value:
        return {t: value for t in terms}
    for key in value:
        if key not in terms:
            raise fail(
                option,
                f"Option {option} names {key!r}, which is not a loss term.{did_you_mean(str(key), list(terms))}"
                f" The terms are {list(terms)}.",
                entry=str(key),
            )
    return {t: value.get(t, default) for t in terms}
