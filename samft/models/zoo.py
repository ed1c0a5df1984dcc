"""The built-in entries of ``samft.registry.MODELS``: SAM ViT-B/L/H, the small ``vit_tiny``, MobileSAM's
``vit_t``, HQ-SAM (``hq_vit_b/l/h``, ``hq_vit_tiny``) and SAM 2.1 (``sam2_1_hiera_t/s/b_plus/l``).

Each entry is a :class:`ModelSpec`: how the model is built, which released checkpoint layout it
loads, which parts can be frozen, where layer-wise lr decay and activation checkpointing apply and
where PEFT adapters go. Every built-in but SAM 2.1 is a ``segment_anything.modeling.Sam`` (only the image
encoder differs); SAM 2.1 is the ``sam2`` package's model behind the same interface
(:mod:`samft.models.sam2_model`, imported only when one is built), so the engine calls all of them the
same way (:mod:`samft.models.forward`). Sizes live in the torch-free table :data:`samft.archs.ARCHS`,
which config validation reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from samft.archs import ARCHS, PARTS, PATCH_SIZE, PIXEL_MEAN, PIXEL_STD, SamArch
from samft.errors import UserError
from samft.models.hq_sam import HQ_PARAMETERS, HQImageEncoderViT, MaskDecoderHQ
from samft.models.tiny_vit import TinyViT
from samft.registry import MODELS

# Output rows of a fused q/k/v projection: name -> (start, stop) ranges, e.g. {"q": [(0, 768)], ...}.
QkvRows = dict[str, list[tuple[int, int]]]


def stacked_qkv(model: nn.Module, name: str) -> QkvRows:
    """segment_anything's ``Attention.qkv`` (and most ViTs'): all of q, then all of k, then all of v."""
    width = model.get_submodule(name).out_features // 3
    return {t: [(i * width, (i + 1) * width)] for i, t in enumerate("qkv")}


def per_head_qkv(model: nn.Module, name: str) -> QkvRows:
    """TinyViT's ``Attention.qkv``: per head ``[q (d), k (d), v (d)]`` (``d`` = its ``head_dim``)."""
    attention = model.get_submodule(name.rpartition(".")[0])
    d = attention.head_dim
    return {t: [(h * 3 * d + i * d, h * 3 * d + (i + 1) * d) for h in range(attention.heads)]
            for i, t in enumerate("qkv")}


@dataclass(frozen=True)
class ModelSpec:
    """One registered model (see ``help(samft.registry.MODELS)`` for the contract).

    Attributes:
        name: The ``model.name`` it is registered under.
        build: ``image_size -> model`` (untrained, train mode).
        release: The released checkpoint whose key layout ``load_state_dict`` takes strictly.
        encoder_blocks: ``model -> [blocks]`` that activation checkpointing wraps, input to output.
        decay_layer: ``(model, name relative to the image encoder) -> (depth of that parameter,
            depth of the encoder)``: layer-wise lr decay gives it ``layer_decay ** (depth + 1 - layer)``.
        peft_targets: ``fnmatch`` patterns of the ``nn.Linear`` modules LoRA's ``q``/``k``/``v``/``qkv``
            targets wrap (the attention's fused q/k/v projection in each image-encoder block, as SAMed
            and micro-sam); a target's encoder block (for PEFT's ``blocks``) is the one holding it.
        qkv_rows: ``(model, target name) -> {"q": [(start, stop), ...], "k": ..., "v": ...}``: where
            q, k and v sit in a target's output rows (LoRA on ``q`` and ``v`` updates only theirs).
        parts: The submodules that ``model.freeze_*`` can freeze and PEFT methods can adapt; a
            submodule not listed always trains (unless ``trainable`` says otherwise).
        trainable: ``fnmatch`` patterns of the only parameters that ever train (HQ-SAM: its additions;
            empty: every parameter of the parts not frozen).
    """

    name: str
    build: Callable[[int], nn.Module]
    release: str
    encoder_blocks: Callable[[nn.Module], list[nn.Module]]
    decay_layer: Callable[[nn.Module, str], tuple[int, int]]
    peft_targets: tuple[str, ...]
    qkv_rows: Callable[[nn.Module, str], QkvRows] = stacked_qkv
    parts: tuple[str, ...] = PARTS
    trainable: tuple[str, ...] = ()

    def __call__(self, image_size: int = 1024) -> nn.Module:
        return self.build(image_size)


def sam_parts(arch: SamArch, image_encoder: nn.Module, image_size: int, decoder: type[MaskDecoder] = MaskDecoder,
              **decoder_options) -> Sam:
    """SAM's prompt encoder and mask decoder around ``image_encoder`` (an ``S/16`` embedding of ``prompt_dim``)."""
    side = image_size // PATCH_SIZE
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=arch.prompt_dim, image_embedding_size=(side, side),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=decoder(
            **decoder_options, num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=arch.prompt_dim, mlp_dim=arch.decoder_mlp_dim,
                                          num_heads=arch.decoder_heads),
            transformer_dim=arch.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=arch.prompt_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    ).train()


