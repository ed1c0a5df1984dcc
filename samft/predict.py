"""Masks from a fine-tuned SAM for a folder of images: given prompts, or automatic ("everything").

``python tools/predict.py CHECKPOINT IMAGES_DIR --out OUT [--prompts prompts.json | --everything] [--overlays]``
writes ``OUT/<image stem>.json`` in SA-1B's layout (``image`` + ``annotations`` with COCO RLE) and, with
``--overlays``, ``OUT/<image stem>.png``. Each image is encoded once (``SamPredictor.set_image``) and its
prompts are decoded in batches of equal shape.

``prompts.json`` maps an image file name to a list of prompts, each with ``points`` ``[[x, y], ...]`` and
``labels`` (1 positive, 0 negative) and/or ``box`` ``[x0, y0, x1, y1]``, in original-image pixels::

    {"cat.jpg": [{"points": [[120, 80]], "labels": [1]}, {"box": [10, 20, 200, 180]}]}
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from segment_anything import SamPredictor
from segment_anything.utils.amg import area_from_rle, coco_encode_rle, mask_to_rle_pytorch

from samft.data import DataError
from samft.models.build import require_sam
from samft.registry import METRICS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class PromptsError(DataError):
    """A prompts file that cannot be used; the message names the file, the entry and the fix."""


def read_prompts(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read and check ``prompts.json`` (see the module docstring); every problem is one clear error."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PromptsError(f"{path} could not be read as JSON ({exc}). Write it as "
                           '{"image.jpg": [{"points": [[x, y]], "labels": [1]}, {"box": [x0, y0, x1, y1]}]}.') from None
    if not isinstance(raw, dict):
        raise PromptsError(f"{path} must map image file names to lists of prompts, not a {type(raw).__name__}.")
    return {name: [_check_prompt(path, name, i, p) for i, p in enumerate(prompts)] for name, prompts in raw.items()}


def _check_prompt(path: Path, name: str, index: int, prompt: Any) -> dict[str, Any]:
    where = f"{path}: prompt {index} of {name!r}"
    if not isinstance(prompt, dict) or not ({"points", "box"} & set(prompt)):
        raise PromptsError(f"{where} needs 'points' (with 'labels') and/or 'box'.")
    points = np.asarray(prompt.get("points", []), dtype=np.float64).reshape(-1, 2) if "points" in prompt else None
    labels = np.asarray(prompt.get("labels", []), dtype=np.int64) if points is not None else None
    if points is not None and (len(labels) != len(points) or not np.isin(labels, (0, 1)).all()):
        raise PromptsError(f"{where}: 'labels' must give 0 or 1 for each of its {len(points)} points.")
    box = np.asarray(prompt["box"], dtype=np.float64) if "box" in prompt else None
    if box is not None and (box.shape != (4,) or box[2] < box[0] or box[3] < box[1]):
        raise PromptsError(f"{where}: 'box' must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1.")
    return {"points": points, "labels": labels, "box": box}


def read_image(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (what ``SamPredictor.set_image`` expects)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise DataError(f"{path} could not be read as an image ({exc}).") from None


@torch.no_grad()
def predict_prompts(predictor: SamPredictor, prompts: list[dict[str, Any]], batch_size: int = 64) -> list[dict]:
    """Decode every prompt of the image set in ``predictor``, in batches of prompts with the same shape.

    A single positive click is ambiguous: SAM's three outputs compete and the one with the highest
    predicted IoU is kept; any other prompt uses the single-mask output (SAM's and samft's convention).

    Returns:
        one SA-1B-style annotation per prompt, in the order of ``prompts``.
    """
    groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[(0 if p["points"] is None else len(p["points"]), p["box"] is not None)].append(i)
    out: list[dict | None] = [None] * len(prompts)
    for (n_points, has_box), rows in groups.items():
        for start in range(0, len(rows), batch_size):
            batch = [prompts[i] for i in rows[start:start + batch_size]]
            for i, ann in zip(rows[start:start + batch_size], _decode(predictor, batch, n_points, has_box)):
                out[i] = {"id": i, **ann}
    return out


def _decode(predictor: SamPredictor, batch: list[dict], n_points: int, has_box: bool) -> list[dict]:
    size, device = predictor.original_size, predictor.device
    coords = labels = boxes = None
    if n_points:
        points = torch.as_tensor(np.stack([p["points"] for p in batch]), dtype=torch.float, device=device)
        coords = predictor.transform.apply_coords_torch(points, size)
        labels = torch.as_tensor(np.stack([p["labels"] for p in batch]), device=device)
    if has_box:
        box = torch.as_tensor(np.stack([p["box"] for p in batch]), dtype=torch.float, device=device)
        boxes = predictor.transform.apply_boxes_torch(box, size)
    multimask = n_points == 1 and not has_box
    logits, iou, _ = predictor.predict_torch(coords, labels, boxes, multimask_output=multimask, return_logits=True)
    if multimask:  # keep the output the model rates best, as SamPredictor users do
        pick = iou.argmax(dim=1)
        rows = torch.arange(len(batch), device=device)
        logits, iou = logits[rows, pick][:, None], iou[rows, pick][:, None]
    stability = METRICS.get("stability_score")(logits[:, 0], mask_threshold=predictor.model.mask_threshold)
    rles = mask_to_rle_pytorch(logits[:, 0] > predictor.model.mask_threshold)
    return [_annotation(rle, float(q), float(s), p) for rle, q, s, p in zip(rles, iou[:, 0], stability, batch)]


# -- large images: tiles --------------------------------------------------------------------------
def _prompt_box(prompt: dict[str, Any]) -> np.ndarray:
    """``(x, y, w, h)`` the prompt covers: its box, else its points' bounding box."""
    if prompt["box"] is not None:
        x0, y0, x1, y1 = prompt["box"]
    else:
        (x0, y0), (x1, y1) = prompt["points"].min(0), prompt["points"].max(0)
    return np.array([x0, y0, x1 - x0 + 1, y1 - y0 + 1], np.float64)


