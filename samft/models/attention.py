"""Memory-lean image-encoder attention: segment_anything's ``Attention`` through one fused SDPA call.

segment_anything computes ``softmax((q * scale) @ k^T + B) @ v`` with a decomposed relative-position
bias ``B[(i, j), (k, l)] = rel_h[(i, j), k] + rel_w[(i, j), l]`` (query at row i, column j; key at
row k, column l), and keeps the ``[N, N]`` attention matrix of every head for backward: at 1024 px a
global block of ViT-B stores 12 x 4096 x 4096 fp32 values, 0.8 GB per image, plus the bias.

The bias is a sum of a term indexed by the key's row and a term indexed by the key's column, so it is
itself a dot product: append ``rel_h`` and ``rel_w`` to each query and a one-hot of the key's row and
column to each key, and ``q' . k' = scale * q . k + rel_h[k] + rel_w[l]`` exactly. One
``scaled_dot_product_attention`` call (scale 1) then computes the whole attention, and neither the
attention matrix nor the bias is ever stored by the fused kernels (flash / memory-efficient on CUDA,
the flash kernel on CPU). The fused kernels want equal head dims for q, k and v (a multiple of 8 on
CUDA), so the extended channels are zero-padded to a multiple of 8 and v is zero-padded to the same
width; the padded output channels are zero and dropped.

Only the forward changes: parameters, their names and shapes stay segment_anything's, so Meta's
checkpoints load as before and :func:`use_attention` can switch a built model either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

ATTENTIONS = ("sdpa", "eager")  # model.attention: sdpa = this module, eager = segment_anything's
_ALIGN = 8  # head-dim multiple the CUDA kernels need


class LeanAttention(Attention):
    """segment_anything's ``Attention`` (same parameters) whose forward never stores ``[N, N]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, H, W, dim]`` -> ``[B, H, W, dim]``, equal to ``Attention.forward``."""
        b, h, w, _ = x.shape
        # [3, B, heads, N, C]: the heads stay a batch dimension of SDPA.
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.use_rel_pos:
            q, k, v = rel_pos_channels(q, k, v, self.scale, self.rel_pos_h, self.rel_pos_w, (h, w))
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., : self.rel_pos_h.shape[1]]
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def rel_pos_channels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, rel_pos_h: torch.Tensor,
                     rel_pos_w: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values whose plain dot product is segment_anything's biased, scaled score.

    Args:
        q, k, v: ``[B, heads, N, C]`` with ``N = H * W`` tokens in row-major order.
        scale: The attention scale (``C ** -0.5``), applied to ``q`` only, as segment_anything does.
        rel_pos_h, rel_pos_w: ``[2H - 1, C]`` and ``[2W - 1, C]`` relative position embeddings.
        size: ``(H, W)`` of the token grid (queries and keys share it).

    Returns:
        ``q' [B, heads, N, D]`` = [q * scale, rel_h, rel_w, 0], ``k' [B, heads, N, D]`` = [k, one-hot
        row, one-hot column, 0] and ``v' [B, heads, N, D]`` = [v, 0], with ``D = C + H + W`` rounded
        up to a multiple of 8: ``q' @ k'^T = (q * scale) @ k^T + add_decomposed_rel_pos(...)``.
    """
    h, w = size
    b, heads, n, c = q.shape
    rh = get_rel_pos(h, h, rel_pos_h)  # [H(query row), H(key row), C]
    rw = get_rel_pos(w, w, rel_pos_w)
    grid = q.reshape(b * heads, h, w, c)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid, rh).reshape(b, heads, n, h)  # unscaled q, as segment_anything
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid, rw).reshape(b, heads, n, w)
    dtype = rel_h.dtype  # under autocast the einsum's dtype; q and k may differ from it
    width = -(-(c + h + w) // _ALIGN) * _ALIGN
    pad = width - (c + h + w)
    token = torch.arange(n, device=q.device).unsqueeze(1)
    # One-hot by comparison (F.one_hot reads its input's range back to the host on CPUs).
    row = (token // w == torch.arange(h, device=q.device)).to(dtype)  # [N, H]: each key's row
    col = (token % w == torch.arange(w, device=q.device)).to(dtype)
    key_pos = torch.cat([row, col, row.new_zeros(n, pad)], dim=1).expand(b, heads, n, h + w + pad)
    q2 = torch.cat([(q * scale).to(dtype), rel_h, rel_w, rel_h.new_zeros(b, heads, n, pad)], dim=-1)
    k2 = torch.cat([k.to(dtype), key_pos], dim=-1)
    v2 = torch.cat([v.to(dtype), v.new_zeros(b, heads, n, width - c, dtype=dtype)], dim=-1)
    return q2, k2, v2


def use_attention(model: nn.Module, kind: str) -> nn.Module:
    """Switch every segment_anything ``Attention`` in ``model`` to ``kind`` (``sdpa`` or ``eager``), in place.

    Only the class (hence the forward) changes: parameters and their names stay, so state dicts load
    strictly either way, before or after the switch.

    Returns:
        ``model``.
    """
    if kind not in ATTENTIONS:
        raise ValueError(f"model.attention={kind!r}: use one of {', '.join(ATTENTIONS)}.")
    target = LeanAttention if kind == "sdpa" else Attention
    for module in model.modules():
        if isinstance(module, Attention):
            module.__class__ = target
    return model
