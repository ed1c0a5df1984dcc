"""Batching items with a varying number of masks and prompts per image: :class:`Batch`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from samft.data.base import SKIPPED, TILES
from samft.prompting import pad_prompts


@dataclass
class Batch:
    """A collated batch: B images and the N masks of all of them, each mask with its prompt.

    Per image: ``images`` uint8 ``[B, 3, S, S]`` (resized, padded bottom-right), ``valid`` bool
    ``[B, S, S]`` (False on padding), ``meta`` (B dicts). Per mask: ``masks`` bool ``[N, S, S]``,
    ``points`` float32 ``[N, P, 2]`` and ``point_labels`` int64 ``[N, P]`` (see
    :mod:`samft.prompting`; -1 pads), ``image_index`` int64 ``[N]`` (the image of each mask),
    ``dist_maps`` float32 ``[N, S, S]`` when asked for. ``ignore`` bool ``[B, S, S]`` (True where the loss
    ignores pixels: COCO crowd regions) when any image has such regions. ``skipped``: unreadable files left out.
    ``embeddings`` ``[B, C, h, w]``: image embeddings from the embedding cache (the encoder is then
    skipped); ``cached_embeddings``: what the loader's workers read from it ahead (one per image, or None).
    """

    images: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor
    points: torch.Tensor
    point_labels: torch.Tensor
    image_index: torch.Tensor
    meta: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    dist_maps: torch.Tensor | None = None
    ignore: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    cached_embeddings: list[torch.Tensor | None] | None = None

    PER_MASK = ("masks", "points", "point_labels", "image_index", "dist_maps")

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def num_masks(self) -> int:
        return self.masks.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """The batch with every tensor on ``device`` (non-blocking from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked host copies (the DataLoader calls this with ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())

    def replace(self, **changes: Any) -> Batch:
        """A copy with some fields changed (e.g. other prompts for the same masks)."""
        return dataclasses.replace(self, **changes)

    def select_masks(self, keep: torch.Tensor) -> Batch:
        """The batch with only the masks (and their prompts, distance maps) where ``keep`` is True."""
        return self.replace(**{k: getattr(self, k)[keep] for k in self.PER_MASK if getattr(self, k) is not None})

    def _map(self, fn) -> Batch:
        changes = {f.name: fn(v) for f in dataclasses.fields(self)
                   if isinstance(v := getattr(self, f.name), torch.Tensor)}
        return self.replace(**changes)


def collate_masks(items: list[dict[str, Any]]) -> Batch:
    """Collate dataset items (:class:`~samft.data.base.MaskDataset`) into one batch.

    Masks of all images are concatenated (N = sum of the K_i); ``image_index`` says which image
    each belongs to. Prompts are padded to the largest P with label -1. Skip markers are left
    out and counted; a batch made only of skipped items has B = N = 0. An evaluation item made of
    the tiles of a large image adds each tile as an image.

    Args:
        items: Items and skip markers from the dataset.

    Returns:
        A :class:`Batch` (``dist_maps`` when the items carry them).
    """
    if not items:
        raise ValueError("collate_masks got an empty list of items.")
    items = [part for it in items for part in (it[TILES] if TILES in it else [it])]
    good = [it for it in items if SKIPPED not in it]
    skipped = len(items) - len(good)
    if not good:
        return _empty_batch(items[0]["image_size"], items[0].get("with_dist_maps", False), skipped)
    counts = torch.tensor([it["masks"].shape[0] for it in good])
    points, labels = pad_prompts([(it["points"], it["point_labels"]) for it in good])
    return Batch(
        images=torch.stack([it["image"] for it in good]),
        masks=torch.cat([it["masks"] for it in good]),
        valid=torch.stack([it["valid"] for it in good]),
        points=points,
        point_labels=labels,
        image_index=torch.repeat_interleave(torch.arange(len(good)), counts),
        meta=[it["meta"] for it in good],
        skipped=skipped,
        dist_maps=torch.cat([it["dist_maps"] for it in good]) if "dist_maps" in good[0] else None,
        ignore=_ignore(good),
    )


def _ignore(items: list[dict[str, Any]]) -> torch.Tensor | None:
    """``[B, S, S]`` ignored pixels of the batch, or None when no image has any."""
    if not any("ignore" in it for it in items):
        return None
    return torch.stack([it["ignore"] if "ignore" in it else torch.zeros_like(it["valid"]) for it in items])


def _empty_batch(size: int, with_dist_maps: bool, skipped: int) -> Batch:
    return Batch(
        images=torch.zeros(0, 3, size, size, dtype=torch.uint8),
        masks=torch.zeros(0, size, size, dtype=torch.bool),
        valid=torch.zeros(0, size, size, dtype=torch.bool),
        points=torch.zeros(0, 1, 2),
        point_labels=torch.zeros(0, 1, dtype=torch.long),
        image_index=torch.zeros(0, dtype=torch.long),
        skipped=skipped,
        dist_maps=torch.zeros(0, size, size) if with_dist_maps else None,
    )