def _shifted(prompt: dict[str, Any], dx: int, dy: int) -> dict[str, Any]:
    offset = np.array([dx, dy], np.float64)
    return {"points": None if prompt["points"] is None else prompt["points"] - offset, "labels": prompt["labels"],
            "box": None if prompt["box"] is None else prompt["box"] - np.tile(offset, 2)}


def _full_frame(ann: dict[str, Any], window: tuple[int, int, int, int], size: tuple[int, int]) -> dict[str, Any]:
    """A tile's annotation moved into the whole image (mask pasted at the tile's place, box shifted)."""
    from pycocotools import mask as mask_utils

    x0, y0, w, h = window
    seg = ann["segmentation"]
    counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
    full = np.zeros(size, np.uint8, order="F")
    full[y0:y0 + h, x0:x0 + w] = mask_utils.decode({"size": seg["size"], "counts": counts})
    rle = mask_utils.encode(full)
    out = dict(ann, segmentation={"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
               bbox=_bbox(rle), area=int(mask_utils.area(rle)), tile=[x0, y0, w, h])
    for key in ("point_coords",):
        if key in out:
            out[key] = (np.asarray(out[key], np.float64) + [x0, y0]).tolist()
    if "box" in out:
        out["box"] = (np.asarray(out["box"], np.float64) + [x0, y0, x0, y0]).tolist()
    if "crop_box" in out:
        cx, cy, cw, ch = out["crop_box"]
        out["crop_box"] = [cx + x0, cy + y0, cw, ch]
    return out


def predict_tiled(predictor: SamPredictor, image: np.ndarray, prompts: list[dict[str, Any]], tile: int,
                  overlap: float, batch_size: int = 64) -> list[dict]:
    """:func:`predict_prompts` on an image larger than ``tile``: each prompt is decoded in the tile that holds
    the largest part of its box (or of its points' bounding box; ties: the nearest tile centre), and its
    mask is pasted into the whole image (nothing outside that tile). Tiles (``tile`` px squares,
    ``overlap`` of their side shared with neighbours) are encoded only when a prompt needs them."""
    from samft.data.base import assign_to_tiles, tile_windows

    height, width = image.shape[:2]
    windows = tile_windows(height, width, tile, overlap)
    owner = assign_to_tiles(np.stack([_prompt_box(p) for p in prompts]), windows) if prompts else []
    out: list[dict | None] = [None] * len(prompts)
    for t, window in enumerate(windows):
        rows = np.flatnonzero(np.asarray(owner) == t)
        if not rows.size:
            continue
        x0, y0, w, h = window
        predictor.set_image(np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w]))
        shifted = [_shifted(prompts[i], x0, y0) for i in rows]
        for i, ann in zip(rows, predict_prompts(predictor, shifted, batch_size)):
            ann = _full_frame(ann, window, (height, width))
            out[i] = {**ann, "id": int(i), **_prompt_fields(prompts[i])}
    return out


