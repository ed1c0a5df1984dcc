"""A deterministic synthetic dataset in SA-1B format, for the demo, the tests and the benchmarks.

Each image is a real JPEG of a soft, low-saturation textured background with saturated coloured
shapes on it (ellipses, rectangles, rotated polygons; some overlapping, a few tiny). Each
annotation is the visible part of one shape, stored exactly as SA-1B stores it: COCO compressed
RLE, ``bbox``, ``area``, ``predicted_iou``, ``stability_score``, ``crop_box`` and
``point_coords``. Shapes differ strongly in colour from the background, so a small SAM learns
them from a point or a box in a few dozen steps.

``make_demo_dataset(root, ...)`` writes ``root/train`` and ``root/val`` and is idempotent: a
manifest records the settings; the same settings leave the files alone, other settings
rewrite them. ``split_dataset`` splits any SA-1B folder into train/val folders.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from scipy import ndimage

from samft.data.errors import DataError

MANIFEST = ".samft_demo.json"
FORMAT_VERSION = 1
JPEG_QUALITY = 92
VAL_ID_OFFSET = 100_000  # val image ids never collide with train ids


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a binary mask, json-ready.

    Args:
        mask: ``[H, W]`` bool or 0/1 array.

    Returns:
        ``{"size": [H, W], "counts": str}``, as SA-1B stores segmentations.
    """
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def inner_point(mask: np.ndarray) -> list[float]:
    """The pixel of ``mask`` farthest from its boundary as ``[x, y]`` pixel indices (first of ties).

    The image border counts as boundary. Computed on the bounding box padded by one pixel: an
    inside pixel's nearest background pixel is never farther than that ring.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("inner_point: the mask is empty.")
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    dist = ndimage.distance_transform_edt(np.pad(box, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(x + cols[0]), float(y + rows[0])]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-saturation texture: smooth blobs of grey with a slight tint plus fine noise."""
    coarse = rng.uniform(0, 1, size=(max(height // 24, 2), max(width // 24, 2), 1))
    smooth = np.asarray(Image.fromarray((coarse[..., 0] * 255).astype(np.uint8)).resize((width, height),
                                                                                      Image.BICUBIC))
    grey = 95.0 + 60.0 * smooth[..., None] / 255.0
    tint = rng.uniform(-8, 8, size=3)
    noise = rng.normal(0, 4, size=(height, width, 3))
    return np.clip(grey + tint + noise, 0, 255)


def _shape_colours(rng: np.random.Generator, n: int) -> list[tuple[float, float, float]]:
    """``n`` saturated colours spread around the hue circle (random start), as 0..255 RGB."""
    start = rng.uniform(0, 1)
    hues = (start + np.arange(n) / max(n, 1)) % 1.0
    rng.shuffle(hues)
    return [tuple(255 * c for c in colorsys.hsv_to_rgb(h, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0)))
            for h in hues]


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, value: int, width: int, height: int,
                tiny: bool) -> None:
    side = min(width, height)
    radius = rng.uniform(2, 4) if tiny else rng.uniform(0.08, 0.25) * side
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    kind = "ellipse" if tiny else rng.choice(["ellipse", "rectangle", "polygon"])
    if kind == "ellipse":
        rx, ry = radius, radius * rng.uniform(0.5, 1.0)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=value)
        return
    if kind == "rectangle":
        angles = rng.uniform(0, np.pi) + np.array([0.0, 0.5, 1.0, 1.5]) * np.pi
        angles += np.array([1, -1, 1, -1]) * rng.uniform(0.15, 0.45)
        radii = np.full(4, radius)
    else:
        count = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=count))
        radii = radius * rng.uniform(0.55, 1.0, size=count)
    points = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii)]
    draw.polygon(points, fill=value)


