"""Augmentations (albumentations) and the input frame: SAM's resize-longest-side + pad-bottom-right, or
SAM 2's stretch to a square (:func:`served_shape`).

A config lists augmentations as ``{name: ..., **kwargs}`` specs, for example::

    augment:
      - {name: HorizontalFlip, p: 0.5}
      - {name: Affine, scale: [0.8, 1.2], rotate: [-15, 15], p: 0.5}
      - {name: OneOf, transforms: [{name: ColorJitter}, {name: RandomGamma}], p: 0.3}

Only the albumentations transforms named in :data:`WHITELIST` are accepted (an unknown name or
argument is an error with a suggestion). They run on the image resized to the served frame (longest
side ``image_size``, or the ``image_size`` square), before any padding; the image, the target masks, the valid-area mask, the
distance maps and the keypoints all go through the same sampled parameters. Transforms listed
in :data:`PIXEL_PERMUTATIONS` only move pixels around, so precomputed distance maps can follow
them exactly; any other geometric transform makes the dataset recompute distance maps on the
augmented masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from samft.archs import INPUT_FRAMES
from samft.data.errors import DataError
from samft.registry import did_you_mean

PIXEL_PERMUTATIONS = frozenset({"HorizontalFlip", "VerticalFlip", "RandomRotate90", "Transpose", "D4"})
OTHER_GEOMETRIC = frozenset({
    "Affine", "Rotate", "SafeRotate", "ShiftScaleRotate", "Perspective", "ElasticTransform", "GridDistortion",
    "OpticalDistortion", "RandomResizedCrop", "RandomSizedCrop", "RandomCrop", "CenterCrop", "RandomScale",
    "CropAndPad",
})
PIXEL_ONLY = frozenset({
    "ColorJitter", "RandomBrightnessContrast", "HueSaturationValue", "RGBShift", "RandomGamma", "GaussianBlur",
    "MotionBlur", "MedianBlur", "GaussNoise", "ISONoise", "ImageCompression", "CLAHE", "ToGray", "ChannelShuffle",
    "Sharpen", "Emboss", "Posterize", "Equalize", "RandomToneCurve", "Downscale", "ChannelDropout", "Solarize",
    "PlanckianJitter", "RandomFog", "RandomShadow",
})
COMPOSITIONS = frozenset({"OneOf", "SomeOf", "Sequential"})
WHITELIST = PIXEL_PERMUTATIONS | OTHER_GEOMETRIC | PIXEL_ONLY | COMPOSITIONS


@dataclass
class Augmentation:
    """A built augmentation pipeline.

    Attributes:
        compose: The albumentations pipeline (targets: image, masks, dist_maps, keypoints).
        names: Transform names in spec order (compositions flattened).
        permutation_only: True when every geometric transform is a pixel permutation (flips,
            90-degree rotations, transpose), so precomputed distance maps stay exact.
    """

    compose: A.Compose
    names: list[str]
    permutation_only: bool


def _plain(value: Any) -> Any:
    """Config containers (OmegaConf, tuples) -> plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _build_one(spec: Any, where: str, names: list[str]) -> A.BasicTransform | A.BaseCompose:
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise DataError(f"{where}: an augmentation must be a mapping {{name: ..., **kwargs}}, got {spec!r}.")
    kwargs = _plain(spec)
    name = kwargs.pop("name")
    if name not in WHITELIST:
        raise DataError(f"{where}: unknown augmentation {name!r}.{did_you_mean(str(name), sorted(WHITELIST))} "
                        f"Allowed: {', '.join(sorted(WHITELIST))}.")
    cls = getattr(A, name)
    if name in COMPOSITIONS:
        children = kwargs.pop("transforms", None)
        if not isinstance(children, list) or not children:
            raise DataError(f"{where}: {name} needs a non-empty list 'transforms' of augmentation specs.")
        kwargs["transforms"] = [_build_one(c, f"{where}.transforms[{i}]", names) for i, c in enumerate(children)]
    else:
        names.append(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key not in accepted:
            raise DataError(f"{where}: {name} has no argument {key!r}.{did_you_mean(key, accepted)} "
                            f"Arguments: {', '.join(accepted)}.")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).strip().splitlines()
        raise DataError(f"{where}: invalid arguments for {name}: {' '.join(first[:4])}") from None


