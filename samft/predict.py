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
    predictor = SamPredictor(model)
    generator = AutomaticMaskGenerator(
        model, points_per_side=args.points_per_side, points_per_batch=args.batch_size,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh,
        crop_n_layers=args.crop_n_layers) if args.everything else None
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in tqdm(images, unit="image", disable=None):  # a bar on a terminal, none in a job's log
        image = read_image(path)
        if generator is not None:
            anns = [{"id": i, **a} for i, a in enumerate(generator.generate(image))]
        else:
            predictor.set_image(image)
            anns = predict_prompts(predictor, prompts[path.name], args.batch_size)
        record = {"image": {"file_name": path.name, "height": image.shape[0], "width": image.shape[1]},
                  "annotations": anns}
        (args.out / f"{path.stem}.json").write_text(json.dumps(record))
        if args.overlays:
            overlay(image, anns).save(args.out / f"{path.stem}.png")
        total += len(anns)
    print(f"Wrote {total} masks for {len(images)} images to {args.out}")
    return 0

