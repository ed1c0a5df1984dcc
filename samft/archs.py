"""The SAM variants samft builds: their names, sizes and input, without importing torch.

This is the light half of the model registry (``samft.registry.MODELS`` holds the builders): config
validation reads it to check ``model.name`` and ``model.image_size`` before anything heavy is
imported, and :mod:`samft.models` builds from it. This module imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_FRAMES = ("longest_side", "square")  # SamArch.input_frame (samft.data.transforms.served_shape)

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
    ``embed_dim`` .. ``window_size``), ``tiny_vit`` (MobileSAM's TinyViT, sized by ``stages``) or
    ``hiera`` (SAM 2.1, built by the ``sam2`` package from ``sam2_config``; ``embed_dim``, ``depth``,
    ``num_heads`` and ``global_attn_indexes`` are Hiera's first-stage width, blocks, heads and global blocks).
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
    upstream: str = ""  # the upstream builder that loads the release layout (what export tells users; a
    # "{path}" in it marks where the checkpoint goes, else it is called with checkpoint=PATH)
    size_multiple: int = PATCH_SIZE  # input sides must be multiples of this (Hiera: 32, its coarsest stride)
    sam2_config: str = ""  # hiera only: the sam2 package's model config that builds it
    # How an image becomes the S x S input (one of INPUT_FRAMES): "longest_side" is SAM's ResizeLongestSide
    # + pad bottom-right; "square" stretches it to S x S, aspect not kept, as SAM 2 trains
    # (RandomResizeAPI(square=True)) and predicts (SAM2Transforms' Resize((S, S))). Training must serve
    # what the deployed predictor feeds the model.
    input_frame: str = "longest_side"


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


def _sam2(config: str, embed_dim: int, depth: int, num_heads: int, global_blocks: tuple[int, ...],
          release: str) -> SamArch:
    """SAM 2.1 (image path): Hiera + FPN neck, SAM 2's prompt encoder and mask decoder (with high-res
    features and an object-score head). No fixed input size: windowed attention with interpolated
    position embeddings runs at any multiple of 32 (the released weights were trained at 1024)."""
    return SamArch(embed_dim, depth, num_heads, global_blocks, fixed_image_size=None, encoder="hiera",
                   decoder="sam2", size_multiple=32, input_frame="square", release=release,
                   sam2_config=f"configs/sam2.1/{config}.yaml",
                   upstream=f"sam2.build_sam.build_sam2('configs/sam2.1/{config}.yaml', ckpt_path='{{path}}')")


# SAM 2.1 (names: sam2_1_hiera_<size>, snake_case for sam2.1_hiera_*): sizes from the sam2 package's
# configs/sam2.1/*.yaml (Hiera stages T [1,2,7,2], S [1,2,11,2],
# B+ [2,3,16,3], L [2,6,36,4]).
ARCHS.update({
    "sam2_1_hiera_t": _sam2("sam2.1_hiera_t", 96, 12, 1, (5, 7, 9), "sam2.1_hiera_tiny.pt"),
    "sam2_1_hiera_s": _sam2("sam2.1_hiera_s", 96, 16, 1, (7, 10, 13), "sam2.1_hiera_small.pt"),
    "sam2_1_hiera_b_plus": _sam2("sam2.1_hiera_b+", 112, 24, 2, (12, 16, 20), "sam2.1_hiera_base_plus.pt"),
    "sam2_1_hiera_l": _sam2("sam2.1_hiera_l", 144, 48, 2, (23, 33, 43), "sam2.1_hiera_large.pt"),
})



def input_frame(name: str) -> str:
    """The input frame of ``model.name`` (a plugin model not in :data:`ARCHS` gets SAM's)."""
    arch = ARCHS.get(name)
    return arch.input_frame if arch is not None else "longest_side"


__all__ = ["ARCHS", "INPUT_FRAMES", "PARTS", "PATCH_SIZE", "PIXEL_MEAN", "PIXEL_STD", "SamArch", "input_frame"]
