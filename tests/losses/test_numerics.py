"""Numerics of every core loss: extreme logits, bf16 autocast, fp16 inputs, and hypothesis properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samft.losses.overlap import dice, generalized_dice, lovasz_hinge, soft_iou
from samft.losses.pixel import bce, sigmoid_focal, weighted_bce
from samft.losses.sam import iou_prediction, sam, sam_mask

PER_MASK = {
    "sigmoid_focal": sigmoid_focal,
    "bce": bce,
    "weighted_bce": weighted_bce,
    "dice": dice,
    "dice_squared": lambda x, t, **kw: dice(x, t, squared=True, **kw),
    "soft_iou": soft_iou,
    "lovasz_hinge": lovasz_hinge,
    "lovasz_batch": lambda x, t, **kw: lovasz_hinge(x, t, per_image=False, **kw),
    "generalized_dice": lambda x, t, **kw: generalized_dice(x[:, None].expand(-1, 2, -1, -1),
                                                            t[:, None].expand(-1, 2, -1, -1), **kw),
    "generalized_dice_softmax": lambda x, t, **kw: generalized_dice(
        torch.stack([x, -x], 1), torch.stack([t, 1 - t], 1), activation="softmax", **kw),
    "sam_mask": lambda x, t, **kw: sam_mask(x, t, **kw)["loss"],
}


def multi_output(fn):
    def call(x, t):
        n = x.shape[0]
        logits = torch.stack([x, -x, 0.5 * x], dim=1)
        iou_pred = torch.full((n, 3), 0.5, requires_grad=True)
        out = fn(logits, t, iou_pred=iou_pred)
        return out["loss"] if isinstance(out, dict) else out
    return call


ALL = {**PER_MASK, "sam": multi_output(sam), "iou_prediction": multi_output(iou_prediction)}


def extreme_batch(scale=1e4, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(4, 8, 8, generator=gen) > 0.5).float()
    target[3] = 0.0
    signs = torch.where(torch.rand(4, 8, 8, generator=gen) > 0.5, 1.0, -1.0)  # half confidently wrong
    logits = (signs * scale).to(dtype).requires_grad_()
    return logits, target


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("scale", [1e4, 30.0])
def test_extreme_logits_give_finite_values_and_gradients(name, scale):
    logits, target = extreme_batch(scale)
    value = ALL[name](logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    (grad,) = torch.autograd.grad(value.sum(), logits, allow_unused=True)
    assert grad is None or torch.isfinite(grad).all()


@pytest.mark.parametrize("name", sorted(ALL))
def test_bf16_autocast_computes_in_fp32(name):
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(4, 8, 8, 16, generator=gen) * 3
    weight = torch.randn(16, 1, generator=gen).requires_grad_()
    target = (torch.rand(4, 8, 8, generator=gen) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = (features @ weight)[..., 0]  # bf16 under autocast
        assert logits.dtype == torch.bfloat16
        value = ALL[name](logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    # Same number as the fp32 computation on the same (bf16-rounded) logits.
    reference = ALL[name](logits.detach().float(), target)
    torch.testing.assert_close(value.detach(), reference, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), weight, allow_unused=True)
    assert grad is None or torch.isfinite(grad).all()


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("scale", [1e4, 20.0])
def test_fp16_inputs(name, scale):
    logits, target = extreme_batch(scale, dtype=torch.float16)
    value = ALL[name](logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    torch.testing.assert_close(value.detach(), ALL[name](logits.detach().float(), target), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), logits, allow_unused=True)
    assert grad is None or (grad.dtype == torch.float16 and torch.isfinite(grad).all())


masks = st.integers(min_value=1, max_value=4)
seeds = st.integers(min_value=0, max_value=2**16)


def random_batch(n, seed, m=None):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 6, 6) if m is None else (n, m, 6, 6)
    logits = torch.randn(shape, generator=gen) * 4
    target = (torch.rand(n, 6, 6, generator=gen) > 0.5).float()
    return logits, target


@settings(max_examples=25, deadline=None)
@given(n=masks, seed=seeds)
def test_losses_are_non_negative_and_overlap_losses_at_most_one(n, seed):
    logits, target = random_batch(n, seed)
    for name, fn in PER_MASK.items():
        value = fn(logits, target)
        assert value.item() >= -1e-6, name
    for fn in (dice, soft_iou, generalized_dice):
        per = fn(logits[:, None], target[:, None], reduction="none") if fn is generalized_dice else fn(
            logits, target, reduction="none")
        assert (per >= -1e-6).all() and (per <= 1 + 1e-6).all()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=2, max_value=5), seed=seeds, m=st.sampled_from([1, 3, 4]))
def test_sam_is_invariant_to_mask_order(n, seed, m):
    logits, target = random_batch(n, seed, m)
    iou_pred = torch.rand(n, m, generator=torch.Generator().manual_seed(seed))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    out = sam(logits, target, iou_pred=iou_pred)
    shuffled = sam(logits[perm], target[perm], iou_pred=iou_pred[perm])
    for key in ("loss", "focal", "dice", "iou"):
        torch.testing.assert_close(out[key], shuffled[key], rtol=1e-5, atol=1e-7)
    assert torch.equal(out["selected"][perm], shuffled["selected"])
    assert out["loss"].item() >= 0


@settings(max_examples=20, deadline=None)
@given(n=st.integers(min_value=2, max_value=5), seed=seeds)
def test_per_mask_losses_are_permutation_equivariant(n, seed):
    logits, target = random_batch(n, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for fn in (dice, soft_iou, lovasz_hinge, sigmoid_focal, bce):
        torch.testing.assert_close(fn(logits, target, reduction="none")[perm],
                                   fn(logits[perm], target[perm], reduction="none"))