def build_augmentation(specs: Any, where: str = "data.augment") -> Augmentation | None:
    """Build the augmentation pipeline from config specs.

    Args:
        specs: None, an empty list, or a list of ``{name: ..., **kwargs}`` mappings (OmegaConf
            containers work too). ``OneOf``, ``SomeOf`` and ``Sequential`` take a ``transforms``
            list of specs.
        where: Config location used in error messages.

    Returns:
        An :class:`Augmentation`, or None when there is nothing to apply.

    Raises:
        DataError: unknown transform or argument (with a did-you-mean), or invalid values.
    """
    if specs is None:
        return None
    specs = list(specs) if not isinstance(specs, Mapping) else [specs]
    if not specs:
        return None
    names: list[str] = []
    transforms = [_build_one(s, f"{where}[{i}]", names) for i, s in enumerate(specs)]
    compose = A.Compose(transforms, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                        additional_targets={"dist_maps": "masks"}, seed=0)
    permutation_only = all(n in PIXEL_PERMUTATIONS or n in PIXEL_ONLY for n in names)
    return Augmentation(compose, names, permutation_only)


def apply_augmentation(aug: Augmentation, seed: int, image: np.ndarray, masks: np.ndarray, valid: np.ndarray,
                       keypoints: np.ndarray, dist_maps: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run ``aug`` with parameters drawn from ``seed`` on an image and everything attached to it.

    Args:
        seed: Seeds the pipeline (the same seed gives the same result).
        image: ``[h, w, 3]`` uint8.
        masks: ``[K, h, w]`` uint8 0/1.
        valid: ``[h, w]`` uint8 0/1 (1 on real image pixels).
        keypoints: ``[K, 2]`` float (x, y) pixel indices.
        dist_maps: ``[K, h, w]`` float32, or None.

    Returns:
        Dict with ``image``, ``masks``, ``valid``, ``keypoints`` and ``dist_maps`` (or None),
        possibly of another size ``[h', w']``.
    """
    aug.compose.set_random_seed(seed)
    data = {"image": image, "masks": np.concatenate([valid[None], masks]), "keypoints": keypoints}
    if dist_maps is not None and len(dist_maps):
        data["dist_maps"] = dist_maps
    out = aug.compose(**data)
    stacked = np.asarray(out["masks"])
    return {"image": out["image"], "valid": stacked[0], "masks": stacked[1:],
            "keypoints": np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2),
            "dist_maps": np.asarray(out["dist_maps"]) if "dist_maps" in out else None}


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """SAM's ``ResizeLongestSide`` target ``(h, w)``: longest side ``long_side``, aspect kept, rounded."""
    scale = long_side / max(height, width)
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def check_input_frame(frame: str) -> str:
    """``frame`` when it is one of :data:`samft.archs.INPUT_FRAMES`, else a :class:`DataError`."""
    if frame not in INPUT_FRAMES:
        raise DataError(f"input_frame must be one of {INPUT_FRAMES}, got {frame!r}.")
    return frame


def served_shape(height: int, width: int, size: int, frame: str = "longest_side") -> tuple[int, int]:
    """The ``(h, w)`` an ``height`` x ``width`` image is resized to before padding to ``size`` x ``size``.

    ``longest_side``: SAM's (:func:`resized_shape`, then padded bottom-right); ``square``: ``(size, size)``,
    the image stretched as SAM 2 does (no padding, aspect ratio not kept)."""
    return (size, size) if frame == "square" else resized_shape(height, width, size)


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize ``[H, W, C]`` uint8 to ``hw``: area averaging when shrinking, bilinear when enlarging."""
    if image.shape[:2] == tuple(hw):
        return image
    shrink = hw[0] < image.shape[0]
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a 0/1 ``[H, W]`` uint8 mask (C or Fortran order) to ``hw``.

    Bilinear interpolation then rounding (a pixel is foreground where the interpolated value is
    at least 0.5, so edges stay where the image's own resampling puts them); below half size,
    area averaging then rounding instead, so thin parts are not skipped between samples.
    """
    if mask.shape == tuple(hw):
        return np.ascontiguousarray(mask)
    interp = cv2.INTER_AREA if hw[0] < 0.5 * mask.shape[0] else cv2.INTER_LINEAR
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:  # pycocotools decodes in Fortran order
        return cv2.resize(mask.T, (hw[0], hw[1]), interpolation=interp).T
    return cv2.resize(mask, (hw[1], hw[0]), interpolation=interp)


def pad_bottom_right(array: np.ndarray, size: int, value: float = 0) -> np.ndarray:
    """Pad the last two axes of ``[..., h, w]`` to ``[..., size, size]`` at the bottom and right."""
    h, w = array.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad a {h}x{w} array to {size}x{size}.")
    out = np.full(array.shape[:-2] + (size, size), value, dtype=array.dtype)
    out[..., :h, :w] = array
    return out
