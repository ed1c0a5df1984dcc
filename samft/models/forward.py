"""The differentiable SAM forward pass used for training and evaluation.

``Sam.forward`` is decorated with ``@torch.no_grad`` and loops over python dicts, so samft calls
the three submodules directly. Prompts of any mix (points, boxes, correction clicks) travel as one
tensor of tokens per mask: ``points [N, P, 2]`` with ``labels [N, P]`` where 1/0 are positive/negative
clicks, 2/3 the top-left/bottom-right box corners (SAM 2's convention) and -1 padding
(:mod:`samft.prompting`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from segment_anything.modeling import Sam

from samft.prompting import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NEGATIVE, PAD, POSITIVE

#: Set on a module whose activations are recomputed in backward (an encoder block, the mask decoder).
CHECKPOINTED = "_samft_checkpointed"


def preprocess(model: Sam, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Normalise resized-and-padded uint8 images as ``Sam.preprocess`` does.

    Args:
        images: ``[B, 3, S, S]`` uint8 (or float 0..255), padded bottom-right.
        valid: ``[B, S, S]`` bool, False on padding.

    Returns:
        ``[B, 3, S, S]`` float: (x - mean) / std inside the image and exactly 0 on the padding,
        matching SAM, which normalises before it pads.
    """
    x = (images.float() - model.pixel_mean) / model.pixel_std
    return x * valid.unsqueeze(1).to(x.dtype)


