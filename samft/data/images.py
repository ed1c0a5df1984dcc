"""Reading photos the way their annotations see them: EXIF orientation, grayscale and CMYK JPEGs.

Which frame the masks are in is decided by the size the annotation json states:

- the stored bitmap has that size: the masks are on the stored pixels and any EXIF orientation is
  ignored. This is COCO's convention (its annotations were drawn on the images as stored) and what
  OpenCV-free readers such as PIL and pycocotools show;
- the stored bitmap has that size transposed and its EXIF orientation turns it by 90 degrees
  (orientations 5-8): the masks were drawn on the upright photo (what phones and most labelling
  tools show), so the orientation is applied;
- anything else is a size mismatch (the file is skipped or raised, see ``data.on_error``).

Orientations that keep the size (mirror, 180 degrees) cannot be told apart by size and are read
as stored. Every mode PIL decodes (grayscale ``L``, ``CMYK``, palette, 16-bit) becomes RGB; 16- and 32-bit
grayscale (microscopy) is stretched from the image's own min..max to 0..255.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from samft.data.errors import BadFile
from samft.data.transforms import resize_image

EXIF_ORIENTATION = 0x0112
TURNS_90 = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def upright_needed(im: Image.Image, width: int, height: int) -> bool | None:
    """True when ``im``'s EXIF orientation must be applied for it to be ``width`` x ``height``,
    False when it already is (orientation ignored), None when neither fits."""
    if im.size == (width, height):
        return False
    orientation = im.getexif().get(EXIF_ORIENTATION)
    if orientation in TURNS_90 and im.size == (height, width):
        return True
    return None


def read_image(path: Path | BinaryIO | bytes, height: int, width: int, target_hw: tuple[int, int],
               name: str | None = None) -> np.ndarray:
    """Decode an image in its annotations' frame and return it ``[h, w, 3]`` uint8, resized to ``target_hw``.

    ``path`` may also be the encoded bytes or a file object (an image inside a tar); ``name`` then
    names it in messages.

    JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that is still at least the
    target size, which makes large images cheaper to read.

    Raises:
        BadFile: missing, undecodable or truncated file, or a size that differs from the json's.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        path = io.BytesIO(bytes(path))
    path_shown = name or path
    try:
        with Image.open(path) as im:
            upright = upright_needed(im, width, height)
            if upright is None:
                raise BadFile(path_shown, f"image is {im.size[0]}x{im.size[1]} but its json says {width}x{height}")
            h, w = target_hw
            im.draft("RGB", (h, w) if upright else (w, h))  # the stored bitmap is turned when upright
            im.load()
            shown = ImageOps.exif_transpose(im) if upright else im
            array = np.asarray(shown if shown.mode == "RGB" else _to_rgb(shown))
    except FileNotFoundError:
        raise BadFile(path_shown, "image file is missing") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadFile(path_shown, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return resize_image(array, target_hw)


HIGH_DEPTH = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})  # 16/32-bit grayscale (microscopy, medical)


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB of any PIL mode; 16/32-bit grayscale is stretched from its own min..max to 0..255 (PIL's
    conversion would clip it at 255, turning most of a 16-bit micrograph white)."""
    if im.mode not in HIGH_DEPTH:
        return im.convert("RGB")
    values = np.asarray(im, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = np.zeros(values.shape, np.uint8) if high <= low else ((values - low) * (255.0 / (high - low)) + 0.5)
    return Image.fromarray(np.repeat(np.asarray(scaled, np.uint8)[..., None], 3, axis=2))
