"""A resumable, rank-aware sampler: the data position is part of the training state.

``DistributedSampler`` can shard and reshuffle per epoch but cannot start in the middle of one, so
a resumed run would either repeat or skip data. This sampler draws the epoch's permutation from
``(seed, epoch)`` alone, shards it over ranks like ``DistributedSampler`` (padding by wrapping so
every rank gets the same count), and starts at any position within the epoch. With a mixture of
datasets (``data.train`` as a weighted list) the epoch's order is :func:`samft.data.mixing.mixture_order`,
also a pure function of ``(seed, epoch)``, so resuming stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from samft.data.mixing import mixture_order


class ResumableSampler(Sampler[int]):
    """Indices of one epoch for one rank, from a chosen position on.

    Args:
        length: Dataset size.
        seed: Base seed; the permutation of epoch e uses ``seed + e``.
        shuffle: Permute each epoch (training) or keep the order (validation).
        rank, world_size: This process's shard.
        mixture: ``(sizes, weights)`` of a :class:`~samft.data.mixing.MixedDataset`: each epoch draws
            ``length`` indices by weight instead of a permutation.
    """

    def __init__(self, length: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 mixture: tuple[list[int], list[float]] | None = None):
        if length <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset.")
        self.mixture = mixture
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # position within this rank's shard

    @property
    def per_rank(self) -> int:
        return -(-self.length // self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the position (in samples of this rank) to begin at."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start={start} is outside this rank's {self.per_rank} samples.")
        self.epoch, self.start = epoch, start

    def _shard(self) -> list[int]:
        if self.mixture is not None:
            order = mixture_order(*self.mixture, self.seed, self.epoch, self.length)
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.world_size
        order = (order * (total // self.length + 1))[:total]  # wrap so every rank gets per_rank
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler[int]):
    """This rank's share of ``range(length)`` in order, without padding (for evaluation, where a
    repeated image would be counted twice): rank r takes r, r + world_size, ...

    Shares differ by at most one image; nothing inside an evaluation is a collective, so that is fine.
    """

    def __init__(self, length: int, *, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
