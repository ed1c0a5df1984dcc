"""SAM 2.1 image fine-tuning through Meta's ``sam2`` package (models ``sam2.1_hiera_t/s/b+/l``).

The model is built by ``sam2.build_sam.build_sam2`` from the package's own ``configs/sam2.1`` files, with
two classes swapped in through Hydra overrides: :class:`Sam2ImageModel` (a ``SAM2Base``) and
:class:`Sam2ImageEncoder` (sam2's ``ImageEncoder``: Hiera trunk + FPN neck). Neither adds or renames a
parameter, so the state dict is exactly the released ``sam2.1_hiera_*.pt`` layout (under its ``model``
key): memory attention, memory encoder and object pointers included, though the image path never runs
them (they stay frozen, and export writes them back unchanged).

How the engine calls it (:mod:`samft.models.forward`), following ``SAM2ImagePredictor`` and
``SAM2Base._forward_sam_heads``:

* ``image_encoder`` (trunk + neck, what ``model.freeze_image_encoder`` freezes) returns the neck's three
  feature levels packed in one tensor ``[B, 256 * 21, S/16, S/16]``: the S/16 feature, then the S/8 and S/4
  features folded into channels (``pixel_unshuffle``), so the embedding cache and every caller that
  carries "the image embedding" work unchanged. It is 21x SAM's embedding: ~44 MB per 1024 px image in the
  fp16 embedding cache, ~88 MB per image as fp32 on the device in a step.
* :meth:`Sam2ImageModel.predict_per_prompt` unpacks it, applies the decoder's ``conv_s0``/``conv_s1`` to
  the high-res levels and adds ``no_mem_embed`` to the S/16 feature (an image without memory), then runs
  ``sam_mask_decoder.predict_masks`` per prompt: 4 masks, 4 IoU predictions (sigmoid) and an object-score
  logit. Where the object score is <= 0 the masks are SAM 2's ``NO_OBJ_SCORE`` (-1024), as in
  ``_forward_sam_heads`` (SAM 2's training path).
* ``prompt_encoder`` / ``mask_decoder`` are ``sam_prompt_encoder`` / ``sam_mask_decoder`` (properties, not
  new modules, so no key is duplicated); SAM 2's prompt encoder has SAM's attributes, which
  :func:`samft.models.forward.embed_prompts` uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.image_encoder import ImageEncoder
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base
from torch import nn

from samft.archs import PIXEL_MEAN, PIXEL_STD, SamArch

#: Parameters of the image path (everything else in SAM2Base is video memory, never run on images).
IMAGE_PATH = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
#: The neck's levels S/16, S/8, S/4 as channel groups of the packed embedding (fold factor per level).
FOLDS = (1, 2, 4)


def pack_features(levels: list[torch.Tensor]) -> torch.Tensor:
    """Neck levels ``[S/4, S/8, S/16]`` (each ``[B, C, ., .]``) -> ``[B, 21 C, S/16, S/16]`` (S/16 first)."""
    return torch.cat([F.pixel_unshuffle(level, fold) if fold > 1 else level
                      for level, fold in zip(reversed(levels), FOLDS)], dim=1)


def unpack_features(packed: torch.Tensor, dim: int) -> list[torch.Tensor]:
    """Inverse of :func:`pack_features`: ``[S/16, S/8, S/4]`` features of ``dim`` channels each."""
    parts = packed.split([dim * fold * fold for fold in FOLDS], dim=1)
    return [F.pixel_shuffle(part, fold) if fold > 1 else part for part, fold in zip(parts, FOLDS)]


class Sam2ImageEncoder(ImageEncoder):
    """sam2's ``ImageEncoder`` (same parameters) whose forward returns the packed feature levels."""

    img_size: int  # the model's input side, set by Sam2ImageModel (export and ONNX read it)

    @property
    def blocks(self) -> nn.ModuleList:
        """Hiera's blocks, input to output (PEFT and activation checkpointing work on these)."""
        return self.trunk.blocks

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised -> ``[B, 21 * 256, S/16, S/16]`` (:func:`pack_features`)."""
        return pack_features(super().forward(sample)["backbone_fpn"])


class Sam2ImageModel(SAM2Base):
    """``SAM2Base`` (same parameters) with SAM's interface for the engine; see the module docstring."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(self.image_encoder, Sam2ImageEncoder):
            raise TypeError("Build Sam2ImageModel with samft.models.sam2_model.build (its image encoder "
                            "must be Sam2ImageEncoder).")
        self.image_encoder.img_size = self.image_size
        # SAM 2 normalises 0..1 RGB with ImageNet's mean/std: the same numbers as SAM's on 0..255.
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
        for name, param in self.named_parameters():
            if not name.startswith(IMAGE_PATH):
                param.requires_grad_(False)

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam_mask_decoder

    def image_features(self, packed: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """What SAM 2's decoder reads from an image without memory: the S/16 embedding plus
        ``no_mem_embed`` ``[B, 256, S/16, S/16]`` and the high-res features ``[conv_s0(S/4), conv_s1(S/8)]``."""
        low, mid, high = unpack_features(packed, self.hidden_dim)
        decoder = self.sam_mask_decoder
        embedding = low + self.no_mem_embed.reshape(1, -1, 1, 1).to(low.dtype)
        return embedding, [decoder.conv_s0(high), decoder.conv_s1(mid)]

    def predict_per_prompt(self, image_embeddings: torch.Tensor, image_index: torch.Tensor, image_pe: torch.Tensor,
                           sparse: torch.Tensor, dense: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """samft's batched decoder path (:func:`samft.models.forward.decode_outputs`).

        Args:
            image_embeddings: ``[B, 21 * 256, h, w]`` from :class:`Sam2ImageEncoder`.
            image_index: ``[N]``, the image of each prompt.
            image_pe: ``[1, 256, h, w]``; sparse / dense: ``[N, T, 256]`` / ``[N, 256, h, w]`` prompt embeddings.

        Returns:
            masks ``[N, 4, 4h, 4w]`` (NO_OBJ_SCORE where the object score is <= 0), IoU predictions
            ``[N, 4]`` and object-score logits ``[N]``.
        """
        # The per-image work (unpacking, high-res convolutions) runs once per image, then prompts gather it.
        embedding, high_res = self.image_features(image_embeddings)
        masks, iou_pred, _, object_score = self.sam_mask_decoder.predict_masks(
            embedding[image_index], image_pe, sparse, dense, repeat_image=False,
            high_res_features=[feature[image_index] for feature in high_res])
        masks = torch.where(object_score[:, :, None, None] > 0, masks, NO_OBJ_SCORE)
        return masks, iou_pred, object_score[:, 0]


def build(arch: SamArch, image_size: int) -> Sam2ImageModel:
    """``sam2.build_sam.build_sam2`` on ``arch.sam2_config`` at ``image_size``, untrained, on the CPU, in train
    mode (apply_postprocessing off: its stability fallback is an inference-time choice)."""
    from sam2.build_sam import build_sam2

    here = __name__
    overrides = [f"++model._target_={here}.Sam2ImageModel", f"++model.image_encoder._target_={here}.Sam2ImageEncoder",
                 f"++model.image_size={image_size}"]
    return build_sam2(arch.sam2_config, ckpt_path=None, device="cpu", mode="train", apply_postprocessing=False,
                      hydra_overrides_extra=overrides)
