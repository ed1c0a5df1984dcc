"""Per-term gradient norms at a shared layer, and resolving that layer by name.

How strongly does each loss term pull on the shared weights? ``term_grad_norms`` answers it for
one batch without touching ``.grad`` of the model: every term is differentiated separately with
``torch.autograd.grad(..., retain_graph=True)`` restricted to the given parameters, so autograd
only runs the part of the graph between the losses and those parameters, and the caller's
``total.backward()`` still works afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from samft.registry import did_you_mean
from samft.weighting.base import check_terms


def grad_norms(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[bool]]:
    """L2 norm of the gradient of each loss w.r.t. ``params`` (all of them as one vector).

    Args:
        losses: T scalar tensors sharing a graph (kept: ``retain_graph=True``).
        params: Tensors that require grad, e.g. the parameters of one layer.

    Returns:
        fp32 norms ``[T]`` without a graph (0 for a loss that does not reach ``params``), and for
        each loss whether it reaches any of ``params``.
    """
    norms, connected = [], []
    device = params[0].device if params else torch.device("cpu")
    for loss in losses:
        if not loss.requires_grad:
            norms.append(torch.zeros((), device=device))
            connected.append(False)
            continue
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        used = [g.float().pow(2).sum() for g in grads if g is not None]
        norms.append(torch.stack(used).sum().sqrt() if used else torch.zeros((), device=device))
        connected.append(bool(used))
    return torch.stack([n.to(device) for n in norms]), connected


def term_grad_norms(losses: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor],
                    weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-term gradient norms ``G_i = |w_i| * ||d L_i / d params||`` at a shared layer.

    Args:
        losses: ``{term: scalar tensor}`` from one forward pass (the graph is kept).
        params: The shared layer's parameters (see :func:`resolve_params`), requiring grad.
        weights: Optional ``{term: weight}`` (the same terms as ``losses``); 1 when None.

    Returns:
        ``{term: G_i}`` as floats; 0.0 for a term that does not reach ``params``.

    Raises:
        ValueError: no parameters, a parameter without ``requires_grad``, or weights naming other terms.
    """
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the parameters of the shared layer (see resolve_params).")
    if not all(p.requires_grad for p in params):
        raise ValueError("Every parameter in params must require grad (is the shared layer frozen?).")
    names = list(losses)
    if weights is not None:
        check_terms(names, weights, "weights")
    norms, _ = grad_norms([losses[n] for n in names], params)
    scale = [abs(float(weights[n])) if weights is not None else 1.0 for n in names]
    return {n: float(g) * s for n, g, s in zip(names, norms.cpu(), scale)}


def resolve_params(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Parameters named by ``name``: one parameter, or every parameter of a module.

    A ``module.`` prefix (DistributedDataParallel) is added or dropped as needed, so the same name
    works for a wrapped and an unwrapped model.

    Args:
        model: The model.
        name: A parameter name (``mask_decoder.transformer.norm_final_attn.weight``) or a module name
            (``mask_decoder.transformer.norm_final_attn``), as in ``named_parameters``/``named_modules``.

    Returns:
        A non-empty list of parameters.

    Raises:
        ValueError: unknown name (with close matches) or a module without parameters.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A shared-layer name must be a non-empty parameter or module name, got {name!r}.")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    candidates = [name, f"module.{name}", name.removeprefix("module.")]
    for candidate in candidates:
        if candidate in params:
            return [params[candidate]]
        if candidate and candidate in modules:
            found = list(modules[candidate].parameters())
            if not found:
                raise ValueError(f"Module {candidate!r} of {type(model).__name__} has no parameters; "
                                 "name a layer with weights.")
            return found
    choices = list(params) + [m for m in modules if m]
    hint = did_you_mean(name, choices) or f" Names look like {', '.join(repr(c) for c in choices[-3:])}."
    raise ValueError(f"{type(model).__name__} has no parameter or module named {name!r}.{hint}")
