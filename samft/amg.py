"""Automatic mask generation ("segment everything") with a fine-tuned SAM, and threshold sweeps.

:class:`AutomaticMaskGenerator` is segment_anything's ``SamAutomaticMaskGenerator`` (same defaults: 32 x 32
points, predicted IoU > 0.88, stability >= 0.95, box NMS 0.7, optional crops; same masks, tested) split
into two stages:

1. :meth:`~AutomaticMaskGenerator.candidates` runs the model once per image and keeps every mask that
   could pass the loosest thresholds of interest, with its predicted IoU and stability score;
2. :meth:`~AutomaticMaskGenerator.select` applies one (predicted IoU, stability) pair and the NMS.

So a sweep over a threshold grid costs one model pass plus cheap selections. The model pass is also
faster than upstream: predicted IoU does not depend on the upscaled mask, so masks that fail it are
dropped at 1/4 resolution before upscaling (upstream upscales all 3 outputs of every point first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from torchvision.ops.boxes import batched_nms, box_area

from samft.models.build import require_sam
from samft.registry import METRICS

# SAM's recipe for automatic masks (segment_anything's defaults).
SAM_DEFAULTS = {"points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.88,
                "stability_score_thresh": 0.95, "stability_score_offset": 1.0, "box_nms_thresh": 0.7,
                "crop_n_layers": 0, "min_mask_region_area": 0}


@dataclass
class Candidates:
    """Every mask of one image that passed the loosest thresholds, before NMS (original image frame)."""

    data: MaskData          # rles, boxes, points, iou_preds, stability_score, crop_index, crop_boxes
    crop_boxes: list[list[int]]
    min_pred_iou: float
    min_stability: float


class _Selected:
    """A selection handed to SAM's ``generate`` in place of an image (see :meth:`AutomaticMaskGenerator.records`)."""

    def __init__(self, data: MaskData) -> None:
        self.data = data


class AutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` with a reusable candidate stage; same arguments, ``coco_rle`` output.

    Call contract: ``generate(image HxWx3 uint8) -> list of SA-1B-style records`` exactly as upstream;
    ``sweep(image, pairs) -> {pair: records}`` runs the model once for all pairs.
    """

    def __init__(self, model: Sam, output_mode: str = "coco_rle", **kwargs: Any) -> None:
        require_sam(model, "Segment-everything")
        super().__init__(model, output_mode=output_mode, **kwargs)
        self._stability = METRICS.get("stability_score")  # the registered metric (== upstream's function)

    @torch.no_grad()
    def candidates(self, image: np.ndarray, min_pred_iou: float | None = None,
                   min_stability: float | None = None) -> Candidates:
        """Run the model once on ``image`` (``[H, W, 3]`` uint8) and keep masks passing the given minimums.

        Args:
            min_pred_iou, min_stability: the loosest thresholds any later :meth:`select` will use
                (defaults: this generator's own thresholds).
        """
        min_iou = self.pred_iou_thresh if min_pred_iou is None else min_pred_iou
        min_stab = self.stability_score_thresh if min_stability is None else min_stability
        crop_boxes, layer_idxs = generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
        crops = []
        for index, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs)):
            crop = self._crop_candidates(image, crop_box, layer, min_iou, min_stab)
            crop["crop_index"] = torch.full((len(crop["rles"]),), index, dtype=torch.long)
            crop["crop_boxes"] = torch.tensor([crop_box] * len(crop["rles"]), dtype=torch.long).reshape(-1, 4)
            crops.append(crop)
        return Candidates(_concat(crops), crop_boxes, min_iou, min_stab)

    def select(self, cands: Candidates, pred_iou_thresh: float | None = None,
               stability_thresh: float | None = None) -> MaskData:
        """The masks upstream would return at these thresholds: filters, NMS per crop, NMS across crops."""
        iou_t = self.pred_iou_thresh if pred_iou_thresh is None else pred_iou_thresh
        stab_t = self.stability_score_thresh if stability_thresh is None else stability_thresh
        if iou_t < cands.min_pred_iou or stab_t < cands.min_stability:
            raise ValueError(f"Thresholds ({iou_t}, {stab_t}) are looser than the candidates' "
                             f"({cands.min_pred_iou}, {cands.min_stability}): call candidates() with lower minimums.")
        src = cands.data
        keep = torch.ones(len(src["rles"]), dtype=torch.bool)
        if iou_t > 0.0:  # upstream's comparisons: strict for IoU, >= for stability, both skipped at 0
            keep &= src["iou_preds"] > iou_t
        if stab_t > 0.0:
            keep &= src["stability_score"] >= stab_t
        order = []
        for index in range(len(cands.crop_boxes)):  # upstream runs NMS inside each crop separately
            rows = torch.nonzero(keep & (src["crop_index"] == index)).flatten()
            kept = batched_nms(src["boxes"][rows].float(), src["iou_preds"][rows], torch.zeros(len(rows)),
                               iou_threshold=self.box_nms_thresh)
            order.append(rows[kept])
        data = _subset(src, torch.cat(order))
        if len(cands.crop_boxes) > 1:  # duplicates between crops: prefer masks from smaller crops
            scores = 1 / box_area(data["crop_boxes"])
            data.filter(batched_nms(data["boxes"].float(), scores, torch.zeros(len(scores)),
                                    iou_threshold=self.crop_nms_thresh))
        data.to_numpy()
        return data

    def records(self, selection: MaskData, encoded: dict[int, dict] | None = None) -> list[dict[str, Any]]:
        """SA-1B-style records of a selection, written by upstream's ``generate`` itself.

        ``generate`` does the small-region cleanup, the RLE encoding and the record layout after calling
        ``_generate_masks(image)``; handing it the selection instead of an image reuses all of that.

        Args:
            encoded: A cache of COCO encodings shared by several selections of the same candidates (a
                sweep): each candidate mask is then encoded once, not once per threshold pair.
        """
        if encoded is None or self.output_mode != "coco_rle" or self.min_mask_region_area > 0:
            return SamAutomaticMaskGenerator.generate(self, _Selected(selection))
        self.output_mode = "uncompressed_rle"  # upstream's layout with the candidates' own RLE objects
        try:
            records = SamAutomaticMaskGenerator.generate(self, _Selected(selection))
        finally:
            self.output_mode = "coco_rle"
        for record in records:
            rle = record["segmentation"]
            if id(rle) not in encoded:
                encoded[id(rle)] = coco_encode_rle(rle)
            record["segmentation"] = encoded[id(rle)]
        return records

    def sweep(self, image: np.ndarray, pairs: list[tuple[float, float]]) -> dict[tuple[float, float], list[dict]]:
        """Records for each (predicted IoU, stability) threshold pair; the model runs once and each
        candidate mask is encoded once."""
        cands = self.candidates(image, min(p[0] for p in pairs), min(p[1] for p in pairs))
        encoded: dict[int, dict] = {}  # keyed by the candidate's RLE object, alive as long as cands
        return {pair: self.records(self.select(cands, *pair), encoded) for pair in pairs}

    def _generate_masks(self, image: np.ndarray | _Selected) -> MaskData:
        if isinstance(image, _Selected):
            return image.data
        return self.select(self.candidates(image))

    def _crop_candidates(self, image: np.ndarray, crop_box: list[int], layer: int, min_iou: float,
                         min_stab: float) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        self.predictor.set_image(cropped)
        points_for_image = self.point_grids[layer] * np.array(cropped.shape[:2])[None, ::-1]
        data = _concat([self._batch_candidates(points, cropped.shape[:2], crop_box, image.shape[:2], min_iou, min_stab)
                        for (points,) in batch_iterator(self.points_per_batch, points_for_image)])
        self.predictor.reset_image()
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        return data

    def _batch_candidates(self, points: np.ndarray, im_size: tuple[int, int], crop_box: list[int],
                          orig_size: tuple[int, int], min_iou: float, min_stab: float) -> MaskData:
        """Upstream's ``_process_batch`` with the predicted-IoU filter moved before the upscaling."""
        predictor, model = self.predictor, self.predictor.model
        coords = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        low_res, iou_preds = model.mask_decoder(
            image_embeddings=predictor.features, image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        point_rows = torch.as_tensor(points.repeat(3, axis=0))
        if min_iou > 0.0:
            keep = iou_preds > min_iou
            low_res, iou_preds, point_rows = low_res[keep], iou_preds[keep], point_rows[keep.cpu()]
        # Bilinear upscaling is per channel, so upscaling only the survivors gives upstream's logits exactly.
        masks = model.postprocess_masks(low_res[:, None], predictor.input_size, predictor.original_size)[:, 0]
        data = MaskData(masks=masks, iou_preds=iou_preds, points=point_rows)
        data["stability_score"] = self._stability(masks, mask_threshold=model.mask_threshold,
                                                   offset=self.stability_score_offset)
        if min_stab > 0.0:
            data.filter(data["stability_score"] >= min_stab)
        data["masks"] = data["masks"] > model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_size[1], orig_size[0]])
        if torch.any(near_edge):
            data.filter(~near_edge)
        data["rles"] = mask_to_rle_pytorch(uncrop_masks(data["masks"], crop_box, *orig_size))
        del data["masks"]
        for key in ("boxes", "iou_preds", "points", "stability_score"):  # selection and NMS run on the CPU
            data[key] = data[key].cpu()
        return data


def _subset(data: MaskData, rows: torch.Tensor) -> MaskData:
    """A new MaskData with ``rows`` of ``data`` (``MaskData.filter`` works in place; candidates are reused)."""
    out = MaskData()
    for key, value in data.items():
        if isinstance(value, list):
            out[key] = [value[i] for i in rows.tolist()]
        else:
            out[key] = value[rows]
    return out


def _concat(parts: list[MaskData]) -> MaskData:
    """``MaskData.cat`` of fresh parts without its deep copies (which took half of upstream's AMG time here)."""
    out = MaskData()
    for key, first in parts[0].items():
        values = [part[key] for part in parts]
        out[key] = [v for value in values for v in value] if isinstance(first, list) else torch.cat(values)
    return out
