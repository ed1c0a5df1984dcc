"""Several datasets as one: the stream a weighted mixture draws from (``data.train`` as a list).

:class:`MixedDataset` puts the datasets one after the other; which of them each draw of an epoch
comes from, and which item, is decided by :func:`mixture_order` (called by the engine's sampler), a
pure function of the seed and the epoch, so a resumed run draws exactly what an uninterrupted one
would. A dataset drawn more often than it has items in an epoch is cycled through in fresh
permutations, each cycle's items with their own random masks, prompts and augmentations.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from samft.data.base import MaskDataset


class MixedDataset(Dataset):
    """Datasets one after the other, with their sampling weights and labels.

    An index ``cycle * len(self) + offset_d + i`` reads item ``i`` of dataset ``d`` in its ``cycle``-th
    pass of the epoch (:func:`mixture_order` makes these indices).

    Args:
        datasets: The datasets (:class:`~samft.data.base.MaskDataset`).
        weights: Sampling probability of each (normalised here).
        labels: A name for each, for messages and logs.
    """

    def __init__(self, datasets: Sequence[MaskDataset], weights: Sequence[float], labels: Sequence[str]) -> None:
        if not datasets or len(datasets) != len(weights) or len(labels) != len(datasets):
            raise ValueError("MixedDataset needs one weight and one label per dataset.")
        total = float(sum(weights))
        if not all(w > 0 for w in weights) or not np.isfinite(total):
            raise ValueError(f"mixture weights must be finite numbers > 0, got {list(weights)}.")
        self.datasets, self.labels = list(datasets), list(labels)
        self.weights = [float(w) / total for w in weights]
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(dataset, index within it)`` of a mixture index (the cycle folded into the inner index)."""
        cycle, rest = divmod(int(index), len(self))
        d = bisect.bisect_right(self.offsets, rest) - 1
        return d, cycle * self.sizes[d] + rest - self.offsets[d]

    def __getitem__(self, index: int) -> dict[str, Any]:
        d, inner = self.locate(index)
        return self.datasets[d][inner]

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    @property
    def skipped(self) -> int:
        return sum(d.skipped for d in self.datasets)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for d in self.datasets for r in d.records]

    @property
    def description(self) -> str:
        return " + ".join(f"{label} ({w:.2f}: {d.description})"
                          for label, w, d in zip(self.labels, self.weights, self.datasets))

    @property
    def image_size(self) -> int:
        return self.datasets[0].image_size


def mixture_order(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int,
                  length: int | None = None) -> list[int]:
    """The mixture indices (see :class:`MixedDataset`) one epoch draws, in order.

    Each draw picks dataset d with probability ``weights[d]``; the k-th draw of d in the epoch takes
    item ``perm_c[k % n_d]`` of its ``c = k // n_d``-th permutation. Everything comes from
    ``(seed, epoch)``: the same arguments give the same list.

    Args:
        sizes: Items per dataset.
        weights: Sampling probabilities (normalised here).
        length: Draws per epoch (default: the total number of items).
    """
    sizes = [int(n) for n in sizes]
    total = sum(sizes)
    length = total if length is None else int(length)
    p = np.asarray(weights, np.float64)
    p = p / p.sum()
    choice = np.random.default_rng([seed, epoch]).choice(len(sizes), size=length, p=p)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    order = np.empty(length, np.int64)
    for d, n in enumerate(sizes):
        where = np.flatnonzero(choice == d)
        if not where.size:
            continue
        cycles = -(-where.size // n)
        perms = np.concatenate([np.random.default_rng([seed, epoch, d + 1, c]).permutation(n) for c in range(cycles)])
        k = np.arange(where.size)
        order[where] = (k // n) * total + offsets[d] + perms[: where.size]
    return order.tolist()
