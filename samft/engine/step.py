"""One SAM forward + loss on a collated batch: what a training step and validation share."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from samft.data import Batch
from samft.models import decode_outputs, output_candidates, preprocess, upscale

LOSS_RESOLUTIONS = ("low_res", "input")  # train.loss_resolution


class Prediction(NamedTuple):
    """Decoder outputs for N mask prompts; ``logits`` at the loss resolution.

    A NamedTuple so that DistributedDataParallel finds its tensors in the forward's output."""

    logits: torch.Tensor  # [N, 4, R, R]
    iou_pred: torch.Tensor  # [N, 4]
    candidates: torch.Tensor  # [N, 4] bool
    low_res: torch.Tensor  # [N, 4, h, w], what SAM feeds back as a mask prompt
    object_score: torch.Tensor | None = None  # [N] object-present logits (SAM 2's decoder); None for SAM


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a collated batch to ``device`` (non-blocking from pinned memory)."""
    return batch.to(device)


def encode_images(model: Sam, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Image embeddings ``[B, C, h, w]`` of resized-and-padded images (``valid``: False on padding)."""
    return model.image_encoder(preprocess(model, images, valid))


def predict(model: Sam, embeddings: torch.Tensor, batch: Batch, *, multimask: bool,
            resolution: str, mask_inputs: torch.Tensor | None = None) -> Prediction:
    """Decode every prompt of the batch and bring the logits to the loss resolution.

    Args:
        resolution: ``low_res`` keeps the decoder's 4h x 4w logits (targets are downsampled);
            ``input`` upsamples the logits to the padded input size S (targets stay as they are).
    """
    if resolution not in LOSS_RESOLUTIONS:  # never a silent low_res for a misspelt choice
        raise ValueError(f"train.loss_resolution={resolution!r}: use one of {', '.join(LOSS_RESOLUTIONS)}.")
    low_res, iou_pred, object_score = decode_outputs(model, embeddings, batch.image_index, batch.points,
                                                     batch.point_labels, mask_inputs)
    logits = upscale(low_res, batch.images.shape[-1]) if resolution == "input" else low_res
    return Prediction(logits, iou_pred, output_candidates(batch.point_labels, multimask), low_res, object_score)


def loss_targets(batch: Batch, size: int) -> dict[str, torch.Tensor]:
    """Targets at the loss resolution: ``target [N, R, R]`` float 0/1, ``valid [N, R, R]`` bool, and
    ``dist_map [N, R, R]`` (in pixels of that resolution) when the batch carries distance maps.

    Downsampling uses area averaging, then a 0.5 threshold, so a target pixel is foreground when
    most of the input pixels it covers are.
    """
    masks = batch.masks.float()
    valid = batch.valid if batch.ignore is None else batch.valid & ~batch.ignore  # crowds: no loss there
    valid = valid[batch.image_index].float()
    full = masks.shape[-1]
    out: dict[str, torch.Tensor] = {}
    if size == full:
        out["target"], out["valid"] = masks, valid > 0.5
        if batch.dist_maps is not None:
            out["dist_map"] = batch.dist_maps.float()
        return out
    out["target"] = (_area(masks, size) >= 0.5).float()
    out["valid"] = _area(valid, size) >= 0.5
    if batch.dist_maps is not None:
        out["dist_map"] = _area(batch.dist_maps.float(), size) * (size / full)
    return out


def _area(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x.unsqueeze(1), size=(size, size), mode="area").squeeze(1)
