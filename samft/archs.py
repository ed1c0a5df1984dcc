"""The SAM variants samft builds: their names and sizes, without importing torch.

:mod:`samft.models.build` builds a model from these sizes; :mod:`samft.config` checks
``model.name`` and ``model.image_size`` against them when a config loads, before anything heavy
is imported. This module imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

PATCH_SIZE = 16  # the image encoder's patch side: input sides are multiples of it


@dataclass(frozen=True)
class SamArch:
    """Sizes of one SAM variant (image encoder ViT + prompt/mask decoder)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    fixed_image_size: int | None = 1024  # released checkpoints need exactly this input size


ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    # ~0.56M parameters: trains on a CPU in minutes; same modules, same forward path.
    "vit_tiny": SamArch(96, 2, 2, (1,), window_size=8, prompt_dim=64, decoder_mlp_dim=256,
                        decoder_heads=4, fixed_image_size=None),
}

__all__ = ["ARCHS", "PATCH_SIZE", "SamArch"]
