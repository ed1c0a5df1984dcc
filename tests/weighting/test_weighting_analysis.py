"""Per-term gradient norms and shared-layer resolution, including SAM's default shared layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from samft.weighting import DEFAULT_SHARED, grad_norms, resolve_params, term_grad_norms


def test_term_grad_norms_by_hand_and_graph_kept():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    other = torch.tensor(5.0, requires_grad=True)
    losses = {"lin": (2.0 * w).sum(), "sq": (w ** 2).sum(), "off": other * 3.0}
    norms = term_grad_norms(losses, [w])
    assert norms["lin"] == pytest.approx(2.0 * 2.0)  # grad 2 everywhere: 2 * sqrt(4)
    assert norms["sq"] == pytest.approx(2.0 * math.sqrt(1 + 4 + 9 + 16))
    assert norms["off"] == 0.0  # does not reach w
    weighted = term_grad_norms(losses, [w], weights={"lin": -3.0, "sq": 0.5, "off": 1.0})
    assert weighted["lin"] == pytest.approx(12.0) and weighted["sq"] == pytest.approx(norms["sq"] / 2)
    assert w.grad is None and other.grad is None  # no .grad written
    sum(losses.values()).backward()  # the graph is still there
    assert w.grad is not None


def test_grad_norms_reports_connection_and_multiple_params():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(4, requires_grad=True)
    norms, connected = grad_norms([(a * 2).sum() + b.sum(), torch.tensor(1.0), (a * 0).sum()], [a, b])
    assert norms.tolist() == pytest.approx([math.sqrt(3 * 4 + 4), 0.0, 0.0])
    assert connected == [True, False, True]


def test_term_grad_norms_errors():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="params is empty"):
        term_grad_norms({"a": w.sum()}, [])
    with pytest.raises(ValueError, match="must require grad"):
        term_grad_norms({"a": w.sum()}, [torch.ones(2)])
    with pytest.raises(ValueError, match="missing term\\(s\\) 'a'"):
        term_grad_norms({"a": w.sum()}, [w], weights={"b": 1.0})


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the model lives at ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_resolve_params_by_parameter_module_and_ddp_prefix():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert resolve_params(net, "2.weight") == [net[2].weight]
    assert resolve_params(net, "2") == [net[2].weight, net[2].bias]
    wrapped = Wrapper(net)
    assert resolve_params(wrapped, "2.bias") == [net[2].bias]
    assert resolve_params(net, "module.0.weight") == [net[0].weight]
    with pytest.raises(ValueError, match="no parameter or module named '2.wieght'.*Did you mean '2.weight'"):
        resolve_params(net, "2.wieght")
    with pytest.raises(ValueError, match="Module '1' of Sequential has no parameters"):
        resolve_params(net, "1")
    with pytest.raises(ValueError, match="non-empty"):
        resolve_params(net, "")


def test_sam_default_shared_layer_is_reached_by_every_head():
    from samft.models import build_model, decode_masks

    torch.manual_seed(0)
    model = build_model("vit_tiny", image_size=64)
    shared = resolve_params(model, DEFAULT_SHARED)
    assert shared == [model.mask_decoder.transformer.norm_final_attn.weight,
                      model.mask_decoder.transformer.norm_final_attn.bias]
    embeddings = torch.randn(1, model.prompt_encoder.embed_dim, 4, 4)
    points = torch.tensor([[[20.0, 30.0]], [[40.0, 10.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    logits, iou_pred = decode_masks(model, embeddings, torch.zeros(2, dtype=torch.long), points, labels)
    target = (torch.rand_like(logits) > 0.5).float()
    mask_loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
    iou_loss = (iou_pred - 0.5).pow(2).mean()
    _, connected = grad_norms([mask_loss, iou_loss], shared)
    assert connected == [True, True]
    # Layers after it are head-specific: the IoU head does not reach the masks and vice versa.
    _, connected = grad_norms([mask_loss, iou_loss], resolve_params(model, "mask_decoder.iou_prediction_head"))
    assert connected == [False, True]
    _, connected = grad_norms([mask_loss, iou_loss], resolve_params(model, "mask_decoder.output_upscaling"))
    assert connected == [True, False]
