"""The SAM variants samft builds: their names, sizes and input, without importing torch.

This is the light half of the model registry (``samft.registry.MODELS`` holds the builders): config
validation reads it to check ``model.name`` and ``model.image_size`` before anything heavy is
imported, and :mod:`samft.models` builds from it. This module imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

PATCH_SIZE = 16  # the image embedding is the input side / 16: input sides are multiples of it

# SAM's parts: what a model entry may freeze and PEFT may adapt unless it declares its own
# (``samft.models.zoo.ModelSpec.parts``); config validation checks built-in models against it.
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")

# SAM's (and MobileSAM's) pixel normalisation, applied inside the model to 0..255 RGB.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArch:
    """Sizes of one SAM variant (image encoder + SAM's prompt encoder and mask decoder).

    ``encoder`` says which image encoder: ``vit`` (segment_anything's ``ImageEncoderViT``, sized by
    ``embed_dim`` .. ``window_size``) or ``tiny_vit`` (MobileSAM's TinyViT, sized by ``stages``).
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    fixed_image_size: int | None = 1024  # the encoder only runs at this input size (ViT position embeddings)
    native_image_size: int = 1024  # the size released checkpoints were trained at
    encoder: str = "vit"
    # tiny_vit only: (channels, blocks, heads, window) per stage; stage 0 is convolutional (no heads, no window).
    stages: tuple[tuple[int, int, int, int], ...] = ()
    release: str = ""  # the released checkpoint file this variant loads (its key layout), for messages and docs
    decoder: str = "sam"  # "hq": HQ-SAM's mask decoder (HQ token + feature fusion) on a frozen SAM
    upstream: str = ""  # the upstream builder that loads the release layout (what export tells users)


_TINY_VIT_5M = ((64, 2, 0, 0), (128, 2, 4, 7), (160, 6, 5, 14), (320, 2, 10, 7))

ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11), upstream="segment_anything.sam_model_registry['vit_b']",
                     release="sam_vit_b_01ec64.pth"),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23), upstream="segment_anything.sam_model_registry['vit_l']",
                     release="sam_vit_l_0b3195.pth"),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31), upstream="segment_anything.sam_model_registry['vit_h']",
                     release="sam_vit_h_4b8939.pth"),
    # ~0.56M parameters: trains on a CPU in minutes; same modules, same forward path.
    "vit_tiny": SamArch(96, 2, 2, (1,), window_size=8, prompt_dim=64, decoder_mlp_dim=256,
                        decoder_heads=4, fixed_image_size=None, native_image_size=128),
    # MobileSAM: TinyViT-5M image encoder (convolutional stem, windowed attention, no position
    # embedding, so any input side that is a multiple of 16 runs) + SAM's prompt encoder and decoder.
    "vit_t": SamArch(320, 12, 10, (), fixed_image_size=None, encoder="tiny_vit", stages=_TINY_VIT_5M,
                     release="mobile_sam.pt", upstream="mobile_sam.sam_model_registry['vit_t']"),
    # HQ-SAM: SAM's ViT + HQ-SAM's mask decoder; only the HQ additions train.
    "hq_vit_b": SamArch(768, 12, 12, (2, 5, 8, 11), decoder="hq", release="sam_hq_vit_b.pth",
                        upstream="sam-hq's segment_anything.sam_model_registry['vit_b']"),
    "hq_vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23), decoder="hq", release="sam_hq_vit_l.pth",
                        upstream="sam-hq's segment_anything.sam_model_registry['vit_l']"),
    "hq_vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31), decoder="hq", release="sam_hq_vit_h.pth",
                        upstream="sam-hq's segment_anything.sam_model_registry['vit_h']"),
    "hq_vit_tiny": SamArch(96, 2, 2, (1,), window_size=8, prompt_dim=64, decoder_mlp_dim=256, decoder_heads=4,
                           fixed_image_size=None, native_image_size=128, decoder="hq"),
}

__all__ = ["ARCHS", "PARTS", "PATCH_SIZE", "PIXEL_MEAN", "PIXEL_STD", "SamArch"]
