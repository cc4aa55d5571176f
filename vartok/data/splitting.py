"""Who reads what: shards split over ranks (nodes x GPUs) and DataLoader workers.

The unit of work is a *part* of a shard: ``Unit(url, part, parts)`` is the samples of one shard whose index i
satisfies ``i % parts == part``. Normally ``parts == 1`` (whole shards); when there are fewer shards than
reading slots (ranks x workers), shards are cut into strided parts so every slot still gets work and every
sample still belongs to exactly one unit.

Training: all ranks compute the same per-epoch permutation of the units from (seed, epoch) and slot s takes
units[s::S]; so within one pass the slots read disjoint data that together cover the set once.
Validation: units are balanced over ranks, then over workers, by sample count; each rank is told how many
batches to produce in total so every rank runs the same number of validation steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from vartok.distributed import is_distributed, rank_world


@dataclass(frozen=True)
class Unit:
    """Samples i of shard `url` with i % parts == part.

    Args:
        url: the shard.
        part: which stride class.
        parts: how many stride classes the shard is cut into.
    """

    url: str
    part: int = 0
    parts: int = 1

    def count(self, shard_count: int) -> int:
        """How many samples of a shard with `shard_count` samples fall in this unit."""
        return max(0, (shard_count - self.part + self.parts - 1) // self.parts)


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values win, then torch.distributed, then RANK/WORLD_SIZE, else (0, 1).

    Args:
        rank: global rank of this process, if known.
        world_size: number of processes, if known.
    """
    if rank is not None and world_size is not None:
        return rank, world_size
    if is_distributed():
        return rank_world()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def make_units(urls: list[str], slots: int) -> list[Unit]:
    """Whole shards, or strided parts of them when there are fewer shards than slots.

    Args:
        urls: shard URLs.
        slots: number of readers (ranks x workers).
    """
    parts = max(1, math.ceil(slots / max(1, len(urls))))
    return [Unit(url, part, parts) for url in urls for part in range(parts)]


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """A generator determined by (seed, epoch, stream ids), independent across the ids.

    Args:
        seed: the user's seed.
        epoch: the epoch number.
        stream: further ids (rank, worker, purpose).
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, *stream])))


def train_units(urls: list[str], seed: int, epoch: int, slot: int, slots: int, cycle: int = 0) -> list[Unit]:
    """The units slot `slot` of `slots` reads in this epoch (a disjoint share of a seeded permutation).

    Args:
        urls: all training shards.
        seed: the user's seed.
        epoch: the epoch number (the permutation changes every epoch).
        slot: rank * num_workers + worker.
        slots: world_size * num_workers.
        cycle: pass number inside an epoch (a resampled stream reshuffles on every pass).
    """
    units = make_units(urls, slots)
    order = epoch_rng(seed, epoch, 0x5EED, cycle).permutation(len(units))
    return [units[i] for i in order[slot::slots]]


@dataclass(frozen=True)
class WorkerPlan:
    """What one validation worker reads and how many batches it must yield.

    Args:
        units: the shard parts it reads, in order.
        counts: expected samples per unit (missing ones are padded, extra ones dropped).
        num_batches: batches to yield, padding batches included.
    """

    units: tuple[Unit, ...]
    counts: tuple[int, ...]
    num_batches: int


def _balance(items: list[tuple[Unit, int]], bins: int) -> list[list[tuple[Unit, int]]]:
    """Longest-processing-time assignment of (unit, count) items to `bins` bins, deterministic."""
    order = sorted(range(len(items)), key=lambda i: (-items[i][1], i))
    loads, chosen = [0] * bins, [[] for _ in range(bins)]
    for i in order:
        target = min(range(bins), key=lambda b: (loads[b], b))
        loads[target] += items[i][1]
        chosen[target].append(i)
    return [[items[i] for i in sorted(indices)] for indices in chosen]  # shard order: sequential reads


def plan_validation(urls: list[str], counts: list[int], world_size: int, num_workers: int,
                    batch_size: int) -> list[list[WorkerPlan]]:
    """Plans [rank][worker] so that every sample is read once and every rank yields the same batch count.

    Args:
        urls: validation shards.
        counts: samples per shard (from the manifest or a scan).
        world_size: number of ranks.
        num_workers: DataLoader workers per rank (0 counts as 1: the main process).
        batch_size: samples per batch.
    """
    workers = max(1, num_workers)
    count_of = dict(zip(urls, counts))
    items = [(unit, unit.count(count_of[unit.url])) for unit in make_units(urls, world_size * workers)]
    per_rank = _balance(items, world_size)
    plans, totals = [], []
    for rank_items in per_rank:
        per_worker = _balance(rank_items, workers)
        batches = [math.ceil(sum(c for _, c in chosen) / batch_size) for chosen in per_worker]
        plans.append([[tuple(u for u, _ in chosen), tuple(c for _, c in chosen), n]
                      for chosen, n in zip(per_worker, batches)])
        totals.append(sum(batches))
    target = max(totals) if totals else 0
    for rank_plans, total in zip(plans, totals):
        for extra in range(target - total):  # padding-only batches, spread over the workers
            rank_plans[extra % workers][2] += 1
    return [[WorkerPlan(*plan) for plan in rank_plans] for rank_plans in plans]