def embed_prompts(model: Sam, points: torch.Tensor, labels: torch.Tensor,
                  mask_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse and dense prompt embeddings for N masks, with per-mask prompt types.

    Args:
        points: ``[N, P, 2]`` (x, y) input-frame pixel coordinates (SAM adds the 0.5 pixel-centre shift).
        labels: ``[N, P]`` int, see the module docstring.
        mask_inputs: ``[N, 1, 4h, 4w]`` low-res mask logits from a previous round, or None.

    Returns:
        sparse ``[N, P + 1, C]`` (one trailing not-a-point token, as SAM appends for point prompts)
        and dense ``[N, C, h, w]``.
    """
    encoder = model.prompt_encoder
    n = points.shape[0]
    pad_point = points.new_zeros(n, 1, 2)
    pad_label = labels.new_full((n, 1), PAD)
    coords = torch.cat([points, pad_point], dim=1) + 0.5
    labels = torch.cat([labels, pad_label], dim=1)
    embedding = encoder.pe_layer.forward_with_coords(coords, encoder.input_image_size)
    is_pad = (labels == PAD).unsqueeze(-1)
    embedding = torch.where(is_pad, encoder.not_a_point_embed.weight.to(embedding.dtype), embedding)
    for label in (NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT):
        hit = (labels == label).unsqueeze(-1).to(embedding.dtype)
        embedding = embedding + hit * encoder.point_embeddings[label].weight
    if mask_inputs is None:
        h, w = encoder.image_embedding_size
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)
    else:
        dense = encoder.mask_downscaling(mask_inputs)
    return embedding, dense


class Decoded(NamedTuple):
    """The decoder's outputs for N mask prompts."""

    masks: torch.Tensor  # [N, 4, 4h, 4w] low-res logits: output 0 the single-mask token, 1-3 the multimask ones
    iou_pred: torch.Tensor  # [N, 4]
    object_score: torch.Tensor | None = None  # [N] object-present logits (SAM 2); None for models without


def decode_outputs(model: Sam, image_embeddings: torch.Tensor, image_index: torch.Tensor,
                   points: torch.Tensor, labels: torch.Tensor, mask_inputs: torch.Tensor | None = None) -> Decoded:
    """Every decoder output for every mask prompt of a batch of images.

    With the decoder's activation checkpointing on (:func:`samft.models.checkpoint_activations` with
    ``decoder=True``) and gradients enabled, the whole call (prompt encoder and mask decoder) keeps
    nothing for backward but its inputs and recomputes its activations there: they are per mask
    (the decoder attends over each prompt's own copy of the image embedding), so at 16 masks they
    outweigh the whole image encoder's. Outputs and gradients are the same either way.

    Args:
        image_embeddings: ``[B, C, h, w]`` from ``model.image_encoder``.
        image_index: ``[N]`` long, the image of each prompt.
        points, labels, mask_inputs: as in :func:`embed_prompts`.

    Returns:
        :class:`Decoded`. Callers choose outputs per prompt (see :func:`output_candidates`).
    """
    if points.shape[0] == 0:
        empty = image_embeddings.new_empty(0)
        return Decoded(empty, empty)
    if torch.is_grad_enabled() and getattr(model.mask_decoder, CHECKPOINTED, False):
        # Non-reentrant: exact with parameters that are not inputs, under autocast, and it replays
        # the RNG (LoRA dropout) on the inputs' device in the recomputation.
        return torch.utils.checkpoint.checkpoint(_decode, model, image_embeddings, image_index, points, labels,
                                                 mask_inputs, use_reentrant=False)
    return _decode(model, image_embeddings, image_index, points, labels, mask_inputs)


def _decode(model: Sam, image_embeddings: torch.Tensor, image_index: torch.Tensor, points: torch.Tensor,
            labels: torch.Tensor, mask_inputs: torch.Tensor | None) -> Decoded:
    sparse, dense = embed_prompts(model, points, labels, mask_inputs)
    # Each prompt gathers its image's embedding by index: no per-image loop, whose image list
    # (unique / nonzero) the host would have to read back from the device.
    # A model or decoder with its own batched path (SAM 2's, HQ-SAM's) declares it; SAM's takes the one below.
    decoder = model.mask_decoder
    predict = getattr(model, "predict_per_prompt", None) or getattr(decoder, "predict_per_prompt", None)
    if predict is not None:
        return Decoded(*predict(image_embeddings, image_index, model.prompt_encoder.get_dense_pe(), sparse, dense))
    return Decoded(*_predict_masks(decoder, image_embeddings[image_index], model.prompt_encoder.get_dense_pe(),
                                   sparse, dense))


def decode_masks(model: Sam, image_embeddings: torch.Tensor, image_index: torch.Tensor,
                 points: torch.Tensor, labels: torch.Tensor,
                 mask_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res mask logits ``[N, 4, 4h, 4w]`` and predicted IoU ``[N, 4]`` of :func:`decode_outputs`."""
    decoded = decode_outputs(model, image_embeddings, image_index, points, labels, mask_inputs)
    return decoded.masks, decoded.iou_pred


def _predict_masks(decoder, src: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                   dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` with the image embedding already given per prompt.

    segment_anything's version takes one image and repeats its embedding over the prompts; this one
    takes ``src [N, C, h, w]`` (one row per prompt), so prompts of several images decode in one call.
    The arithmetic is the decoder's own, on its own weights.
    """
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = src + dense
    pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


def output_candidates(labels: torch.Tensor, multimask: bool = True) -> torch.Tensor:
    """Which decoder outputs compete for each mask, following SAM.

    A single positive click is ambiguous: outputs 1-3 compete and the lowest-loss one is trained.
    Any other prompt (a box, several clicks) uses output 0 only.

    Args:
        labels: ``[N, P]`` prompt labels.
        multimask: False uses output 0 for every prompt.

    Returns:
        ``[N, 4]`` bool.
    """
    real = labels != PAD
    single_click = (real.sum(1) == 1) & ((labels == POSITIVE).sum(1) == 1)
    ambiguous = single_click & multimask
    candidates = torch.zeros(labels.shape[0], 4, dtype=torch.bool, device=labels.device)
    candidates[:, 0] = ~ambiguous
    candidates[:, 1:] = ambiguous.unsqueeze(1)
    return candidates


def best_output(iou_pred: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Index ``[N]`` of the candidate output with the highest predicted IoU (SAM's inference choice)."""
    return iou_pred.detach().masked_fill(~candidates, float("-inf")).argmax(dim=1)


def upscale(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize ``[N, M, h, w]`` low-res logits to ``[N, M, size, size]`` (the padded input frame)."""
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