def build_vit_sam(arch: SamArch, image_size: int) -> Sam:
    """segment_anything's ``_build_sam`` architecture at ``arch``'s sizes (HQ-SAM's for ``decoder="hq"``)."""
    hq = arch.decoder == "hq"
    encoder = (HQImageEncoderViT if hq else ImageEncoderViT)(
        img_size=image_size, patch_size=PATCH_SIZE, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads, mlp_ratio=4, out_chans=arch.prompt_dim, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        global_attn_indexes=arch.global_attn_indexes, window_size=arch.window_size,
    )
    if hq:
        return sam_parts(arch, encoder, image_size, MaskDecoderHQ, vit_dim=arch.embed_dim)
    return sam_parts(arch, encoder, image_size)


def build_tiny_vit_sam(arch: SamArch, image_size: int) -> Sam:
    """MobileSAM's ``build_sam_vit_t`` architecture: TinyViT-5M + SAM's prompt encoder and mask decoder."""
    return sam_parts(arch, TinyViT(image_size, arch.stages, out_chans=arch.prompt_dim), image_size)


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.image_encoder.blocks)


def vit_decay_layer(model: nn.Module, name: str) -> tuple[int, int]:
    """SAM's ViT: 0 = patch and position embedding, block ``i`` = ``i + 1``, neck = depth + 1."""
    depth = len(model.image_encoder.blocks)
    parts = name.split(".")
    if parts[0] == "blocks":
        return int(parts[1]) + 1, depth
    return (depth + 1 if parts[0] == "neck" else 0), depth


def tiny_vit_blocks(model: nn.Module) -> list[nn.Module]:
    return model.image_encoder.all_blocks()


def tiny_vit_decay_layer(model: nn.Module, name: str) -> tuple[int, int]:
    encoder = model.image_encoder
    return encoder.decay_layer(name), len(encoder.all_blocks())


def _register_vit(name: str) -> None:
    hq = ARCHS[name].decoder == "hq"
    MODELS.register(name)(ModelSpec(
        name=name, build=partial(build_vit_sam, ARCHS[name]),
        release=ARCHS[name].release or "none (samft's own layout: Sam.state_dict())",
        encoder_blocks=vit_blocks, decay_layer=vit_decay_layer,
        peft_targets=("image_encoder.blocks.*.attn.qkv",), trainable=HQ_PARAMETERS if hq else (),
    ))


for _name in ("vit_b", "vit_l", "vit_h", "vit_tiny", "hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny"):
    _register_vit(_name)

MODELS.register("vit_t")(ModelSpec(
    name="vit_t", build=partial(build_tiny_vit_sam, ARCHS["vit_t"]), release="mobile_sam.pt",
    encoder_blocks=tiny_vit_blocks, decay_layer=tiny_vit_decay_layer,
    peft_targets=("image_encoder.layers.*.blocks.*.attn.qkv",), qkv_rows=per_head_qkv,
))


class ModelUnavailable(UserError, ImportError):
    """A registered model whose optional package is not installed; the message says how to install it."""


def build_sam2_model(arch: SamArch, image_size: int) -> nn.Module:
    """SAM 2.1 built by the ``sam2`` package (:mod:`samft.models.sam2_model`, imported only when needed)."""
    # hydra (sam2's config system) warns about omegaconf 2.4's renamed APIs on import and on every compose:
    # notes for hydra's authors, not for someone training a model.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="hydra")
        try:
            from samft.models import sam2_model
        except ImportError as exc:
            raise ModelUnavailable(f"SAM 2.1 models need the sam2 package ({exc}): run `make setup-sam2` (see the "
                                   "README, section The SAM family).") from None
        return sam2_model.build(arch, image_size)


def hiera_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.image_encoder.trunk.blocks)


def hiera_decay_layer(model: nn.Module, name: str) -> tuple[int, int]:
    """Hiera as SAM 2's ``layer_decay_param_modifier``: 0 = patch and position embeddings, block ``i`` =
    ``i + 1``, the FPN neck = depth + 1."""
    depth = len(model.image_encoder.trunk.blocks)
    parts = name.split(".")
    if parts[:2] == ["trunk", "blocks"]:
        return int(parts[2]) + 1, depth
    return (depth + 1 if parts[0] == "neck" else 0), depth


for _name, _arch in ARCHS.items():
    if _arch.encoder == "hiera":
        MODELS.register(_name)(ModelSpec(
            name=_name, build=partial(build_sam2_model, _arch), release=_arch.release,
            encoder_blocks=hiera_blocks, decay_layer=hiera_decay_layer,
            peft_targets=("image_encoder.trunk.blocks.*.attn.qkv",),
        ))
