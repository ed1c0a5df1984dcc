"""Weighted mixtures: the epoch's draws are a pure function of (seed, epoch), follow the weights, cycle
through each dataset without repeats inside a cycle, and shard over ranks without overlap."""

import numpy as np
import pytest

from samft.data import MixedDataset, SA1BDataset
from samft.data.mixing import mixture_order
from samft.engine.sampler import ResumableSampler


def split(order, sizes):
    """(dataset, cycle, item) of each mixture index, decoded by hand."""
    total, offsets = sum(sizes), np.cumsum([0, *sizes])
    out = []
    for index in order:
        cycle, rest = divmod(index, total)
        d = int(np.searchsorted(offsets, rest, side="right") - 1)
        out.append((d, cycle, rest - offsets[d]))
    return out


def test_mixture_order_is_deterministic_and_follows_the_weights():
    sizes, weights = [5, 40, 3], [0.5, 0.3, 0.2]
    a = mixture_order(sizes, weights, seed=7, epoch=2, length=4000)
    assert a == mixture_order(sizes, weights, seed=7, epoch=2, length=4000)
    assert a != mixture_order(sizes, weights, seed=7, epoch=3, length=4000)
    drawn = split(a, sizes)
    shares = np.bincount([d for d, _, _ in drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, weights, atol=0.03)  # 4000 draws: std of a share <= 0.008
    for d, n in enumerate(sizes):  # each dataset: whole permutations one after the other
        items = [(c, i) for dd, c, i in drawn if dd == d]
        for c in range(len(items) // n):
            assert sorted(i for cc, i in items if cc == c) == list(range(n))


def test_mixed_dataset_locates_cycles_and_reads_fresh_draws(sa1b_folder, tmp_path, h):
    root, _ = sa1b_folder
    other = tmp_path / "other"
    h.write_pair(other, "z", h.random_image(40, 40), [h.annotation(1, h.rect(40, 40, 5, 30, 5, 30))])
    a = SA1BDataset(root, image_size=64, prompt="point")
    b = SA1BDataset(other, image_size=64, prompt="point")
    mixed = MixedDataset([a, b], [3, 1], ["a", "b"])
    assert len(mixed) == 4 and mixed.weights == [0.75, 0.25]
    assert mixed.locate(2) == (0, 2) and mixed.locate(3) == (1, 0) and mixed.locate(4 * 2 + 3) == (1, 2)
    first, again = mixed[3], mixed[4 * 1 + 3]  # dataset b's only item, in its first and second cycle
    assert first["meta"]["file"] == again["meta"]["file"]
    assert not np.array_equal(first["points"].numpy(), again["points"].numpy())  # its own random draw
    with pytest.raises(ValueError, match="weights must be finite numbers > 0"):
        MixedDataset([a, b], [1, 0], ["a", "b"])


def test_mixture_sampler_shards_ranks_and_resumes_mid_epoch():
    sizes, weights = [6, 4], [1.0, 3.0]
    ranks = [ResumableSampler(10, seed=1, rank=r, world_size=2, mixture=(sizes, weights)) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    assert shards[0] + shards[1] != [] and len(shards[0]) == len(shards[1]) == 5
    whole = mixture_order(sizes, weights, 1, 3, 10)
    assert sorted(shards[0] + shards[1]) == sorted(whole)
    resumed = ResumableSampler(10, seed=1, rank=1, world_size=2, mixture=(sizes, weights))
    resumed.set_epoch(3, start=2)
    assert list(resumed) == shards[1][2:]