def _prompt_fields(prompt: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if prompt["points"] is not None:
        fields["point_coords"], fields["point_labels"] = prompt["points"].tolist(), prompt["labels"].tolist()
    if prompt["box"] is not None:
        fields["box"] = prompt["box"].tolist()
    return fields


def everything_tiled(generator: Any, image: np.ndarray, tile: int, overlap: float,
                     nms_thresh: float = 0.7) -> list[dict]:
    """Automatic masks of an image larger than ``tile``, tile by tile, merged as SAM merges its crops: masks
    whose box touches a tile edge inside the image are left out (a neighbouring tile holds them whole),
    the rest are pasted into the whole image and duplicates removed by box NMS (``nms_thresh``), the
    higher predicted IoU kept."""
    from torchvision.ops import nms

    from samft.data.base import tile_windows

    height, width = image.shape[:2]
    merged: list[dict] = []
    for window in tile_windows(height, width, tile, overlap):
        x0, y0, w, h = window
        for ann in generator.generate(np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w])):
            bx, by, bw, bh = ann["bbox"]
            inner_edge = ((x0 > 0 and bx <= 1) or (y0 > 0 and by <= 1) or (x0 + w < width and bx + bw >= w - 1)
                          or (y0 + h < height and by + bh >= h - 1))
            if not inner_edge:
                merged.append(_full_frame(ann, window, (height, width)))
    if not merged:
        return []
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in merged], dtype=torch.float64)
    scores = torch.tensor([a["predicted_iou"] for a in merged], dtype=torch.float64)
    return [merged[int(i)] for i in nms(boxes, scores, nms_thresh)]


def _annotation(rle: dict, predicted_iou: float, stability: float, prompt: dict | None) -> dict[str, Any]:
    """One SA-1B annotation (bbox XYWH from the mask, as SA-1B's)."""
    coco = coco_encode_rle(rle)
    ann = {"segmentation": coco, "area": area_from_rle(rle), "bbox": _bbox(coco),
           "predicted_iou": predicted_iou, "stability_score": stability}
    if prompt is not None:
        if prompt["points"] is not None:
            ann["point_coords"] = prompt["points"].tolist()
            ann["point_labels"] = prompt["labels"].tolist()
        if prompt["box"] is not None:
            ann["box"] = prompt["box"].tolist()
    return ann


def _bbox(coco_rle: dict) -> list[float]:
    from pycocotools import mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(coco_rle)]


def overlay(image: np.ndarray, annotations: list[dict], seed: int = 0) -> Image.Image:
    """The image with each mask tinted in its own colour, largest first so small masks stay visible."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    canvas = image.astype(np.float32)
    for ann in sorted(annotations, key=lambda a: -a["area"]):
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * rng.integers(0, 256, 3)
    return Image.fromarray(canvas.astype(np.uint8))


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images. Pass the folder that holds them.")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return images


def predict(args: argparse.Namespace) -> int:
    """Run ``tools/predict.py`` with its parsed arguments (:func:`samft.predict_cli.parser`)."""
    from tqdm import tqdm

    from samft.amg import AutomaticMaskGenerator
    from samft.engine.runtime import select_device
    from samft.export import load_model

    images = list_images(args.images)
    prompts = read_prompts(args.prompts) if args.prompts else None
    if prompts is not None:  # images without prompts are skipped, prompts without an image ignored
        named = [p for p in images if p.name in prompts]
        if not named:
            raise PromptsError(f"{args.prompts} names none of the images in {args.images} "
                               f"(e.g. {next(iter(prompts), 'nothing')!r} vs {images[0].name!r}).")
        images = named
    model = load_model(args.checkpoint, select_device(args.device))
    require_sam(model, "tools/predict.py")
    predictor = SamPredictor(model)
    generator = AutomaticMaskGenerator(
        model, points_per_side=args.points_per_side, points_per_batch=args.batch_size,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh,
        crop_n_layers=args.crop_n_layers) if args.everything else None
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    tiled = 0
    for path in tqdm(images, unit="image", disable=None):  # a bar on a terminal, none in a job's log
        image = read_image(path)
        large = args.tile is not None and max(image.shape[:2]) > args.tile
        tiled += large
        if generator is not None and large:
            anns = [{**a, "id": i} for i, a in enumerate(everything_tiled(generator, image, args.tile,
                                                                          args.tile_overlap))]
        elif generator is not None:
            anns = [{"id": i, **a} for i, a in enumerate(generator.generate(image))]
        elif large:
            anns = predict_tiled(predictor, image, prompts[path.name], args.tile, args.tile_overlap, args.batch_size)
        else:
            predictor.set_image(image)
            anns = predict_prompts(predictor, prompts[path.name], args.batch_size)
        record = {"image": {"file_name": path.name, "height": image.shape[0], "width": image.shape[1]},
                  "annotations": anns}
        (args.out / f"{path.stem}.json").write_text(json.dumps(record))
        if args.overlays:
            overlay(image, anns).save(args.out / f"{path.stem}.png")
        total += len(anns)
    print(f"Wrote {total} masks for {len(images)} images to {args.out}"
          + (f" ({tiled} larger than --tile {args.tile} predicted in tiles)" if tiled else ""))
    return 0

