"""The iterable datasets: tar shards -> decoded, resized uint8 batches, with skip counts attached.

Each yields whole batches ``{"image": uint8 (B,3,H,W), "valid": bool (B,), "key": list[str], "_stats": ...}``
(the loader removes ``_stats``). `TrainStream` reads its slot's share of the shards (split by rank and by
worker), shuffles through a seeded buffer, and in resampled mode yields a fixed number of batches per worker;
`ValStream` follows a `WorkerPlan`, padding with ``valid=False`` samples so every rank yields the same count.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset

from vartok.data.batch import image_batch
from vartok.data.decode import IMAGE_EXTENSIONS, MISSING_IMAGE, SHARD_ERROR, UPSCALED, decode_image
from vartok.data.errors import DataError
from vartok.data.skips import STATS_KEY, SkipCounter
from vartok.data.splitting import Unit, WorkerPlan, epoch_rng, train_units, worker_info
from vartok.data.transforms import resize_crop

MISSING_SAMPLE = "missing_sample"  # a sample the manifest promised but the shard did not deliver
BEYOND_COUNT = "beyond_count"  # a sample past the manifest's count (stale manifest): not used
NO_GOOD_AFTER = 1000  # stop when this many samples in a row are unusable (an infinite stream would hang)


def unit_samples(unit: Unit, counter: SkipCounter) -> Iterator[dict]:
    """The raw samples (dicts of member bytes) of one shard part; tar errors are counted, not raised.

    Args:
        unit: the shard part to read.
        counter: receives ``shard_error`` events (counted by the part-0 reader only).
    """

    failed = []

    def handler(exn: Exception) -> bool:
        if unit.part == 0 and not failed:  # webdataset reports one broken tar at two levels: count it once
            counter.record_skip(SHARD_ERROR, "", unit.url, f"{type(exn).__name__}: {exn}"[:200])
        failed.append(exn)
        return True  # go on with the next shard

    samples = wds.tarfile_samples([{"url": unit.url}], handler=handler)
    for index, sample in enumerate(samples):
        if index % unit.parts == unit.part:
            yield sample


def decode_sample(sample: dict, size: int, rng: np.random.Generator | None, flip: bool,
                  counter: SkipCounter, max_pixels: int | None) -> np.ndarray | None:
    """One raw sample -> uint8 (size, size, 3) pixels, or None (counted) when it cannot be used.

    Args:
        sample: webdataset sample (``__key__``, ``__url__`` and extension -> bytes).
        size: output side.
        rng: random crop and flip (training) or None (centre crop, validation).
        flip: random horizontal flip (with rng).
        counter: receives the skip reason or the conversion notes.
        max_pixels: decompression-bomb limit.
    """
    key, url = sample.get("__key__", ""), sample.get("__url__", "")
    ext = next((e for e in IMAGE_EXTENSIONS if isinstance(sample.get(e), bytes)), None)
    if ext is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        counter.record_skip(MISSING_IMAGE, key, url, f"members: {members}")
        return None
    decoded = decode_image(sample[ext], ext, max_pixels, draft_size=size)
    if decoded.reason is not None:
        counter.record_skip(decoded.reason, key, url, decoded.detail)
        return None
    pixels, upscaled = resize_crop(decoded.image, size, rng, flip)
    counter.record_ok(decoded.notes + ((UPSCALED,) if upscaled else ()))
    return pixels


def collate(pixels: list[np.ndarray], valid: list[bool], keys: list[str], counter: SkipCounter) -> dict:
    """The batch dict (`image_batch`) with the skip counts since the last batch attached."""
    return {**image_batch(pixels, valid, keys), STATS_KEY: counter.take()}


def with_trailing_stats(batches: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
    """Hold one batch back, so counts recorded after the last batch was made (a broken final sample, a shard
    error at the end) still travel to the main process inside that last batch."""
    held = None
    for batch in batches:
        if held is not None:
            yield held
        held = batch
    if held is not None:
        late, stats = counter.take(), held[STATS_KEY]
        stats["seen"] += late["seen"]
        for field in ("skipped", "converted"):
            for name, count in late[field].items():
                stats[field][name] = stats[field].get(name, 0) + count
        yield held


def share(batches: int, worker: int, workers: int) -> int:
    """How many of the first `batches` batches of a pass come from `worker` (batch i is worker i % workers')."""
    return batches // workers + int(worker < batches % workers)


def shuffled(items: Iterator, buffer_size: int, rng: np.random.Generator) -> Iterator:
    """Shuffle a stream through a buffer: yield a random buffered item for every new one, then the rest."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        yield buffer[i]
        buffer[i] = item
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


class TrainStream(IterableDataset):
    """Training batches from shards, split by rank and worker, shuffled per (seed, epoch).

    Args:
        urls: training shard URLs.
        image_size: output side (shorter side resized to it, random crop).
        batch_size: samples per batch.
        seed: shuffling seed; the order depends on (seed, epoch) only.
        flip: random horizontal flips.
        shuffle_buffer: samples held in the shuffle buffer per worker (<= 1: no sample shuffling).
        resampled: endless stream cut at `batches_per_rank` per epoch; else one pass over the rank's share.
        batches_per_rank: batches per epoch on this rank (required when resampled; a cap otherwise).
        rank: this process's global rank.
        world_size: number of ranks.
        max_pixels: decompression-bomb limit.
        max_skip_fraction: stop when more samples than this fraction are unusable.
        skip_setting: how the user sets max_skip_fraction, named when it stops.
    """

    def __init__(self, urls: list[str], image_size: int, batch_size: int, *, seed: int = 0, flip: bool = True,
                 shuffle_buffer: int = 1000, resampled: bool = True, batches_per_rank: int | None = None,
                 rank: int = 0, world_size: int = 1, max_pixels: int | None = None,
                 max_skip_fraction: float | None = None, skip_setting: str = "max_skip_fraction") -> None:
        if resampled and not batches_per_rank:
            raise ValueError("a resampled TrainStream needs batches_per_rank >= 1")
        self.urls, self.image_size, self.batch_size = list(urls), image_size, batch_size
        self.seed, self.flip, self.shuffle_buffer, self.resampled = seed, flip, shuffle_buffer, resampled
        self.batches_per_rank, self.rank, self.world_size = batches_per_rank, rank, world_size
        self.max_pixels, self.max_skip_fraction, self.skip_setting = max_pixels, max_skip_fraction, skip_setting
        self.epoch = 0  # set by the loader before each pass
        self.skip_batches = 0  # batches of this epoch already trained on (a resume); set by the loader

    def __len__(self) -> int:
        if self.batches_per_rank is None:
            raise TypeError("a single-pass TrainStream without batches_per_rank has no fixed length")
        return self.batches_per_rank

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_info()
        # The DataLoader takes batch i of a pass from worker i % workers. A pass that starts after `skip`
        # batches must go on with batch `skip` of the uninterrupted epoch, so this worker plays the part of
        # worker (worker + skip) % workers: same shards, same RNG, minus that worker's share of the skipped
        # batches, which it decodes and drops (the crops consume the RNG, so skipping undecoded would not be
        # exact).
        worker = (worker + self.skip_batches) % workers
        slot, slots = self.rank * workers + worker, self.world_size * workers
        counter = SkipCounter("train", self.max_skip_fraction, self.skip_setting)
        rng = epoch_rng(self.seed, self.epoch, 1, self.rank, worker)
        limit = None if self.batches_per_rank is None else share(self.batches_per_rank, worker, workers)
        drop = share(self.skip_batches, worker, workers)
        if limit is not None and drop >= limit:
            return  # this worker's share of the epoch was all trained on before the resume
        raw = self._raw_samples(slot, slots, counter)
        batches = self._batches(shuffled(raw, self.shuffle_buffer, rng), rng, counter, limit)
        yield from with_trailing_stats(itertools.islice(batches, drop, None), counter)

    def _raw_samples(self, slot: int, slots: int, counter: SkipCounter) -> Iterator[dict]:
        cycle = 0
        while True:  # resampled: a fresh permutation every pass over the slot's share
            units = train_units(self.urls, self.seed, self.epoch, slot, slots, cycle)
            produced = 0
            for unit in units:
                for sample in unit_samples(unit, counter):
                    produced += 1
                    yield sample
            if not self.resampled:
                return
            if produced == 0 and units:
                raise DataError(f"train shards yield no sample at all (first: {self.urls[0]}); check that "
                                "they are webdataset tar files made by `vartok-data make-shards`.")
            cycle += 1

    def _batches(self, samples: Iterator[dict], rng: np.random.Generator, counter: SkipCounter,
                 limit: int | None) -> Iterator[dict]:
        if limit == 0:
            return
        pixels, keys, emitted, bad_run = [], [], 0, 0
        for sample in samples:
            out = decode_sample(sample, self.image_size, rng, self.flip, counter, self.max_pixels)
            if out is None:
                bad_run += 1
                if bad_run >= NO_GOOD_AFTER:
                    raise DataError(f"train: {bad_run} samples in a row could not be used (reasons: "
                                    f"{dict(counter.skipped)}); check the shards, e.g. {sample.get('__url__')}.")
                continue
            bad_run = 0
            pixels.append(out)
            keys.append(sample["__key__"])
            if len(pixels) == self.batch_size:
                counter.check()
                yield collate(pixels, [True] * len(keys), keys, counter)
                pixels, keys, emitted = [], [], emitted + 1
                if limit is not None and emitted >= limit:
                    return
        if pixels:  # the last partial batch of a single pass
            yield collate(pixels, [True] * len(keys), keys, counter)


class ValStream(IterableDataset):
    """Validation batches for one rank: every planned sample once, padded to the planned batch count.

    Args:
        plans: this rank's `WorkerPlan` per DataLoader worker (one entry when reading in the main process).
        image_size: output side (shorter side resized to it, centre crop).
        batch_size: samples per batch (every batch is full; padding samples have valid=False).
        max_pixels: decompression-bomb limit.
        max_skip_fraction: stop when more samples than this fraction are unusable.
        skip_setting: how the user sets max_skip_fraction, named when it stops.
    """

    def __init__(self, plans: list[WorkerPlan], image_size: int, batch_size: int, max_pixels: int | None = None,
                 max_skip_fraction: float | None = None, skip_setting: str = "max_skip_fraction") -> None:
        self.plans, self.image_size, self.batch_size = list(plans), image_size, batch_size
        self.max_pixels, self.max_skip_fraction, self.skip_setting = max_pixels, max_skip_fraction, skip_setting
        self.epoch = 0

    def __len__(self) -> int:
        return sum(plan.num_batches for plan in self.plans)

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_info()
        counter = SkipCounter("val", self.max_skip_fraction, self.skip_setting)
        yield from with_trailing_stats(self._batches(worker, workers, counter), counter)

    def _batches(self, worker: int, workers: int, counter: SkipCounter) -> Iterator[dict]:
        if workers != len(self.plans):
            raise DataError(f"validation was planned for {len(self.plans)} workers but runs with {workers}; "
                            "build the loader with the same num_workers.")
        plan = self.plans[worker]
        blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        pixels, valid, keys, emitted = [], [], [], 0
        for out, key in self._planned_samples(plan, counter):
            pixels.append(blank if out is None else out)
            valid.append(out is not None)
            keys.append(key if out is not None else "")
            if len(pixels) == self.batch_size:
                yield collate(pixels, valid, keys, counter)
                pixels, valid, keys, emitted = [], [], [], emitted + 1
        if pixels:  # fill the last batch with padding so every batch has batch_size entries
            fill = self.batch_size - len(pixels)
            yield collate(pixels + [blank] * fill, valid + [False] * fill, keys + [""] * fill, counter)
            emitted += 1
        for _ in range(plan.num_batches - emitted):
            yield collate([blank] * self.batch_size, [False] * self.batch_size, [""] * self.batch_size, counter)

    def _planned_samples(self, plan: WorkerPlan, counter: SkipCounter) -> Iterator[tuple]:
        """Exactly sum(plan.counts) items (pixels or None, key), whatever the shards really hold."""
        for unit, expected in zip(plan.units, plan.counts):
            delivered = 0
            for sample in unit_samples(unit, counter):
                if delivered >= expected:
                    counter.record_skip(BEYOND_COUNT, sample.get("__key__", ""), unit.url,
                                        "the shard holds more samples than its manifest lists")
                    continue
                out = decode_sample(sample, self.image_size, None, False, counter, self.max_pixels)
                delivered += 1
                yield out, sample.get("__key__", "")
            for _ in range(expected - delivered):
                counter.record_skip(MISSING_SAMPLE, "", unit.url, "the shard holds fewer samples than listed")
                yield None, ""
