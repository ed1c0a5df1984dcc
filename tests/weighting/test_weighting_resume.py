"""Resume: k steps, save, load into fresh objects, continue == an uninterrupted run, bit for bit."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from samft.registry import WEIGHTINGS

TERMS = ["focal", "dice", "iou"]
STEPS, SAVE_AT, EPOCH = 12, 6, 3
SPECS = [
    {"name": "fixed", "weights": {"dice": {"name": "linear", "start": 1.0, "end": 3.0, "total_steps": STEPS}}},
    {"name": "uncertainty", "kinds": {"focal": "classification"}, "lr": 0.05, "min_log_var": -3.0},
    {"name": "gradnorm", "shared_param": "trunk.2", "initial_steps": 2},
    {"name": "gradnorm", "shared_param": "trunk.2", "optimizer": "sgd", "lr": 0.01},
    {"name": "dwa"},
]




class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in TERMS)

    def forward(self, x):
        z = self.trunk(x)
        return [head(z).squeeze(1) for head in self.heads]


def batch_losses(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 6, generator=g)
    y = x[:, 0] * 3 + x[:, 1].sin()
    out = model(x)
    return {"focal": nn.functional.binary_cross_entropy_with_logits(out[0], (y > 0).float()),
            "dice": nn.functional.mse_loss(out[1], y),
            "iou": nn.functional.l1_loss(out[2], 0.1 * y)}


def make(spec, seed):
    torch.manual_seed(seed)
    model = Net()
    strategy = WEIGHTINGS.build(spec, terms=TERMS)
    strategy.bind(model)
    opt = torch.optim.Adam([{"params": list(model.parameters())}, *strategy.param_groups(1e-2)], lr=1e-2)
    return model, strategy, opt


def run(model, strategy, opt, start, stop, log):
    epoch_sum = {t: 0.0 for t in TERMS}
    for step in range(start, stop):
        losses = batch_losses(model, step)
        total, weights = strategy(losses, step)
        log.append((step, total.item(), weights))
        opt.zero_grad()
        total.backward()
        opt.step()
        strategy.step_end(True)
        for t in TERMS:
            epoch_sum[t] += losses[t].item() / EPOCH
        if (step + 1) % EPOCH == 0:
            strategy.epoch_end(epoch_sum)
            epoch_sum = {t: 0.0 for t in TERMS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['name']}-{s.get('optimizer', '')}")
def test_resume_is_exact(spec):
    straight = make(spec, seed=0)
    log_straight: list = []
    run(*straight, 0, STEPS, log_straight)

    first = make(spec, seed=0)
    log_resumed: list = []
    run(*first, 0, SAVE_AT, log_resumed)
    buffer = io.BytesIO()
    torch.save({"model": first[0].state_dict(), "optimizer": first[2].state_dict(),
                "weighting": first[1].state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # the engine reads checkpoints this way

    model, strategy, opt = make(spec, seed=123)  # different init: everything must come from the state
    model.load_state_dict(state["model"])
    strategy.load_state_dict(state["weighting"])
    opt.load_state_dict(state["optimizer"])
    run(model, strategy, opt, SAVE_AT, STEPS, log_resumed)

    assert log_resumed == log_straight
    for a, b in zip(model.parameters(), straight[0].parameters()):
        assert torch.equal(a, b)
    final_straight = straight[1].state_dict()
    for key, value in strategy.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, final_straight[key]), key
    if spec["name"] != "fixed":  # the weights really moved, so the test compares something
        assert len({tuple(w.values()) for _, _, w in log_straight}) > 2
