"""Build SAM models from segment_anything's own modules.

``vit_b``, ``vit_l`` and ``vit_h`` are exactly segment_anything's architectures (so Meta's released
checkpoints load into them); ``vit_tiny`` is a small variant made from the same modules for CPU
runs, demos and tests. Every model is a :class:`segment_anything.modeling.Sam`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.utils.checkpoint
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samft.archs import ARCHS, PATCH_SIZE
from samft.models.attention import use_attention
from samft.registry import did_you_mean

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def build_model(name: str, image_size: int = 1024, attention: str = "eager") -> Sam:
    """Build an untrained SAM of the named variant, in train mode.

    Args:
        name: ``vit_b``, ``vit_l``, ``vit_h`` or ``vit_tiny``.
        image_size: Square input side (multiple of 16). Fixed at 1024 for the released variants.
        attention: ``eager`` (segment_anything's image-encoder attention) or ``sdpa`` (the same values
            through one fused call that stores no attention matrix, :mod:`samft.models.attention`).
            Parameters are the same either way.

    Returns:
        A ``Sam`` whose image embedding is ``image_size/16`` and low-res masks ``image_size/4``.
    """
    if name not in ARCHS:
        raise ValueError(f"Unknown model {name!r}.{did_you_mean(name, list(ARCHS))} Known: {', '.join(ARCHS)}.")
    arch = ARCHS[name]
    if arch.fixed_image_size is not None and image_size != arch.fixed_image_size:
        raise ValueError(
            f"model.image_size={image_size} does not fit {name}: its positional embeddings and released "
            f"checkpoints are for {arch.fixed_image_size}. Use model.image_size={arch.fixed_image_size} "
            "or model.name=vit_tiny."
        )
    if image_size % PATCH_SIZE:
        raise ValueError(f"model.image_size={image_size} must be a multiple of {PATCH_SIZE}.")
    embed_side = image_size // PATCH_SIZE
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=PATCH_SIZE, embed_dim=arch.embed_dim, depth=arch.depth,
            num_heads=arch.num_heads, mlp_ratio=4, out_chans=arch.prompt_dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=arch.global_attn_indexes, window_size=arch.window_size,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim, image_embedding_size=(embed_side, embed_side),
            input_image_size=(image_size, image_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=arch.prompt_dim,
                                          mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_heads),
            transformer_dim=arch.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=arch.prompt_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return use_attention(model, attention).train()


def freeze(model: Sam, *, image_encoder: bool = False, prompt_encoder: bool = False,
           mask_decoder: bool = False, adapters: bool = False) -> None:
    """Turn off gradients of the chosen parts.

    Args:
        adapters: A PEFT method will add trainable parameters, so all three parts may be frozen."""
    for part, frozen in (("image_encoder", image_encoder), ("prompt_encoder", prompt_encoder),
                         ("mask_decoder", mask_decoder)):
        for param in getattr(model, part).parameters():
            param.requires_grad_(not frozen)
    if image_encoder and prompt_encoder and mask_decoder and not adapters:
        raise ValueError("All of image encoder, prompt encoder and mask decoder are frozen: nothing would train.")


def checkpoint_activations(model: Sam) -> None:
    """Recompute each image-encoder block's activations in backward instead of storing them.

    Trades one extra encoder forward for the memory of every block's activations: what makes ViT-H
    at 1024 px and 64 masks fit on smaller GPUs. Gradients are unchanged (non-reentrant checkpoint).
    """
    for block in model.image_encoder.blocks:
        if getattr(block, "_samft_checkpointed", False):
            continue
        plain_forward = block.forward

        def forward(x: torch.Tensor, _plain=plain_forward) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return _plain(x)
            return torch.utils.checkpoint.checkpoint(_plain, x, use_reentrant=False)

        block.forward = forward
        block._samft_checkpointed = True
