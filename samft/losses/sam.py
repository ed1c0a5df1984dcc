"""SAM's training objective: focal + dice mask loss with min-loss output selection, IoU head loss.

``sam`` is the loss the engine calls on the decoder's ``M`` outputs per mask. Its mask terms run
through ``_MaskStats``, a fused autograd function that computes per-(mask, output) focal and dice
and the IoU target in one chunked pass without keeping ``[N, M, H, W]`` temporaries, and whose
analytic backward touches only the outputs that receive gradient (the selected ones).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from samft.checks import at_least, one_of
from samft.losses._common import (
    broadcast_valid,
    check_pair,
    check_reduction,
    compute_dtype,
    fp32_compute,
    non_negative,
    option_checks,
    per_mask,
    reduce,
    safe_ratio,
    split_ignore,
)
from samft.losses.overlap import dice
from samft.losses.pixel import focal_terms
from samft.registry import LOSSES

IOU_LOSSES = ("mse", "l1", "smooth_l1")
EMPTY_TARGET = ("zero", "keep")


@dataclass(frozen=True)
class ChunkPlan:
    """How the fused mask loss walks ``[masks, outputs, pixels]``.

    Attributes:
        elements: Elements handled per chunk.
        sparse_backward: Compute gradient rows only for the (mask, output) pairs that receive
            gradient (found with ``nonzero``), instead of all pairs with zero scales.
    """

    elements: int
    sparse_backward: bool


# CPU: chunks whose temporaries stay in cache amortise the per-op overhead, and the selected-pairs
# backward skips ~3/4 of the work (one of four outputs is selected); ``nonzero`` costs nothing there.
CPU_PLAN = ChunkPlan(elements=1 << 18, sparse_backward=True)
# GPUs: every op of every chunk is a kernel launch, so a few large chunks (64 x 4 x 256 x 256 is one),
# and a dense backward, because ``nonzero`` would make the host wait for the device every step.
ACCELERATOR_PLAN = ChunkPlan(elements=1 << 25, sparse_backward=False)


def chunk_plan(device: torch.device) -> ChunkPlan:
    """The chunking that suits ``device``."""
    return CPU_PLAN if device.type == "cpu" else ACCELERATOR_PLAN


def _iou_regression(pred: torch.Tensor, actual: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(pred, actual, reduction="none")
    if kind == "l1":
        return F.l1_loss(pred, actual, reduction="none")
    return F.smooth_l1_loss(pred, actual, reduction="none")


_iou_loss_check = functools.partial(one_of, choices=IOU_LOSSES)
_empty_target_check = functools.partial(one_of, choices=EMPTY_TARGET)


def _normaliser(num_masks: float | torch.Tensor | None, count: int, like: torch.Tensor) -> float | torch.Tensor:
    """``num_masks`` as a Python number or a 0-dim tensor on ``like``'s device (``count`` when None).

    A number stays a number: dividing by it needs no host-to-device copy."""
    if num_masks is None:
        return float(max(count, 1))
    if torch.is_tensor(num_masks):
        if num_masks.numel() != 1:
            raise ValueError(f"num_masks must be a number or a 0-dim tensor; got shape {tuple(num_masks.shape)}.")
        return num_masks.reshape(()).to(like)
    if not num_masks > 0:
        raise ValueError(f"num_masks must be > 0 (the engine clamps the all-reduced count to >= 1); got {num_masks}.")
    return float(num_masks)


@LOSSES.register("iou_prediction", terms=("loss",), checks=option_checks(iou_loss=_iou_loss_check))
def iou_prediction(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    iou_pred: torch.Tensor,
    iou_loss: str = "mse",
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Regression loss of the IoU head against the IoU of the predicted mask (SAM's IoU loss).

    The regression target is ``|(x > 0) & (t > 0.5)| / max(|(x > 0) | (t > 0.5)|, 1)`` over the
    counted pixels, computed without gradient; only ``iou_pred`` receives gradient.

    Args:
        logits: ``[N, ..., H, W]`` mask logits (e.g. ``[N, M, H, W]`` for M decoder outputs).
        target: Same shape as ``logits``, or ``[N, H, W]`` shared by the M outputs; 0/1 values,
            values < 0 ignored.
        iou_pred: ``logits.shape[:-2]`` predicted IoUs (``[N, M]`` from SAM's decoder).
        iou_loss: ``"mse"`` (SAM), ``"l1"`` or ``"smooth_l1"`` (beta 1).
        reduction: ``"mean"``/``"sum"`` over all entries, or ``"none"`` (shape of ``iou_pred``).
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        fp32 scalar, or per-entry values for ``"none"``. Empty target and empty prediction:
        the IoU target is 0 (union clamped to 1).
    """
    _iou_loss_check("iou_loss", iou_loss)
    check_reduction(reduction)
    if target.dim() == logits.dim() - 1 and logits.dim() >= 3:
        target = target.unsqueeze(1).expand(logits.shape)
        valid = None if valid is None else broadcast_valid(valid, logits.shape[:1] + logits.shape[2:]).unsqueeze(1)
    check_pair(logits, target, min_dim=2)
    if tuple(iou_pred.shape) != tuple(logits.shape[:-2]):
        raise ValueError(
            f"iou_pred {tuple(iou_pred.shape)} must have the logits' leading shape {tuple(logits.shape[:-2])} "
            "(one prediction per mask and output)."
        )
    with fp32_compute(logits.device):
        with torch.no_grad():
            _, weight = split_ignore(target, valid, torch.float32)
            counted = weight > 0
            pred, truth = (logits > 0) & counted, (target > 0.5) & counted
            inter = (pred & truth).flatten(-2).sum(-1)
            union = (pred | truth).flatten(-2).sum(-1)
            actual = inter.float() / union.clamp(min=1).float()
        return reduce(_iou_regression(iou_pred.float(), actual, iou_loss), reduction)