def render_demo_image(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One synthetic image and the visible masks of its shapes.

    Args:
        rng: Source of randomness (the image is a pure function of its state).
        width, height: Image size in pixels.

    Returns:
        ``image`` uint8 ``[H, W, 3]`` and a list of non-empty bool ``[H, W]`` masks (later shapes
        occlude earlier ones, so overlapping shapes keep only their visible part).
    """
    n_large = int(rng.integers(3, 7))
    n_tiny = int(rng.integers(0, 3))
    labels = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(labels)
    for i in range(n_large + n_tiny):
        _draw_shape(draw, rng, i + 1, width, height, tiny=i >= n_large)
    label_map = np.asarray(labels)
    image = _background(rng, height, width)
    masks = []
    for i, colour in enumerate(_shape_colours(rng, n_large + n_tiny)):
        mask = label_map == i + 1
        if not mask.any():  # fully occluded
            continue
        image[mask] = np.clip(np.asarray(colour) + rng.normal(0, 5, size=(int(mask.sum()), 3)), 0, 255)
        masks.append(mask)
    return image.astype(np.uint8), masks


def demo_record(image_id: int, file_name: str, masks: list[np.ndarray], rng: np.random.Generator) -> dict[str, Any]:
    """The SA-1B json of one image: every mask as compressed RLE with its box, area and scores.

    Small masks get lower ``predicted_iou`` / ``stability_score`` (as SAM's automatic masks do),
    so the quality filters have something to remove.
    """
    height, width = masks[0].shape if masks else (0, 0)
    annotations = []
    for k, mask in enumerate(masks):
        rle = encode_rle(mask)
        area = int(mask.sum())
        small = area < 64
        annotations.append({
            "id": image_id * 1000 + k,
            "segmentation": rle,
            "bbox": [float(v) for v in mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})],
            "area": area,
            "predicted_iou": round(float(rng.uniform(0.6, 0.8) if small else rng.uniform(0.86, 1.0)), 4),
            "stability_score": round(float(rng.uniform(0.7, 0.9) if small else rng.uniform(0.9, 1.0)), 4),
            "crop_box": [0.0, 0.0, float(width), float(height)],
            "point_coords": [inner_point(mask)],
        })
    return {"image": {"image_id": image_id, "width": width, "height": height, "file_name": file_name},
            "annotations": annotations}


def write_demo_folder(folder: str | Path, images: int, *, size: tuple[int, int] = (320, 240), seed: int = 0,
                      first_id: int = 1) -> list[Path]:
    """Write ``images`` pairs ``sa_<id>.jpg`` + ``sa_<id>.json`` into ``folder``.

    Args:
        folder: Output folder (created).
        images: Number of images.
        size: ``(width, height)``.
        seed: Image ``first_id + j`` uses ``default_rng([seed, first_id + j])``: deterministic, and
            independent of how many images are written.
        first_id: Id of the first image.

    Returns:
        The json paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    written = []
    for image_id in range(first_id, first_id + images):
        rng = np.random.default_rng([seed, image_id])
        image, masks = render_demo_image(rng, width, height)
        stem = f"sa_{image_id}"
        Image.fromarray(image).save(folder / f"{stem}.jpg", quality=JPEG_QUALITY)
        record = demo_record(image_id, f"{stem}.jpg", masks, rng)
        record["image"].update(width=width, height=height)
        (folder / f"{stem}.json").write_text(json.dumps(record))
        written.append(folder / f"{stem}.json")
    return written


def render_dense_masks(rng: np.random.Generator, width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` independent, possibly overlapping masks with SA-1B-like sizes (log-uniform radius
    from 4 px to 40% of the shorter side): many small parts, some large objects."""
    side = min(width, height)
    masks = []
    while len(masks) < count:
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        radius = float(np.exp(rng.uniform(np.log(4), np.log(0.4 * side))))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:
            ry = radius * rng.uniform(0.4, 1.0)
            draw.ellipse([cx - radius, cy - ry, cx + radius, cy + ry], fill=1)
        else:
            n = int(rng.integers(4, 9))
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
            radii = radius * rng.uniform(0.5, 1.0, size=n)
            draw.polygon([(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii)],
                         fill=1)
        mask = np.asarray(canvas, dtype=bool)
        if mask.any():
            masks.append(mask)
    return masks


def write_dense_folder(folder: str | Path, images: int, *, size: tuple[int, int] = (1500, 1000),
                       masks_per_image: int = 100, seed: int = 0) -> list[Path]:
    """An SA-1B-like folder for benchmarks: large JPEGs with ~100 masks each (see
    :func:`render_dense_masks`); deterministic, and files already present are kept.

    Returns:
        The json paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for image_id in range(1, images + 1):
        stem = f"sa_dense_{width}x{height}_{masks_per_image}_{seed}_{image_id}"
        path = folder / f"{stem}.json"
        paths.append(path)
        if path.is_file() and path.with_suffix(".jpg").is_file():
            continue
        rng = np.random.default_rng([seed, image_id, masks_per_image])
        masks = render_dense_masks(rng, width, height, masks_per_image)
        image = _background(rng, height, width)
        for mask, colour in zip(masks, _shape_colours(rng, len(masks))):
            image[mask] = 0.5 * image[mask] + 0.5 * np.asarray(colour)
        Image.fromarray(image.astype(np.uint8)).save(path.with_suffix(".jpg"), quality=JPEG_QUALITY)
        record = demo_record(image_id, f"{stem}.jpg", masks, rng)
        path.write_text(json.dumps(record))
    return paths


def make_demo_dataset(root: str | Path, *, train_images: int = 18, val_images: int = 6,
                      size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """Write the demo dataset ``root/train`` + ``root/val`` unless it already exists with these settings.

    Args:
        root: Output folder.
        train_images, val_images: Images per split (val ids start at 100001).
        size: ``(width, height)`` of every image.
        seed: Random seed; the same settings always give byte-identical files.

    Returns:
        ``root``.
    """
    root = Path(root)
    if train_images < 1 or val_images < 0:
        raise DataError(f"demo data needs train_images >= 1 and val_images >= 0, got {train_images}, {val_images}.")
    if min(size) < 16:
        raise DataError(f"demo image size {size} is too small; use at least 16x16 pixels.")
    settings = {"version": FORMAT_VERSION, "train_images": train_images, "val_images": val_images,
                "size": list(size), "seed": seed, "quality": JPEG_QUALITY}
    manifest = root / MANIFEST
    if manifest.is_file() and _manifest_holds(manifest, settings):
        return root
    _remove_previous(root, manifest)
    files = write_demo_folder(root / "train", train_images, size=size, seed=seed, first_id=1)
    files += write_demo_folder(root / "val", val_images, size=size, seed=seed, first_id=VAL_ID_OFFSET + 1)
    names = [str(p.relative_to(root)) for f in files for p in (f, f.with_suffix(".jpg"))]
    manifest.write_text(json.dumps({**settings, "files": names}, indent=1))
    return root


def _manifest_holds(manifest: Path, settings: dict[str, Any]) -> bool:
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    files = recorded.pop("files", [])
    return recorded == settings and all((manifest.parent / f).is_file() for f in files)


def _remove_previous(root: Path, manifest: Path) -> None:
    """Delete only the files a previous demo run wrote (never anything else in ``root``)."""
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text()).get("files", [])
    except (OSError, ValueError):
        files = []
    for name in files:
        (root / name).unlink(missing_ok=True)
    manifest.unlink()


def split_dataset(source: str | Path, dest: str | Path, *, val_fraction: float = 0.25, seed: int = 0,
                  copy: bool = False) -> tuple[int, int]:
    """Split an SA-1B folder into ``dest/train`` and ``dest/val`` (hard links, or copies).

    Args:
        source: Folder of ``<id>.jpg`` + ``<id>.json`` pairs.
        dest: Output folder; existing files with the same names are replaced.
        val_fraction: Share of pairs put into val (at least one when the folder has two pairs or more).
        seed: Shuffle seed; the split is a pure function of the sorted names and the seed.
        copy: Copy files instead of hard-linking them (hard links fall back to copies across devices).

    Returns:
        ``(n_train, n_val)``.
    """
    source, dest = Path(source), Path(dest)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    stems = sorted(p.stem for p in source.glob("*.json") if not p.name.startswith(".")
                   and p.with_suffix(".jpg").is_file())
    if not stems:
        raise DataError(f"{source} holds no <id>.jpg + <id>.json pairs to split.")
    order = np.random.default_rng(seed).permutation(len(stems))
    n_val = int(round(val_fraction * len(stems)))
    if val_fraction > 0 and len(stems) >= 2:
        n_val = min(max(n_val, 1), len(stems) - 1)
    for rank, j in enumerate(order):
        split = "val" if rank < n_val else "train"
        (dest / split).mkdir(parents=True, exist_ok=True)
        for suffix in (".jpg", ".json"):
            _place(source / f"{stems[j]}{suffix}", dest / split / f"{stems[j]}{suffix}", copy)
    return len(stems) - n_val, n_val


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.unlink(missing_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:  # other device or a file system without hard links
            pass
    shutil.copy2(src, dst)
