"""GradNorm: the paper's toy problem, exactness of the update, no leak into the model, resume."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from torch import nn

from samft.registry import WEIGHTINGS
from samft.weighting import GradNormWeighting, resolve_params, term_grad_norms
from samft.weighting.analysis import grad_norms

SIGMAS = (1.0, 3.0, 10.0, 30.0)
TERMS = [f"task{i}" for i in range(len(SIGMAS))]




def toy_data(seed: int = 0, n: int = 256, din: int = 16, dout: int = 8):
    """The paper's toy: f_i(x) = sigma_i tanh((B + eps_i) x), B ~ N(0, 10), eps_i ~ N(0, 3.5)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(dout, din, generator=g) * 10 ** 0.5
    eps = [torch.randn(dout, din, generator=g) * 3.5 ** 0.5 for _ in SIGMAS]
    x = torch.randn(n, din, generator=g) / din ** 0.5
    return x, [s * torch.tanh(x @ (b + e).T) for s, e in zip(SIGMAS, eps)]


class Toy(nn.Module):
    """Shared trunk (its last layer ``trunk.4`` is the shared layer W) + one affine head per task."""

    def __init__(self, din: int = 16, dout: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, dout) for _ in SIGMAS)

    def forward(self, x):
        z = self.trunk(x)
        return [head(z) for head in self.heads]


def toy_losses(model, x, ys):
    return {t: nn.functional.mse_loss(out, y) for t, out, y in zip(TERMS, model(x), ys)}