@LOSSES.register("sam_mask", checks=option_checks(empty_target=_empty_target_check))
def sam_mask(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    dice_smooth: float = 1.0,
    num_masks: float | torch.Tensor | None = None,
    empty_target: str = "zero",
    reduction: str = "mean",
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SAM's mask loss for single-output masks: ``focal_weight * focal + dice_weight * dice``.

    Per mask, ``focal`` is the sigmoid focal loss averaged over the counted pixels and ``dice``
    the soft dice loss (``smooth`` = ``dice_smooth``). Use ``sam`` for multi-output decoders.

    Args:
        logits: ``[N, ...]`` mask logits.
        target: ``[N, ...]`` targets in [0, 1]; values < 0 are ignored.
        focal_weight: Weight of the focal term (20.0, SAM's 20:1).
        dice_weight: Weight of the dice term (1.0).
        focal_alpha: Focal alpha (0.25; < 0 disables it).
        focal_gamma: Focal gamma (2.0).
        dice_smooth: Dice smoothing (1.0, SAM 2).
        num_masks: Normaliser of the ``"mean"`` reduction (None: N).
        empty_target: ``"zero"``: a mask whose target has no foreground among its counted pixels
            contributes 0 (SAM 2); ``"keep"``: it is scored like any other mask.
        reduction: ``"mean"`` (sum over masks / ``num_masks``), ``"sum"``, or ``"none"`` (``[N]``).
        valid: Optional bool mask broadcastable to ``target``; False pixels are ignored.

    Returns:
        ``{"loss", "focal", "dice"}``: the weighted total and the unweighted components, each
        fp32 0-dim (``[N]`` for ``"none"``).
    """
    check_pair(logits, target, min_dim=2)
    check_reduction(reduction)
    _empty_target_check("empty_target", empty_target)
    dtype = compute_dtype(logits)
    with fp32_compute(logits.device):
        clean, weight = split_ignore(target, valid, dtype)
        focal = per_mask(focal_terms(logits.to(dtype), clean, focal_alpha, focal_gamma), weight > 0)
        dice_values = dice(logits, target, smooth=dice_smooth, reduction="none", valid=valid)
        if empty_target == "zero":
            present = ((clean * weight).flatten(1).sum(1) > 0).to(dtype)
            focal, dice_values = focal * present, dice_values * present
        terms = {"focal": focal, "dice": dice_values}
        if reduction == "mean":
            norm = _normaliser(num_masks, logits.shape[0], focal)
            terms = {k: v.sum() / norm for k, v in terms.items()}
        elif reduction == "sum":
            terms = {k: v.sum() for k, v in terms.items()}
        return {"loss": focal_weight * terms["focal"] + dice_weight * terms["dice"], **terms}


class _MaskStats(torch.autograd.Function):
    """Per-(mask, output) focal and dice losses and the IoU target, fused and chunked.

    Forward inputs: logits ``[N, M, P]``, target ``[N, P]`` (0/1, ignored pixels 0), weight
    ``[N, P]`` 0/1 or None (no ignored pixel), and the constants alpha, gamma, smooth.
    Outputs ``[N, M]``: focal (mean over counted pixels), dice, IoU target (not differentiable).
    """

    @staticmethod
    def forward(ctx, logits, target, weight, alpha, gamma, smooth):  # noqa: D102
        dtype = compute_dtype(logits)
        n, m, _ = logits.shape
        sums = logits.new_zeros((5, n, m), dtype=dtype)  # focal, sum p, sum p t, intersection, area
        plan = chunk_plan(logits.device)
        for lo, hi in _chunks(n, logits.shape[1] * logits.shape[2], plan):
            x = logits[lo:hi].to(dtype)
            t = target[lo:hi, None]
            w = None if weight is None else weight[lo:hi, None]
            _chunk_sums(x, t, w, alpha, gamma, sums[:, lo:hi])
        counted = target.new_full((n,), target.shape[1]) if weight is None else weight.sum(1)
        target_sum = target.sum(1)
        focal = -sums[0] / counted.clamp(min=1)[:, None]
        num, den = 2.0 * sums[2] + smooth, sums[1] + target_sum[:, None] + smooth
        dice = 1.0 - safe_ratio(num, den, empty=1.0)
        iou = sums[3] / (sums[4] + target_sum[:, None] - sums[3]).clamp(min=1)
        ctx.save_for_backward(logits, target, weight, counted, num, den)
        ctx.constants = (alpha, gamma)
        ctx.mark_non_differentiable(iou)
        return focal, dice, iou

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_focal, grad_dice, _grad_iou):  # noqa: D102
        logits, target, weight, counted, num, den = ctx.saved_tensors
        with fp32_compute(logits.device):
            return _mask_stats_grad(logits, target, weight, counted, num, den, *ctx.constants, grad_focal, grad_dice)


def _mask_stats_grad(logits, target, weight, counted, num, den, alpha, gamma, grad_focal, grad_dice):
    """Backward of ``_MaskStats``: gradient rows only for (mask, output) pairs with a non-zero grad."""
    dtype = compute_dtype(logits)
    grad = torch.zeros_like(logits)
    focal_scale = grad_focal / counted.clamp(min=1)[:, None]
    # d dice / d sum(p t) and d dice / d sum(p), zero where dice is defined as constant.
    positive = den > 0
    safe_den = torch.where(positive, den, 1.0)
    coef_pt = torch.where(positive, -2.0 / safe_den, 0.0) * grad_dice
    coef_p = torch.where(positive, num / safe_den.square(), 0.0) * grad_dice
    plan = chunk_plan(logits.device)
    if not plan.sparse_backward:  # every pair; unselected ones have zero scales
        for lo, hi in _chunks(logits.shape[0], logits.shape[1] * logits.shape[2], plan):
            w = None if weight is None else weight[lo:hi, None]
            g = _chunk_grad(logits[lo:hi].to(dtype), target[lo:hi, None], w, alpha, gamma,
                            focal_scale[lo:hi, :, None], coef_pt[lo:hi, :, None], coef_p[lo:hi, :, None])
            grad[lo:hi] = g.to(grad.dtype)
        return grad, None, None, None, None, None
    pairs = ((focal_scale != 0) | (coef_pt != 0) | (coef_p != 0)).nonzero()
    for lo, hi in _chunks(pairs.shape[0], logits.shape[-1], plan):
        rows, outs = pairs[lo:hi].unbind(1)
        x = logits[rows, outs].to(dtype)
        w = None if weight is None else weight[rows]
        g = _chunk_grad(x, target[rows], w, alpha, gamma, focal_scale[rows, outs, None],
                        coef_pt[rows, outs, None], coef_p[rows, outs, None])
        grad.index_put_((rows, outs), g.to(grad.dtype))
    return grad, None, None, None, None, None


def _chunks(count: int, elements_per_item: int, plan: ChunkPlan):
    step = max(1, plan.elements // max(elements_per_item, 1))
    for lo in range(0, count, step):
        yield lo, min(lo + step, count)


def _chunk_sums(x, t, w, alpha, gamma, out) -> None:
    """Add one chunk's per-(mask, output) sums into ``out`` ``[5, c, M]``.

    Hard targets make ``1 - p_t = |p - t|`` and ``log p_t = logsigmoid(x (2t - 1))``, so two
    sigmoids and one log per element give focal, dice and IoU sums.
    """
    log_pt = _log_sigmoid(x * (2.0 * t - 1.0))
    p = torch.sigmoid(x)
    focal = (p - t).square_() if gamma == 2.0 else (p - t).abs_().pow_(gamma)
    focal.mul_(log_pt)  # -(1 - p_t)^gamma * ce
    if alpha >= 0 or w is not None:
        focal.mul_(_alpha_weight(t, w, alpha))
    out[0] += focal.sum(-1)
    if w is not None:
        p.mul_(w)
    out[1] += p.sum(-1)
    out[2] += p.mul_(t).sum(-1)
    # sign().clamp(0) is (x > 0) as a float without bool reductions, which are slow on CPU.
    hard = x.sign().clamp_(min=0.0)
    out[4] += (hard if w is None else hard * w).sum(-1)
    out[3] += hard.mul_(t).sum(-1)


def _log_sigmoid(s: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(s)``, finite for any ``s``.

    On CPU, ATen's ``log_sigmoid`` and ``log1p`` run ~10x slower than ``sigmoid`` and ``log``, so
    this computes ``log(sigmoid(max(s, -80))) + min(s + 80, 0)``: below -80, ``log sigmoid(s) = s``
    to within e^-80, and above it ``sigmoid`` neither underflows nor loses more than 6e-7 absolute
    (where ``1 - p_t`` rounds; the focal factor ``(1 - p_t)^gamma`` multiplies that by ~1e-7).
    """
    if s.device.type != "cpu":
        return F.logsigmoid(s)
    return torch.sigmoid(s.clamp(min=-80.0)).log_().add_((s + 80.0).clamp_(max=0.0))


def _alpha_weight(t: torch.Tensor, w: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``alpha_t * weight`` per pixel (``alpha_t = 1`` when alpha < 0)."""
    if alpha < 0:
        return w
    alpha_t = (1.0 - alpha) + (2.0 * alpha - 1.0) * t
    return alpha_t if w is None else alpha_t * w


def _chunk_grad(x, t, w, alpha, gamma, focal_scale, coef_pt, coef_p) -> torch.Tensor:
    """d(loss)/dx for one chunk of selected (mask, output) rows ``[k, P]``.

    With ``s = x (2t - 1)``, ``q = 1 - p_t = sigmoid(-s)`` and ``log p_t = logsigmoid(s)``:
    ``dFL/dx = (2t - 1) alpha_t q^gamma (gamma (1 - q) log p_t - q)`` and
    ``d dice/dx = p (1 - p) (coef_pt t + coef_p)`` where ``p (1 - p) = q (1 - q)``.
    """
    sign = 2.0 * t - 1.0
    log_pt = _log_sigmoid(x * sign)
    q = (torch.sigmoid(x) - t).abs_()
    one_minus_q = 1.0 - q
    focal = (one_minus_q * log_pt).mul_(gamma).sub_(q)
    focal.mul_(q.square() if gamma == 2.0 else q.pow(gamma))
    weight = sign * focal_scale
    if alpha >= 0 or w is not None:
        weight = weight * _alpha_weight(t, w, alpha)
    grad = focal.mul_(weight)
    region = (t * coef_pt).add_(coef_p).mul_(q.mul_(one_minus_q))
    if w is not None:
        region.mul_(w)
    return grad.add_(region)


def _sam_inputs(logits, target, valid, candidates):
    """Validate ``sam``'s inputs; return flat target ``[N, P]``, weight or None, candidates ``[N, M]``."""
    if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.dim() != 4:
        raise ValueError(f"logits must be a float tensor [N, M, H, W]; got {getattr(logits, 'shape', type(logits))}.")
    n, m, h, w = logits.shape
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (n, h, w):
        raise ValueError(f"target must be [N, H, W] = {(n, h, w)} for logits {tuple(logits.shape)}; "
                         f"got {tuple(target.shape)}.")
    flat, weight = _binary_target(target.to(compute_dtype(logits)), valid)
    if candidates is None:
        candidates = torch.ones(n, m, dtype=torch.bool, device=logits.device)
    elif tuple(candidates.shape) != (n, m):
        raise ValueError(f"candidates must be a bool [N, M] = {(n, m)}; got {tuple(candidates.shape)}.")
    candidates = candidates.to(device=logits.device, dtype=torch.bool)
    if n and _checkable(candidates) and not bool(candidates.any(1).all()):
        raise ValueError("every mask needs at least one candidate output (a row of candidates is all False).")
    return flat, weight, candidates


def _checkable(tensor: torch.Tensor) -> bool:
    """Value checks read tensors back to the host: free on the CPU, a pipeline stall on a GPU, where
    the engine's inputs (0/1 targets, candidate rows) are valid by construction and are not checked."""
    return tensor.device.type == "cpu"


def _binary_target(target: torch.Tensor, valid: torch.Tensor | None):
    """``[N, H, W]`` target -> ``([N, P]`` 0/1 target with ignored pixels 0, ``[N, P]`` weight or None).

    Checked in a few full passes (min/max, then ``sum t (1 - t)``, 0 exactly for 0/1 values)
    because element-wise comparisons with bool reductions cost more than the loss itself on CPU.
    """
    if target.numel() == 0:
        return target.flatten(1), None
    if not _checkable(target):  # no host round trip: split unconditionally, trust the values
        target, weight = split_ignore(target, valid, target.dtype)
        return target.flatten(1), weight.flatten(1)
    low, high = (v.item() for v in torch.aminmax(target))
    weight = None
    if valid is not None or low < 0:
        target, weight = split_ignore(target, valid, target.dtype)
        weight = weight.flatten(1)
    target = target.flatten(1)
    if not (high <= 1 and (target * (1.0 - target)).sum().item() == 0):
        raise ValueError("target must hold 0/1 values (and < 0 for ignored pixels); threshold soft masks first.")
    return target, weight


def _sam_terms(options: Mapping[str, Any]) -> tuple[str, ...]:
    return ("focal", "dice", "iou", *(options.get("extra_terms") or {}))


@LOSSES.register("sam", terms=_sam_terms, checks=option_checks(
    iou_loss=_iou_loss_check, empty_target=_empty_target_check, focal_gamma=non_negative))
def sam(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    iou_pred: torch.Tensor,
    candidates: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    num_masks: float | torch.Tensor | None = None,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    dice_smooth: float = 1.0,
    iou_loss: str = "mse",
    supervise_all_iou: bool = True,
    empty_target: str = "zero",
    extra_terms: Mapping[str, Any] | None = None,
    dist_map: torch.Tensor | None = None,
    epoch: int | None = None,
    step: int | None = None,
) -> dict[str, torch.Tensor]:
    """SAM's full training objective (SAM paper App. A, SAM 2 ``MultiStepMultiMasksAndIous``).

    For each mask n and candidate output m: ``focal[n, m]`` (sigmoid focal, alpha 0.25, gamma 2,
    mean over counted pixels), ``dice[n, m]`` (smooth 1) and the IoU target
    ``|(x > 0) & t| / max(|(x > 0) | t|, 1)`` (no gradient). The output with the lowest
    ``focal_weight * focal + dice_weight * dice`` among the candidates is selected; only it gets
    mask-loss gradient. The IoU head is regressed (``iou_loss``) on every candidate (mean over
    candidates) if ``supervise_all_iou``, else on the selected output only.

    Args:
        logits: ``[N, M, H, W]`` mask logits, N masks x M decoder outputs (M = 1, 3 or 4).
        target: ``[N, H, W]`` (or ``[N, 1, H, W]``) 0/1 ground truth; values < 0 are ignored.
        iou_pred: ``[N, M]`` IoU-head predictions.
        candidates: ``[N, M]`` bool, the outputs competing for each mask (SAM: outputs 1..3 for a
            single-point prompt, output 0 otherwise). None: all outputs.
        valid: Bool mask broadcastable to ``[N, H, W]`` (``[N, 1, H, W]`` accepted); False on padding.
        num_masks: Normaliser (float or 0-dim tensor); None: N. The engine passes the count
            all-reduced across ranks and clamped >= 1.
        focal_weight, dice_weight, iou_weight: Term weights (20, 1, 1).
        focal_alpha, focal_gamma: Focal constants (0.25, 2.0; alpha < 0 disables alpha).
        dice_smooth: Dice smoothing (1.0).
        iou_loss: ``"mse"`` (SAM), ``"l1"`` or ``"smooth_l1"``.
        supervise_all_iou: Supervise the IoU head on all candidates (True, SAM 2) or the selected one.
        extra_terms: More mask losses on the selected output, ``{term: {name: ..., **options}}``
            built through the registry, e.g. ``{boundary: {name: boundary}}``. Each is computed with
            ``reduction="none"`` when it supports it, averaged per mask over valid pixels and summed
            over masks / ``num_masks`` like focal and dice (a loss without per-mask values gives its
            own mean). Each becomes a term of the result (weight 1 in ``loss``; the engine's
            weighting strategy sets the training weight).
        dist_map, epoch, step: Batch values the engine offers; passed on to the extra terms that
            accept them (e.g. ``boundary`` needs ``dist_map``). Declared explicitly, not as
            ``**kwargs``, so that a misspelt option of ``sam`` is still rejected.
        empty_target: ``"zero"`` (default, SAM 2): a mask without foreground among its counted
            pixels contributes 0 to every term (the engine cannot tell an object that left the
            crop from a real empty mask); ``"keep"``: it is scored normally, which trains the
            model to predict empty masks.

    Returns:
        ``{"loss", "focal", "dice", "iou", "selected"}``: ``loss = focal_weight * focal +
        dice_weight * dice + iou_weight * iou`` (fp32 0-dim); the components unweighted, each a
        sum over masks divided by ``num_masks``; ``selected`` LongTensor ``[N]``, no gradient.
    """
    _iou_loss_check("iou_loss", iou_loss)
    _empty_target_check("empty_target", empty_target)
    at_least("focal_gamma", focal_gamma, 0)
    flat_target, weight, candidates = _sam_inputs(logits, target, valid, candidates)
    n, m = logits.shape[:2]
    if tuple(iou_pred.shape) != (n, m):
        raise ValueError(f"iou_pred must be [N, M] = {(n, m)}; got {tuple(iou_pred.shape)}.")
    with fp32_compute(logits.device):
        focal, dice_values, iou_target = _MaskStats.apply(
            logits.reshape(n, m, flat_target.shape[1]), flat_target, weight, focal_alpha, focal_gamma, dice_smooth
        )
        norm = _normaliser(num_masks, n, focal)
        result = _combine(
            focal, dice_values, iou_target, iou_pred, candidates, flat_target, weight,
            norm, (focal_weight, dice_weight, iou_weight), iou_loss, supervise_all_iou, empty_target,
        )
        extras = {k: v for k, v in (("dist_map", dist_map), ("epoch", epoch), ("step", step)) if v is not None}
        for term, spec in (extra_terms or {}).items():
            result[term] = _extra_term(term, spec, logits, target, valid, result["selected"], norm, extras)
            result["loss"] = result["loss"] + result[term]
        return result


# The objective's own result keys: an extra term may not take one of these names.
OWN_KEYS = ("loss", "focal", "dice", "iou", "selected")
_BUILT: dict[str, Any] = {}


def _built(spec: Mapping[str, Any]) -> Any:
    """``LOSSES.build(spec)``, once per distinct spec (the objective runs every round of every step)."""
    key = repr(sorted((k, repr(v)) for k, v in spec.items()))
    if key not in _BUILT:
        _BUILT[key] = LOSSES.build(spec)
    return _BUILT[key]


def _extra_term(term: str, spec: Any, logits, target, valid, selected, norm, extras) -> torch.Tensor:
    """One extra mask loss on the selected output of every mask, normalised like focal and dice."""
    from samft.losses._common import call_loss  # the engine's calling convention, one place

    if term in OWN_KEYS:
        raise ValueError(f"extra_terms: {term!r} is a name the sam objective already uses; rename the term.")
    fn = _built(spec if isinstance(spec, Mapping) else {"name": str(spec)})
    rows = torch.arange(logits.shape[0], device=logits.device)
    chosen = logits[rows, selected]
    target = target.reshape(chosen.shape)
    offered = {**extras, "valid": valid, "reduction": "none"}
    values = call_loss(fn, chosen, target, **offered)
    values = values["loss"] if isinstance(values, Mapping) else values
    if values.dim() == 0:
        return values.float()
    if values.dim() > 1:
        values = per_mask(values.float(), valid)
    return values.float().sum() / norm


def _combine(focal, dice_values, iou_target, iou_pred, candidates, target, weight, norm, weights,
             iou_loss, supervise_all_iou, empty_target) -> dict[str, torch.Tensor]:
    """Select the min-loss candidate per mask and assemble the normalised terms."""
    focal_weight, dice_weight, iou_weight = weights
    with torch.no_grad():
        combo = focal_weight * focal + dice_weight * dice_values
        selected = combo.masked_fill(~candidates, float("inf")).argmin(1)
    rows = torch.arange(focal.shape[0], device=focal.device)
    iou_values = _iou_regression(iou_pred.to(focal.dtype), iou_target, iou_loss)
    if supervise_all_iou:
        cand = candidates.to(focal.dtype)
        iou_values = (iou_values * cand).sum(1) / cand.sum(1)
    else:
        iou_values = iou_values[rows, selected]
    per_mask_terms = {"focal": focal[rows, selected], "dice": dice_values[rows, selected], "iou": iou_values}
    if empty_target == "zero":
        present = (target if weight is None else target * weight).sum(1) > 0
        per_mask_terms = {k: torch.where(present, v, 0.0) for k, v in per_mask_terms.items()}
    terms = {k: v.sum() / norm for k, v in per_mask_terms.items()}
    loss = focal_weight * terms["focal"] + dice_weight * terms["dice"] + iou_weight * terms["iou"]
    return {"loss": loss, **terms, "selected": selected}
