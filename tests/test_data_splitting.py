"""Who reads what: coverage over simulated ranks x real DataLoader workers, validation exactly once with equal
batch counts, equal training epochs, and seeded per-epoch shuffling."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from tests.fixtures.data_shards import write_shards
from vartok.data import train_loader, val_loader
from vartok.data.splitting import make_units, plan_validation

UNEVEN = [5, 9, 3, 12, 1, 7, 4]
# 3 workers on a 2-core machine is on purpose here (more readers than shards).
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 41 samples in 7 shards of different sizes


def run_ranks(make_loader, world_size: int) -> list[list[dict]]:
    """All batches of every simulated rank (each rank builds its own loader, as in DDP)."""
    return [list(make_loader(rank)) for rank in range(world_size)]


@pytest.mark.parametrize("counts", [UNEVEN, [10, 6, 9]])  # 7 shards >= 4 slots; 3 shards < 4 slots
def test_one_pass_over_2_ranks_x_2_workers_sees_every_sample_once(tmp_path, counts):
    urls, keys = write_shards(tmp_path, counts)
    ranks = run_ranks(lambda rank: train_loader(urls, 8, 4, num_workers=2, resampled=False, rank=rank,
                                                world_size=2, shuffle_buffer=5, seed=3), 2)
    seen = Counter(key for batches in ranks for batch in batches for key in batch["key"])
    assert seen == Counter(keys)
    assert all(batch["valid"].all() for batches in ranks for batch in batches)


def test_validation_counts_each_image_once_with_equal_batches(tmp_path):
    urls, keys = write_shards(tmp_path, UNEVEN)
    batch_size = 4
    ranks = run_ranks(lambda rank: val_loader(urls, 8, batch_size, num_workers=2, rank=rank, world_size=2), 2)
    assert len(ranks[0]) == len(ranks[1]) >= math.ceil(len(keys) / (2 * batch_size))
    valid_keys = Counter()
    for batches in ranks:
        for batch in batches:
            assert batch["image"].shape == (batch_size, 3, 8, 8) and batch["valid"].shape == (batch_size,)
            for key, valid in zip(batch["key"], batch["valid"].tolist()):
                if valid:
                    valid_keys[key] += 1
                else:
                    assert key == ""
    assert valid_keys == Counter(keys)
    loader = val_loader(urls, 8, batch_size, num_workers=2, rank=1, world_size=2)
    assert len(loader) == len(ranks[1])


def test_validation_plan_brute_force():
    """Every (shard, index) is read by exactly one worker of one rank; all ranks have the same batch count;
    every worker has room for its samples."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = [int(c) for c in rng.integers(0, 30, rng.integers(1, 9))]
        urls = [f"shard{i}" for i in range(len(counts))]
        world, workers, batch = int(rng.integers(1, 5)), int(rng.integers(0, 4)), int(rng.integers(1, 9))
        plans = plan_validation(urls, counts, world, workers, batch)
        owners = Counter()
        for rank_plans in plans:
            assert len(rank_plans) == max(1, workers)
            for plan in rank_plans:
                for unit, expected in zip(plan.units, plan.counts):
                    indices = [i for i in range(counts[urls.index(unit.url)]) if i % unit.parts == unit.part]
                    assert len(indices) == expected
                    owners.update((unit.url, i) for i in indices)
                assert plan.num_batches * batch >= sum(plan.counts)
        assert owners == Counter((u, i) for u, c in zip(urls, counts) for i in range(c))
        assert len({sum(p.num_batches for p in rank_plans) for rank_plans in plans}) == 1


def test_units_partition_shards_when_there_are_fewer_shards_than_slots():
    units = make_units(["a", "b"], slots=5)
    assert len(units) >= 5
    for url, n in (("a", 11), ("b", 4)):
        covered = sorted(i for u in units if u.url == url for i in range(n) if i % u.parts == u.part)
        assert covered == list(range(n))


def test_resampled_epochs_have_equal_full_batches_on_every_rank(tmp_path):
    urls, keys = write_shards(tmp_path, UNEVEN)
    ranks = run_ranks(lambda rank: train_loader(urls, 8, 4, num_workers=2, epoch_size=30, rank=rank,
                                                world_size=2, seed=1), 2)
    assert [len(batches) for batches in ranks] == [7, 7]  # 30 // 4 batches per rank
    assert all(len(batch["key"]) == 4 for batches in ranks for batch in batches)
    assert {key for batches in ranks for batch in batches for key in batch["key"]} <= set(keys)


def epoch_keys(loader, epochs: int) -> list[list[str]]:
    return [[key for batch in loader for key in batch["key"]] for _ in range(epochs)]


@pytest.mark.parametrize("resampled", [True, False])
def test_shuffle_differs_between_epochs_and_repeats_for_the_same_seed(tmp_path, resampled):
    urls, keys = write_shards(tmp_path, UNEVEN)

    def make(seed):
        return train_loader(urls, 8, 4, num_workers=0, resampled=resampled, epoch_size=40 if resampled else None,
                            seed=seed, shuffle_buffer=8)

    first = epoch_keys(make(0), 3)
    again = epoch_keys(make(0), 3)
    other = epoch_keys(make(1), 3)
    assert first == again
    assert first[0] != first[1] and first[1] != first[2]
    assert first != other
    if not resampled:  # each epoch is a permutation of the whole set
        assert all(sorted(epoch) == sorted(keys) for epoch in first)


def test_epoch_comes_from_the_trainer_when_given(tmp_path):
    urls, _ = write_shards(tmp_path, UNEVEN)
    current = {"epoch": 4}
    loader = train_loader(urls, 8, 4, epoch_size=20, seed=0, epoch_fn=lambda: current["epoch"])
    a, b = epoch_keys(loader, 2)
    assert a == b  # the trainer did not advance: the same epoch is replayed
    reference = train_loader(urls, 8, 4, epoch_size=20, seed=0)
    assert epoch_keys(reference, 5)[4] == a  # epoch 4 of a plain loader


@pytest.mark.parametrize(("workers", "world"), list(itertools.product([0, 1, 3], [1, 3])))
def test_worker_count_does_not_change_coverage(tmp_path, workers, world):
    urls, keys = write_shards(tmp_path, [6, 6, 6])
    ranks = run_ranks(lambda rank: val_loader(urls, 8, 5, num_workers=workers, rank=rank, world_size=world), world)
    seen = Counter(k for batches in ranks for b in batches for k, v in zip(b["key"], b["valid"]) if v)
    assert seen == Counter(keys)
    assert len({len(batches) for batches in ranks}) == 1