def train(spec, steps: int):
    torch.manual_seed(0)
    x, ys = toy_data()
    model = Toy()
    strategy = WEIGHTINGS.build(spec, terms=TERMS)
    strategy.bind(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    shared = resolve_params(model, "trunk.4")
    spreads = []
    for step in range(steps):
        losses = toy_losses(model, x, ys)
        total, weights = strategy(losses, step)
        g = term_grad_norms(losses, shared, weights)
        spreads.append(max(g.values()) / min(g.values()))
        opt.zero_grad()
        total.backward()
        opt.step()
        strategy.step_end(True)
    return spreads, weights


def test_gradnorm_equalises_gradient_norms_on_the_paper_toy():
    fixed_spreads, fixed_w = train({"name": "fixed", "weights": 1.0}, 300)
    gn_spreads, gn_w = train({"name": "gradnorm", "shared_param": "trunk.4"}, 300)
    before = gn_spreads[0]
    fixed_after = statistics.median(fixed_spreads[-50:])
    gn_after = statistics.median(gn_spreads[-50:])
    print(f"max/min G_i: before {before:.1f}; after 300 steps fixed {fixed_after:.1f}, gradnorm {gn_after:.2f}")
    assert fixed_spreads[0] == pytest.approx(before)  # same start: equal weights, same seed
    assert fixed_after > 10.0  # the problem really is imbalanced
    assert gn_after < 0.25 * fixed_after and gn_after < before / 5
    w = [gn_w[t] for t in TERMS]
    assert w == sorted(w, reverse=True) and w[0] > 10 * w[-1]  # inverse to sigma_i
    assert sum(w) == pytest.approx(len(TERMS), rel=1e-5)
    assert len(set(fixed_w.values())) == 1


def _toy_step_inputs():
    torch.manual_seed(1)
    x, ys = toy_data(seed=1, n=32)
    return Toy(), x, ys


def test_update_equals_create_graph_reference_and_model_grads_are_untouched():
    model, x, ys = _toy_step_inputs()
    reference_model = copy.deepcopy(model)
    init = {"task0": 1.0, "task1": 2.0, "task2": 0.5, "task3": 0.5}
    strategy = GradNormWeighting(TERMS, shared_param="trunk.4", optimizer="sgd", lr=0.01, initial_weights=init,
                                 alpha=1.5, initial_steps=1)
    strategy.bind(model)
    w_before = strategy.weights.detach().clone()
    losses = toy_losses(model, x, ys)
    total, weights = strategy(losses, 0)
    assert all(p.grad is None for p in model.parameters())  # nothing leaked before backward
    total.backward()
    strategy.step_end(True)

    # Reference: the paper's formulation with create_graph, on an identical copy of the model.
    ref_losses = toy_losses(reference_model, x, ys)
    w = w_before.clone().requires_grad_(True)
    shared = resolve_params(reference_model, "trunk.4")
    g_norms = []
    for i, t in enumerate(TERMS):
        grads = torch.autograd.grad(w[i] * ref_losses[t], shared, retain_graph=True, create_graph=True)
        g_norms.append(torch.sqrt(sum((gr ** 2).sum() for gr in grads)))
    big_g = torch.stack(g_norms)
    # first step: L_i(0) = L_i, so r_i = 1 and the target is mean(G)
    l_grad = (big_g - big_g.detach().mean()).abs().sum()
    (w_grad,) = torch.autograd.grad(l_grad, w, retain_graph=True)
    expected = (w_before - 0.01 * w_grad).clamp_min(1e-3)
    expected = expected * len(TERMS) / expected.sum()
    torch.testing.assert_close(strategy.weights.detach(), expected, rtol=1e-5, atol=1e-7)

    # The model's gradient is the weighted sum's, with the weights used for this step.
    assert [weights[t] for t in TERMS] == pytest.approx(w_before.tolist())
    sum(w_before[i] * ref_losses[t] for i, t in enumerate(TERMS)).backward()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_relative_rates_and_initial_steps():
    model, x, ys = _toy_step_inputs()
    strategy = GradNormWeighting(TERMS, shared_param="trunk.4", initial_steps=3)
    strategy.bind(model)
    seen = []
    for step in range(2):
        losses = toy_losses(model, x, ys)
        seen.append(torch.stack([losses[t].detach() for t in TERMS]))
        strategy(losses, step)
        strategy.step_end(True)
        assert torch.equal(strategy.weights.detach(), torch.ones(4))  # no update before L(0) is known
        with torch.no_grad():
            model.heads[0].bias.add_(0.1)
    losses = toy_losses(model, x, ys)
    seen.append(torch.stack([losses[t].detach() for t in TERMS]))
    strategy(losses, 2)
    strategy.step_end(True)
    torch.testing.assert_close(strategy.initial_loss_sum, sum(seen))
    assert int(strategy.initial_count) == 3
    assert not torch.equal(strategy.weights.detach(), torch.ones(4))
    # r_i by hand
    now = seen[-1] * 2.0
    ratio = now / (sum(seen) / 3)
    torch.testing.assert_close(strategy._relative_rates(now), ratio / ratio.mean())


def test_no_update_in_eval_or_no_grad():
    model, x, ys = _toy_step_inputs()
    strategy = GradNormWeighting(TERMS, shared_param="trunk.4")
    strategy.bind(model)
    with torch.no_grad():
        total, weights = strategy(toy_losses(model, x, ys), 0)
    strategy.eval()
    strategy(toy_losses(model, x, ys), 0)
    strategy.step_end(True)
    assert int(strategy.initial_count) == 0 and torch.equal(strategy.weights.detach(), torch.ones(4))
    assert weights == {t: 1.0 for t in TERMS}


def test_nonfinite_losses_skip_the_update():
    model, x, ys = _toy_step_inputs()
    strategy = GradNormWeighting(TERMS, shared_param="trunk.4")
    strategy.bind(model)
    losses = toy_losses(model, x, ys)
    losses["task1"] = losses["task1"] * float("nan")
    total, _ = strategy(losses, 0)
    strategy.step_end(True)
    assert not torch.isfinite(total)
    assert int(strategy.initial_count) == 0 and torch.equal(strategy.weights.detach(), torch.ones(4))


def test_state_dict_holds_optimiser_state_and_loads_with_weights_only(tmp_path):
    model, x, ys = _toy_step_inputs()
    strategy = GradNormWeighting(TERMS, shared_param="trunk.4")
    strategy.bind(model)
    for step in range(3):
        strategy(toy_losses(model, x, ys), step)
        strategy.step_end(True)
    torch.save({"weighting": strategy.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["weighting"]
    assert set(state) == {"weights", "initial_loss_sum", "initial_count", "_extra_state"}
    adam = state["_extra_state"]["optimizer"]["state"][0]
    assert int(adam["step"]) == 3
    fresh = GradNormWeighting(TERMS, shared_param="trunk.4", lr=0.5)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh._optimizer.state_dict()["state"][0]["exp_avg"], adam["exp_avg"])
    assert fresh._optimizer.param_groups[0]["lr"] == 0.5  # the configured lr wins


def test_errors_are_clear():
    model, x, ys = _toy_step_inputs()
    strategy = GradNormWeighting(TERMS, shared_param="trunk.4")
    with pytest.raises(ValueError, match="call strategy.bind"):
        strategy(toy_losses(model, x, ys), 0)
    with pytest.raises(ValueError, match="Did you mean 'trunk.4'"):
        GradNormWeighting(TERMS, shared_param="trunk.44").bind(model)
    frozen = GradNormWeighting(TERMS, shared_param="trunk.4")
    model.trunk[4].requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        frozen.bind(model)
    model.trunk[4].requires_grad_(True)
    unrelated = GradNormWeighting(TERMS, shared_param="heads.0")
    unrelated.bind(model)
    losses = toy_losses(model, x, ys)
    losses = {t: (losses[t] if t != "task0" else losses[t].detach()) for t in TERMS}
    with pytest.raises(ValueError, match="No loss term .* depends on GradNorm's shared layer 'heads.0'"):
        unrelated(losses, 0)
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd"):
        GradNormWeighting(TERMS, optimizer="lbfgs")
    with pytest.raises(ValueError, match="initial_weights must be > 0"):
        GradNormWeighting(TERMS, initial_weights={"task0": 0.0})
    with pytest.raises(ValueError, match="initial_weights names 'task9'"):
        GradNormWeighting(TERMS, initial_weights={"task9": 1.0})


def test_bf16_autocast_forward_gives_finite_weights():
    model, x, ys = _toy_step_inputs()
    strategy = GradNormWeighting(TERMS, shared_param="trunk.4")
    strategy.bind(model)
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = model(x)
        losses = {t: nn.functional.mse_loss(o.float(), y) for t, o, y in zip(TERMS, outs, ys)}
        total, weights = strategy(losses, step)
        assert total.dtype == torch.float32 and torch.isfinite(total)
        total.backward()
        strategy.step_end(True)
    assert torch.isfinite(strategy.weights).all() and not torch.equal(strategy.weights.detach(), torch.ones(4))
    assert all(v > 0 for v in strategy.last_grad_norms.values())


def test_one_update_per_step_from_the_mean_of_its_micro_batches_and_none_for_a_skipped_step():
    model, x, ys = _toy_step_inputs()
    accumulated = GradNormWeighting(TERMS, shared_param="trunk.4", optimizer="sgd", lr=0.01)
    single = GradNormWeighting(TERMS, shared_param="trunk.4", optimizer="sgd", lr=0.01)
    for s in (accumulated, single):
        s.bind(model)
    halves = [toy_losses(model, x[:16], [y[:16] for y in ys]), toy_losses(model, x[16:], [y[16:] for y in ys])]
    for losses in halves:
        accumulated(losses, 0)
    skipped = GradNormWeighting(TERMS, shared_param="trunk.4")
    skipped.bind(model)
    skipped(halves[0], 0)
    skipped.step_end(False)  # e.g. fp16 overflow: no update, nothing carried over
    skipped.step_end(True)
    assert int(skipped.initial_count) == 0 and torch.equal(skipped.weights.detach(), torch.ones(4))
    accumulated.step_end(True)
    assert int(accumulated.initial_count) == 1
    # The same update as one observation of the micro-batches' mean g and L.
    g = torch.stack([grad_norms([h[t] for t in TERMS], resolve_params(model, "trunk.4"))[0] for h in halves]).mean(0)
    values = torch.stack([torch.stack([h[t].detach() for t in TERMS]) for h in halves]).mean(0)
    single._pending = (torch.cat([g, values]), 1)
    single.step_end(True)
    torch.testing.assert_close(accumulated.weights.detach(), single.weights.detach())
    torch.testing.assert_close(accumulated.initial_loss_sum, values)
