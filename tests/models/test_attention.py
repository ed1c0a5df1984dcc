"""The memory-lean attention equals segment_anything's Attention: values, gradients, blocks, a whole ViT."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block, ImageEncoderViT

from samft.models import build_model
from samft.models.attention import LeanAttention, rel_pos_channels, use_attention


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero relative position embeddings (segment_anything initialises them to zero, which would
    hide a wrong bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _pair(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    eager = _randomised(module)
    return eager, use_attention(copy.deepcopy(eager), "sdpa")


def _grads(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    (out * weight).sum().backward()
    return (out.detach(), x.grad, *(p.grad for _, p in sorted(module.named_parameters())))


def _assert_same(eager: torch.nn.Module, lean: torch.nn.Module, x: torch.Tensor, atol: float = 2e-5) -> None:
    weight = torch.randn(eager(x).shape, generator=torch.Generator().manual_seed(1))
    names = ["output", "input grad", *(n for n, _ in sorted(eager.named_parameters()))]
    for name, a, b in zip(names, _grads(eager, x, weight), _grads(lean, x, weight), strict=True):
        assert a is not None and b is not None, name
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_bias_channels_reproduce_the_decomposed_bias_exactly_by_hand():
    # 2 x 2 tokens, one head of width 1: every score written out by hand from the definition
    # score[(i, j), (k, l)] = scale * q.k + q.Rh[i - k + 1] + q.Rw[j - l + 1] (offsets of a 2-wide grid).
    q = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 4, 1)
    k = torch.tensor([0.5, -1.0, 2.0, 0.0]).reshape(1, 1, 4, 1)
    rel_h = torch.tensor([[10.0], [20.0], [30.0]])  # offsets -1, 0, 1
    rel_w = torch.tensor([[100.0], [200.0], [300.0]])
    q2, k2, v2 = rel_pos_channels(q, k, k.clone(), 0.5, rel_h, rel_w, (2, 2))
    scores = (q2 @ k2.transpose(-2, -1))[0, 0]
    expect = torch.zeros(4, 4)
    for qi in range(4):
        for ki in range(4):
            (i, j), (kr, kc) = divmod(qi, 2), divmod(ki, 2)
            qv = q.flatten()[qi]
            expect[qi, ki] = 0.5 * qv * k.flatten()[ki] + qv * rel_h[i - kr + 1, 0] + qv * rel_w[j - kc + 1, 0]
    torch.testing.assert_close(scores, expect)
    assert q2.shape[-1] % 8 == 0 and q2.shape == k2.shape == v2.shape
    assert torch.all(v2[..., 1:] == 0)


@pytest.mark.parametrize("side", [8, 14])
def test_global_attention_equals_segment_anything(side):
    eager, lean = _pair(Attention(64, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=(side, side)))
    assert isinstance(lean.__class__, type) and type(lean) is LeanAttention
    x = torch.randn(2, side, side, 64, generator=torch.Generator().manual_seed(2))
    _assert_same(eager, lean, x)


def test_attention_without_rel_pos_equals_segment_anything():
    eager, lean = _pair(Attention(32, num_heads=2, use_rel_pos=False))
    _assert_same(eager, lean, torch.randn(1, 5, 6, 32, generator=torch.Generator().manual_seed(3)))


def test_windowed_block_with_padding_equals_segment_anything():
    # 10 x 10 tokens in 4 x 4 windows: padded to 12 x 12, nine windows, the padding attended to as zeros.
    block = Block(48, num_heads=3, use_rel_pos=True, window_size=4, input_size=(4, 4))
    eager, lean = _pair(block)
    _assert_same(eager, lean, torch.randn(2, 10, 10, 48, generator=torch.Generator().manual_seed(4)))


def test_whole_vit_encoder_equals_segment_anything():
    encoder = ImageEncoderViT(img_size=128, patch_size=16, embed_dim=64, depth=3, num_heads=4, out_chans=32,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              global_attn_indexes=(1,), window_size=3)  # 8 x 8 tokens: windows padded to 9 x 9
    eager, lean = _pair(encoder)
    _assert_same(eager, lean, torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(5)), atol=5e-5)


def test_bf16_autocast_as_close_to_fp32_as_segment_anything():
    eager, lean = _pair(Attention(64, num_heads=4, use_rel_pos=True, input_size=(8, 8)))
    x = torch.randn(1, 8, 8, 64, generator=torch.Generator().manual_seed(6))
    reference = eager(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_eager, out_lean = eager(x), lean(x)
    assert out_lean.dtype == out_eager.dtype == torch.bfloat16
    err_eager = (out_eager.float() - reference).abs().max().item()
    err_lean = (out_lean.float() - reference).abs().max().item()
    assert err_lean <= 2 * err_eager + 1e-3, (err_lean, err_eager)
    x = x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean(x).float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(lean.rel_pos_h.grad).all()


def test_meta_layout_state_dict_loads_strictly_and_gives_the_same_outputs():
    eager = _randomised(build_model("vit_tiny", 64)).eval()
    lean = build_model("vit_tiny", 64, attention="sdpa").eval()
    assert list(lean.state_dict()) == list(eager.state_dict())  # the names segment_anything's files use
    lean.load_state_dict(eager.state_dict(), strict=True)
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(lean.image_encoder(image), eager.image_encoder(image), atol=2e-5, rtol=1e-4)
    assert all(type(m) is LeanAttention for m in lean.modules() if isinstance(m, Attention))
    use_attention(lean, "eager")
    assert not any(type(m) is LeanAttention for m in lean.modules())


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="model.attention='flash'"):
        build_model("vit_tiny", 64, attention="flash")
