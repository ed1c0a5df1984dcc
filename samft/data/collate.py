"""Batching items with a varying number of masks and prompts per image."""

from __future__ import annotations

from typing import Any

import torch

from samft.data.prompts import pad_prompts
from samft.data.sa1b import SKIPPED


def collate_masks(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate :class:`~samft.data.sa1b.SA1BDataset` items into one batch.

    Masks of all images are concatenated (N = sum of the K_i); ``image_index`` says which image
    each belongs to. Prompts are padded to the largest P with label -1. Skip markers are left
    out and counted; a batch made only of skipped items has B = N = 0.

    Args:
        items: Items and skip markers from the dataset.

    Returns:
        ``images`` uint8 ``[B, 3, S, S]``; ``masks`` bool ``[N, S, S]``; ``valid`` bool ``[B, S, S]``;
        ``points`` float32 ``[N, P, 2]``; ``point_labels`` int64 ``[N, P]``; ``image_index`` int64
        ``[N]``; ``dist_maps`` float32 ``[N, S, S]`` when the items carry them; ``meta`` (list of B
        dicts); ``skipped`` (int, skip markers in this batch).
    """
    if not items:
        raise ValueError("collate_masks got an empty list of items.")
    good = [it for it in items if SKIPPED not in it]
    skipped = len(items) - len(good)
    if not good:
        return _empty_batch(items[0]["image_size"], items[0].get("with_dist_maps", False), skipped)
    counts = torch.tensor([it["masks"].shape[0] for it in good])
    points, labels = pad_prompts([(it["points"], it["point_labels"]) for it in good])
    batch = {
        "images": torch.stack([it["image"] for it in good]),
        "masks": torch.cat([it["masks"] for it in good]),
        "valid": torch.stack([it["valid"] for it in good]),
        "points": points,
        "point_labels": labels,
        "image_index": torch.repeat_interleave(torch.arange(len(good)), counts),
        "meta": [it["meta"] for it in good],
        "skipped": skipped,
    }
    if "dist_maps" in good[0]:
        batch["dist_maps"] = torch.cat([it["dist_maps"] for it in good])
    return batch


def _empty_batch(size: int, with_dist_maps: bool, skipped: int) -> dict[str, Any]:
    batch = {
        "images": torch.zeros(0, 3, size, size, dtype=torch.uint8),
        "masks": torch.zeros(0, size, size, dtype=torch.bool),
        "valid": torch.zeros(0, size, size, dtype=torch.bool),
        "points": torch.zeros(0, 1, 2),
        "point_labels": torch.zeros(0, 1, dtype=torch.long),
        "image_index": torch.zeros(0, dtype=torch.long),
        "meta": [],
        "skipped": skipped,
    }
    if with_dist_maps:
        batch["dist_maps"] = torch.zeros(0, size, size)
    return batch
