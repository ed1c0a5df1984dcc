"""Valid-pixel weighting equals a per-sample loop written independently of its vectorised code."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from samft.losses import regression  # noqa: F401 - registers mse and acb_mse used by name below
from samft.losses.valid_pixel import ValidPixelWeighted
from samft.registry import LOSSES

FAST = settings(max_examples=40, deadline=None)


def seed_loop_reference(y_pred, y_true, base_loss_fn, valid=None):
    """The per-sample loop that valid-pixel weighting vectorises, as the independent reference.

    A pixel counts when ``y_true >= 0`` and the explicit ``valid`` mask (padding) allows it; the
    all-invalid case returns a tensor on the graph, because a Python 0.0 would cut the gradient.
    """
    total_weighted_loss = y_pred.sum() * 0.0
    total_weight = 0.0
    for i in range(y_pred.shape[0]):
        valid_mask = y_true[i] >= 0
        if valid is not None:
            valid_mask = valid_mask & valid[i].expand_as(valid_mask)
        valid_pixel_count = int(valid_mask.sum())
        if valid_pixel_count == 0:
            continue
        weight = math.sqrt(valid_pixel_count / valid_mask.numel())
        sample_loss = base_loss_fn(y_pred[i][valid_mask], y_true[i][valid_mask])
        total_weighted_loss = total_weighted_loss + sample_loss * weight
        total_weight += weight
    if total_weight > 0:
        return total_weighted_loss / total_weight
    return total_weighted_loss


def bce_mean(x, t):
    return F.binary_cross_entropy_with_logits(x, t)


def mse_mean(x, t):
    return ((x - t) ** 2).mean()


def test_hand_computed_two_samples():
    # sample 0: 4 valid pixels of 4, mse 1; sample 1: 1 valid pixel of 4, mse 9
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 5.0, 5.0, 5.0]])
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1.0, -1.0, -1.0]])
    loss = ValidPixelWeighted(base="mse")(pred, target)
    w0, w1 = 1.0, math.sqrt(0.25)
    assert loss.item() == pytest.approx((w0 * 1 + w1 * 9) / (w0 + w1))
    per = ValidPixelWeighted(base="mse", reduction="none")(pred, target)
    torch.testing.assert_close(per, torch.tensor([1.0, 9.0]))
    summed = ValidPixelWeighted(base="mse", reduction="sum")(pred, target)
    assert summed.item() == pytest.approx(w0 * 1 + w1 * 9)


@st.composite
def batches(draw):
    n, c, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    logits = torch.randn(n, c, h, w, generator=g) * 3
    target = (torch.rand(n, c, h, w, generator=g) > 0.5).float()
    ignore_rate = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
    target[torch.rand(n, c, h, w, generator=g) < ignore_rate] = -1.0
    if n > 1 and draw(st.booleans()):
        target[0] = -1.0  # a sample without any valid pixel
    valid = torch.rand(n, 1, h, w, generator=g) > 0.2 if draw(st.booleans()) else None
    return logits, target, valid, torch.randperm(n, generator=g)


@FAST
@given(batches())
def test_equals_seed_loop_for_bce_and_mse(batch):
    logits, target, valid, _ = batch
    for base, ref_fn in (("bce", bce_mean), ({"name": "mse"}, mse_mean)):
        ours = ValidPixelWeighted(base=base)(logits, target, valid=valid)
        ref = seed_loop_reference(logits, target, ref_fn, valid)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@FAST
@given(batches())
def test_properties_non_negative_and_batch_order_invariant(batch):
    logits, target, valid, perm = batch
    loss = ValidPixelWeighted(base={"name": "sigmoid_focal", "alpha": 0.25})
    value = loss(logits, target, valid=valid)
    assert value.item() >= 0
    permuted = loss(logits[perm], target[perm], valid=None if valid is None else valid[perm])
    torch.testing.assert_close(permuted, value)


def test_gradients_match_seed_loop():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 1, 4, 4, generator=g)
    target = (torch.rand(3, 1, 4, 4, generator=g) > 0.5).float()
    target[1, :, :3] = -1.0
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ValidPixelWeighted(base="bce")(a, target).backward()
    seed_loop_reference(b, target, bce_mean).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_nothing_valid_gives_zero_with_graph():
    logits = torch.randn(2, 3, 3, requires_grad=True)
    loss = ValidPixelWeighted(base="bce")(logits, torch.full((2, 3, 3), -1.0))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)
    padded = ValidPixelWeighted(base="bce")(logits, torch.ones(2, 3, 3), valid=torch.zeros(2, 3, 3, dtype=torch.bool))
    assert padded.item() == 0.0


def test_ignore_values_never_reach_the_base():
    seen = []

    def strict_mse(pred, target, *, reduction="mean"):
        seen.append(target.min().item())
        return (pred - target) ** 2

    ValidPixelWeighted(base=strict_mse)(torch.randn(2, 4), torch.tensor([[1.0, -1.0, 2.0, -5.0], [0.0] * 4]))
    assert min(seen) >= 0


def test_extras_reach_the_base_and_valid_broadcasts():
    def scaled(pred, target, *, reduction="mean", scale=1.0):
        return scale * (pred - target).abs()

    loss = ValidPixelWeighted(base=scaled)
    pred, target = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    assert loss(pred, target, scale=3.0, unused=object()).item() == pytest.approx(3.0)
    valid = torch.tensor([[[True, False], [False, False]]])  # [N, H, W] for a [N, C, H, W] target
    pred[0, :, 0, 0] = 5.0
    assert loss(pred, target, valid=valid).item() == pytest.approx(5.0)


def test_configuration_errors():
    with pytest.raises(ValueError, match="base"):
        ValidPixelWeighted()
    with pytest.raises(ValueError, match="reduction='none'"):
        ValidPixelWeighted(base="acb_mse")
    with pytest.raises(ValueError, match="reduction='none'"):
        ValidPixelWeighted(base={"name": "bce", "reduction": "mean"})
    with pytest.raises(ValueError, match="per-pixel"):
        ValidPixelWeighted(base="dice")(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="same shape"):
        ValidPixelWeighted(base="bce")(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    built = LOSSES.build({"name": "valid_pixel_weighted", "base": {"name": "sigmoid_focal", "gamma": 1.0}})
    assert isinstance(built, ValidPixelWeighted)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_extreme_logits_and_autocast_finite(dtype):
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(3, 8, 8, generator=g).sign() * 1e4).requires_grad_()
    target = (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    target[0, :4] = -1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ValidPixelWeighted(base="sigmoid_focal")(logits.to(dtype), target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()
