"""MobileSAM's image encoder: TinyViT-5M with a SAM neck, producing SAM's 256 x S/16 x S/16 embedding.

Written for samft after the structure of MobileSAM's ``mobile_sam/modeling/tiny_vit_sam.py`` (itself
Microsoft's TinyViT): the module tree, and so every state-dict key and shape, is the one of the
released ``mobile_sam.pt`` (``image_encoder.patch_embed.seq.0.c.weight``, ``...layers.1.blocks.0.attn.
attention_biases``, ``...neck.3.bias``, ...), so that checkpoint loads strictly into
:func:`samft.models.build_model` ``("vit_t")``. Differences that do not change outputs on MobileSAM's
weights at 1024 px: the attention-bias table is indexed on every call (MobileSAM caches it in eval
mode), drop path is left out (MobileSAM's rate is 0), and the stage resolutions follow the input side
(MobileSAM hard-codes a 64 x 64 output), so the same weights run at any side that is a multiple of 16.

Layout: a convolutional stem (two stride-2 3x3 convs: /4), stage 0 of MBConv blocks, then three
stages of windowed self-attention blocks (attention + depthwise 3x3 conv + MLP), with a patch-merging
conv between stages (/2, /2, then /1 into the last stage), and SAM's neck (1x1 conv, LayerNorm2d,
3x3 conv, LayerNorm2d) to 256 channels. ``norm_head`` and ``head`` are TinyViT's ImageNet classifier:
unused by SAM, kept because the released checkpoint holds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, as children ``c`` and ``bn`` (TinyViT's ``Conv2d_BN`` keys)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
                 bn_weight: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        nn.init.constant_(self.bn.weight, bn_weight)
        nn.init.zeros_(self.bn.bias)


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3x3 ConvBN with a GELU between: ``[B, 3, S, S] -> [B, C, S/4, S/4]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2, 3, 2, 1), nn.GELU(), ConvBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (x4), depthwise 3x3, 1x1 project; the last BN starts at 0 (identity block)."""

    def __init__(self, dim: int, expand: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1, self.act1 = ConvBN(dim, hidden), nn.GELU()
        self.conv2, self.act2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden), nn.GELU()
        self.conv3, self.act3 = ConvBN(hidden, dim, bn_weight=0.0), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 conv of ``stride``, 1x1 conv: ``[B, C, H, W]`` or tokens -> tokens ``[B, L', C']``.

    MobileSAM keeps the last merge at stride 1 (it keys this on the last stage's width) so the
    embedding stays at 1/16 of the input.
    """

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class ConvStage(nn.Module):
    """Stage 0: MBConv ``blocks`` then ``downsample``."""

    def __init__(self, dim: int, depth: int, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Attention(nn.Module):
    """Multi-head self-attention inside a ``window x window`` window, with a learned bias per head and
    per relative offset ``(|dy|, |dx|)`` (LeViT's attention bias; no position embedding elsewhere).

    ``qkv`` packs, per head, ``[q (d), k (d), v (d)]`` with ``d = dim / heads`` (TinyViT's order).
    """

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Offsets are numbered in the order they first appear when scanning query (0, 0) against every
        # key row by row, i.e. |dy| * window + |dx|: the numbering of TinyViT's table.
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None]).abs() * window + (xs[:, None] - xs[None]).abs()
        self.attention_biases = nn.Parameter(torch.zeros(heads, window * window))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """Pre-norm MLP (``norm``, ``fc1``, GELU, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), a depthwise 3x3 ConvBN over the token grid, an MLP (residual).

    Windows that overhang the grid are zero-padded before the attention's own LayerNorm, and the
    padded tokens take part as keys (TinyViT does the same; outputs on them are dropped).
    """

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.resolution, self.window = resolution, window
        self.attn = Attention(dim, heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        ws = self.window
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        y = y.view(b, ph // ws, ws, pw // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        y = self.attn(y)
        y = y.view(b, ph // ws, pw // ws, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        x = x + y[:, :h, :w].reshape(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT ``blocks`` then an optional ``downsample``."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int, window: int,
                 downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, resolution, heads, window) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's image encoder.

    Args:
        img_size: Square input side, a multiple of 16 (MobileSAM: 1024).
        stages: ``(channels, blocks, heads, window)`` per stage (``samft.archs.ARCHS["vit_t"].stages``).
        out_chans: Embedding channels (SAM's prompt dimension, 256).
        num_classes: Width of TinyViT's unused classifier head (1000 in ``mobile_sam.pt``).

    Forward: ``[B, 3, S, S]`` normalised image -> ``[B, out_chans, S/16, S/16]``.
    """

    def __init__(self, img_size: int = 1024, stages: tuple[tuple[int, int, int, int], ...] = (),
                 out_chans: int = 256, num_classes: int = 1000) -> None:
        super().__init__()
        if img_size % 16:
            raise ValueError(f"TinyViT needs an input side that is a multiple of 16, got {img_size}.")
        self.img_size = img_size
        dims = [s[0] for s in stages]
        self.patch_embed = PatchEmbed(dims[0])
        side, strides = img_size // 4, (2, 2, 1)
        self.layers = nn.ModuleList()
        for i, (dim, depth, heads, window) in enumerate(stages):
            last = i == len(stages) - 1
            merge = None if last else PatchMerging((side, side), dim, dims[i + 1], strides[i])
            if i == 0:
                self.layers.append(ConvStage(dim, depth, merge))
            else:
                self.layers.append(AttentionStage(dim, (side, side), depth, heads, window, merge))
            side = side if last else (side - 1) // strides[i] + 1
        self.embed_side = side
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(_init_weights)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], out_chans, kernel_size=1, bias=False), LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False), LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.embed_side, self.embed_side, c).permute(0, 3, 1, 2)
        return self.neck(x)

    def all_blocks(self) -> list[nn.Module]:
        """Every block of every stage, in order (activation checkpointing wraps each)."""
        return [block for layer in self.layers for block in layer.blocks]

    def decay_layer(self, name: str) -> int:
        """Layer-decay depth of a parameter named relative to the encoder (``layers.2.blocks.3.attn.qkv.weight``).

        As MobileSAM's ``set_layer_lr_decay``: the stem shares the first block's depth (1), block ``i``
        (counted over all stages) is ``i + 1``, a stage's patch merging shares its last block's depth,
        and the neck and the unused classifier head are at the top, ``len(all_blocks()) + 1``.
        """
        parts = name.split(".")
        if parts[0] == "patch_embed":
            return 1
        if parts[0] != "layers":
            return len(self.all_blocks()) + 1
        stage = int(parts[1])
        before = sum(len(layer.blocks) for layer in self.layers[:stage])
        if parts[2] == "blocks":
            return before + int(parts[3]) + 1
        return before + len(self.layers[stage].blocks)


def _init_weights(module: nn.Module) -> None:
    """TinyViT's initialisation: truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
