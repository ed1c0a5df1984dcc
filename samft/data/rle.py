"""COCO run-length encoding helpers: a bounds check before pycocotools decodes, and decoding with resize."""

from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from samft.data.transforms import resize_mask


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one checked RLE (see :func:`checked_rle`) to a ``[H, W]`` uint8 0/1 mask in Fortran order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools under numpy 2, once per call
        return mask_utils.decode([rle])[:, :, 0]


def decode_resized(rles: list[dict[str, Any]], hw: tuple[int, int]) -> np.ndarray:
    """Decode checked RLEs (see :func:`checked_rle`) one at a time and resize each to ``hw``.

    One at a time keeps memory at one full-resolution mask, not K of them.

    Returns:
        ``[K, h, w]`` uint8 0/1 masks.
    """
    out = np.empty((len(rles),) + tuple(hw), np.uint8)
    with warnings.catch_warnings():
        # pycocotools' decode triggers numpy 2's harmless "__array__ ... copy keyword" warning per call
        warnings.simplefilter("ignore", DeprecationWarning)
        for k, rle in enumerate(rles):
            mask = mask_utils.decode([rle])[:, :, 0]  # Fortran order: its transpose is C-contiguous
            # resize (if needed) in the transposed frame, then one fast OpenCV transpose into place
            # (numpy's Fortran-to-C copy is several times slower)
            cv2.transpose(resize_mask(mask.T, (hw[1], hw[0])), dst=out[k])
    return out


def rle_run_lengths(counts: bytes | str) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``, in numpy).

    Used to check an RLE before pycocotools decodes it: its C decoder writes every run without a
    bounds check, so runs that add up to more than ``H * W`` would write past the buffer.

    Returns:
        int64 run lengths (background first).
    """
    raw = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else counts, np.uint8).astype(np.int64)
    if raw.size == 0:
        return np.zeros(0, np.int64)
    values = raw - 48
    if values.min() < 0 or values.max() > 63:
        raise ValueError("RLE counts hold characters outside the COCO alphabet")
    more = (values & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    number = np.repeat(np.arange(ends.size), ends - starts + 1)
    shift = 5 * (np.arange(values.size) - starts[number])
    if shift.max(initial=0) > 55:
        raise ValueError("RLE counts hold a number too large")
    x = np.zeros(ends.size, np.int64)
    np.add.at(x, number, (values & 0x1F) << shift)
    negative = (values[ends] & 0x10) != 0
    x = np.where(negative, x | (-1 << (shift[ends] + 5)), x)
    runs = x.copy()
    # from the fourth run on, each count is stored as the difference to the count two before it
    if runs.size > 3:
        runs[3::2] = runs[1] + np.cumsum(x[3::2])
        runs[4::2] = runs[2] + np.cumsum(x[4::2])
    return runs


def checked_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A pycocotools RLE from an SA-1B ``segmentation``, verified against the image size.

    Args:
        segmentation: ``{"size": [H, W], "counts": str | list[int]}``.
        height, width: The image's size.

    Returns:
        ``{"size": [H, W], "counts": bytes}`` safe to decode.

    Raises:
        ValueError: wrong structure, a size that differs from the image's, or runs that do not
            cover exactly ``H * W`` pixels.
    """
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError("segmentation is not an RLE {'size': [H, W], 'counts': ...}")
    size = [int(v) for v in segmentation["size"]]
    if size != [height, width]:
        raise ValueError(f"RLE size {size[0]}x{size[1]} differs from the image size {height}x{width}")
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd)
        runs = np.asarray(counts, dtype=np.int64)
        rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    else:
        runs = rle_run_lengths(counts)
        rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if runs.size and (runs.min() < 0 or int(runs.sum()) != height * width):
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels, not {height}x{width} = {height * width}")
    if not runs.size:
        raise ValueError("RLE counts are empty")
    return rle
