"""Per-sample weighted loss: rule values, no-grad weights, normalisation, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samft.losses.weighted import Weighted, sample_weights
from samft.registry import LOSSES

FAST = settings(max_examples=30, deadline=None)


@pytest.mark.parametrize(
    "rule, inputs, expected",
    [
        ("uniform", {}, [1.0, 1.0]),
        ("sigma_squared", {"sigma": [0.5, 0.8]}, [0.25, 0.64]),
        ("snr", {"sigma": [0.5, 0.8]}, [0.75 / 0.25, 0.36 / 0.64]),
        ("min_snr", {"sigma": [0.1, 0.8]}, [5.0, 0.36 / 0.64]),  # SNR 99 clamped to 5
        ("min_snr", {"sigma": [0.0, 1.0]}, [5.0, 0.0]),
        ("inverse_variance", {"variance": [2.0, 4.0]}, [0.5, 0.25]),
        ("importance", {"p": [0.2, 0.6], "q": [0.4, 0.3]}, [0.5, 2.0]),
    ],
)
def test_rule_values(rule, inputs, expected):
    tensors = {k: torch.tensor(v) for k, v in inputs.items()}
    torch.testing.assert_close(sample_weights(rule, 2, **tensors), torch.tensor(expected))


def test_glove_weights_cap_at_x_max():
    counts = torch.tensor([0.0, 50.0, 100.0, 250.0])
    expected = torch.tensor([0.0, 0.5**0.75, 1.0, 1.0])
    torch.testing.assert_close(sample_weights("glove", 4, counts=counts), expected)
    torch.testing.assert_close(
        sample_weights("glove", 2, counts=torch.tensor([5.0, 20.0]), x_max=10.0, alpha=0.5),
        torch.tensor([math.sqrt(0.5), 1.0]),
    )


def test_weights_carry_no_gradient():
    sigma = torch.tensor([0.3, 0.6], requires_grad=True)
    assert not sample_weights("snr", 2, sigma=sigma).requires_grad
    pred = torch.randn(2, 3, requires_grad=True)
    Weighted("snr")(pred, torch.zeros(2, 3), sigma=sigma).backward()
    assert sigma.grad is None and pred.grad is not None


def test_mean_and_normalised_reductions_hand_computed():
    pred = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    target = torch.zeros(3, 2)
    per_sample = torch.tensor([1.0, 2.0, 4.5])  # mse per row
    p, q = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 2.0])
    w = p / q  # 1, 2, 1.5
    plain = Weighted("importance")(pred, target, p=p, q=q)
    assert plain.item() == pytest.approx((w * per_sample).mean().item())
    assert plain.item() == pytest.approx((1 + 4 + 6.75) / 3)
    norm = Weighted("importance", normalize=True)(pred, target, p=p, q=q)
    assert norm.item() == pytest.approx((1 + 4 + 6.75) / 4.5)


def test_registry_build_and_other_base_losses():
    loss = LOSSES.build({"name": "weighted", "rule": "sigma_squared", "normalize": True})
    pred, target = torch.tensor([[2.0], [0.0]]), torch.zeros(2, 1)
    assert loss(pred, target, sigma=torch.tensor([1.0, 0.5])).item() == pytest.approx(4.0 / 1.25)

    def per_sample_l1(pred, target, *, reduction="mean", scale=1.0):
        return scale * (pred - target).abs().sum(dim=1)  # returns [N]

    weighted = Weighted("inverse_variance", base=per_sample_l1)
    pred, variance = torch.tensor([[1.0, 1.0], [3.0, 0.0]]), torch.tensor([1.0, 3.0])
    out = weighted(pred, torch.zeros(2, 2), variance=variance, scale=2.0)
    assert out.item() == pytest.approx((4.0 / 1 + 6.0 / 3) / 2)  # the base receives the extra `scale`


def test_all_zero_weights_normalised_gives_zero_with_graph():
    pred = torch.randn(2, 3, requires_grad=True)
    loss = Weighted("glove", normalize=True)(pred, torch.zeros(2, 3), counts=torch.zeros(2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


@pytest.mark.parametrize(
    "kwargs, call, match",
    [
        ({"rule": "snrr"}, {}, "unknown rule"),
        ({"rule": "snr"}, {}, "needs the batch extra 'sigma'"),
        ({"rule": "snr"}, {"sigma": torch.tensor([0.5, 0.5, 0.5])}, "3 values for a batch of 2"),
        ({"rule": "snr"}, {"sigma": torch.tensor([0.0, 0.5])}, r"sigma must be in \(0, 1\]"),
        ({"rule": "min_snr"}, {"sigma": torch.tensor([1.5, 0.5])}, r"sigma must be in \[0, 1\]"),
        ({"rule": "inverse_variance"}, {"variance": torch.tensor([0.0, 1.0])}, "variance must be > 0"),
        ({"rule": "importance"}, {"p": torch.ones(2), "q": torch.tensor([1.0, 0.0])}, "q > 0"),
        ({"rule": "glove"}, {"counts": torch.tensor([-1.0, 1.0])}, "counts must be >= 0"),
        ({"base": "acb_mse"}, {}, "reduction='none'"),
    ],
)
def test_errors(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        Weighted(**kwargs)(torch.zeros(2, 3), torch.zeros(2, 3), **call)


def test_bf16_autocast_and_large_values_finite():
    pred = (torch.randn(4, 8) * 1e4).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = Weighted("min_snr", normalize=True)(pred.bfloat16(), torch.zeros(4, 8), sigma=torch.rand(4))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(pred.grad).all()


@FAST
@given(st.integers(1, 6), st.integers(0, 2**16), st.floats(0.1, 100.0))
def test_properties_order_invariance_scale_invariance_non_negative(n, seed, scale):
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    p, q = torch.rand(n, generator=g), torch.rand(n, generator=g) + 0.05
    perm = torch.randperm(n, generator=g)
    norm = Weighted("importance", normalize=True)
    value = norm(pred, target, p=p, q=q)
    assert value.item() >= 0
    torch.testing.assert_close(norm(pred[perm], target[perm], p=p[perm], q=q[perm]), value)
    # normalised weights are relative: scaling p changes nothing
    torch.testing.assert_close(norm(pred, target, p=p * scale, q=q), value, rtol=1e-5, atol=1e-6)
    plain = Weighted("importance")
    torch.testing.assert_close(plain(pred, target, p=p * scale, q=q), plain(pred, target, p=p, q=q) * scale,
                               rtol=1e-5, atol=1e-6)
