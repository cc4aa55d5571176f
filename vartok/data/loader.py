"""DataLoaders over the shard streams, usable with or without Lightning.

`ImageLoader` merges the skip counts that workers attach to their batches, stops with one clear sentence when
too many samples are broken, and tells the training stream which epoch it is reading and, after a resume,
how many of that epoch's batches the trainer already trained on (`ImageLoader.resume_at`). `train_loader` and
`val_loader` build them from shard arguments; the evaluation CLI uses `val_loader` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader

from vartok.data.errors import DataError, clean_worker_message
from vartok.data.manifest import expand_shards, shard_counts
from vartok.data.skips import STATS_KEY, SkipCounter
from vartok.data.splitting import dist_info, plan_validation
from vartok.data.stream import TrainStream, ValStream


class ImageLoader(DataLoader):
    """A DataLoader over a `TrainStream` or `ValStream` (which yield whole batches).

    Args:
        dataset: the stream.
        num_workers: worker processes (0: read in the main process).
        name: "train" or "val", for messages.
        max_skip_fraction: stop when a larger fraction of samples is unusable (None: never).
        pin_memory: pin batches for faster host-to-GPU copies.
        epoch_fn: returns the current epoch (e.g. the trainer's); without it each pass counts one epoch.
        skip_setting: how the user sets max_skip_fraction, named when it stops (e.g. "--max-skip-fraction").
    """

    def __init__(self, dataset: TrainStream | ValStream, num_workers: int = 0, name: str = "data",
                 max_skip_fraction: float | None = None, pin_memory: bool = False,
                 epoch_fn: Callable[[], int | None] | None = None, skip_setting: str = "max_skip_fraction") -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=False, prefetch_factor=2 if num_workers > 0 else None)
        self.counter = SkipCounter(name, max_skip_fraction, skip_setting)
        self.epoch_fn = epoch_fn
        self.passes = 0
        self.current_epoch: int | None = None  # the epoch of the latest pass (None before the first)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Make the first pass, if it reads `epoch`, start after that epoch's first `consumed` batches.

        A resumed trainer asks for the rest of an interrupted epoch; the position is applied once, and only to
        the epoch it belongs to (a checkpoint written at an epoch's end resumes into the next epoch whole).

        Args:
            epoch: the epoch the checkpoint was written in.
            consumed: batches of that epoch the trainer had trained on (its count, not this loader's: the
                trainer fetches ahead).
        """
        self._resume = (int(epoch), int(consumed))

    def __iter__(self) -> Iterator[dict]:
        return self._pass()

    def _pass(self) -> Iterator[dict]:
        # A generator: the epoch is read at the first batch, not at iter(). On a resume Lightning calls iter()
        # before it settles which epoch it is in (a checkpoint written after an epoch's last step resumes into
        # the next epoch only once its loops are reset).
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self.passes if epoch is None else epoch
        skip = 0
        if self._resume is not None:
            (resume_epoch, consumed), self._resume = self._resume, None
            skip = consumed if resume_epoch == epoch else 0
        self.dataset.epoch = epoch  # workers copy the dataset after this
        if isinstance(self.dataset, TrainStream):
            self.dataset.skip_batches = skip
        self.current_epoch = epoch
        self.passes += 1
        try:
            for batch in super().__iter__():
                self.counter.merge(batch.pop(STATS_KEY, {}))
                self.counter.check()
                yield batch
            self.counter.check(final=True)
        except DataError as err:
            raise DataError(clean_worker_message(str(err))) from None

    def skipped(self) -> dict[str, int]:
        """Samples left out so far, by reason (summed over all workers and passes)."""
        return dict(self.counter.skipped)

    def converted(self) -> dict[str, int]:
        """Samples used after a conversion (grayscale, cmyk, upscaled, ...), by kind."""
        return dict(self.counter.converted)


def check_positive(name: str, value: int, allow_zero: bool = False) -> None:
    """Raise `DataError` naming the argument when an integer setting is out of range."""
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise DataError(f"{name}={value!r} is not allowed; it must be an integer >= {low}.")


def train_loader(shards: str | list[str], image_size: int, batch_size: int, *, num_workers: int = 0,
                 epoch_size: int | None = None, seed: int = 0, flip: bool = True, shuffle_buffer: int = 1000,
                 resampled: bool = True, rank: int | None = None, world_size: int | None = None,
                 max_pixels: int | None = None, max_skip_fraction: float | None = 0.01,
                 pin_memory: bool = False, epoch_fn: Callable[[], int | None] | None = None,
                 skip_setting: str = "max_skip_fraction") -> ImageLoader:
    """A training loader: per epoch `epoch_size // batch_size` batches on every rank (resampled), or one pass.

    Args:
        shards: shard pattern(s), folder or list (see `expand_shards`).
        image_size: output side in pixels.
        batch_size: samples per batch.
        num_workers: DataLoader workers per rank.
        epoch_size: samples per rank per epoch; default: the number of training samples / world_size.
        seed: shuffling seed (order depends on seed and epoch only).
        flip: random horizontal flips.
        shuffle_buffer: per-worker shuffle buffer in samples.
        resampled: endless resampled shards cut into equal epochs (True), or one exact pass (False).
        rank: global rank (default: from torch.distributed / RANK).
        world_size: number of ranks (default: from torch.distributed / WORLD_SIZE).
        max_pixels: decompression-bomb limit.
        max_skip_fraction: stop when more than this fraction of samples is unusable.
        pin_memory: pin host memory.
        epoch_fn: returns the current epoch (the DataModule passes the trainer's).
        skip_setting: how the user sets max_skip_fraction, named when it stops (e.g. "data.max_skip_fraction").
    """
    for name, value in (("image_size", image_size), ("batch_size", batch_size)):
        check_positive(name, value)
    check_positive("num_workers", num_workers, allow_zero=True)
    urls = expand_shards(shards, "train_shards")
    rank, world_size = dist_info(rank, world_size)
    batches = None
    if epoch_size is not None or resampled:
        epoch_size = epoch_size if epoch_size is not None else _default_epoch_size(urls, world_size)
        batches = epoch_size // batch_size
        if batches < 1:
            raise DataError(f"epoch_size={epoch_size} is smaller than batch_size={batch_size}; an epoch "
                            "needs at least one batch per rank.")
    stream = TrainStream(urls, image_size, batch_size, seed=seed, flip=flip, shuffle_buffer=shuffle_buffer,
                         resampled=resampled, batches_per_rank=batches, rank=rank, world_size=world_size,
                         max_pixels=max_pixels, max_skip_fraction=max_skip_fraction, skip_setting=skip_setting)
    return ImageLoader(stream, num_workers, "train", max_skip_fraction, pin_memory, epoch_fn, skip_setting)


def _default_epoch_size(urls: list[str], world_size: int) -> int:
    counts = shard_counts(urls)
    if counts is None:
        raise DataError(f"train_shards ({urls[0]}, ...) are remote and have no manifest, so the epoch length is "
                        "unknown; set epoch_size (samples per rank per epoch).")
    return max(1, sum(counts) // world_size)


def val_loader(shards: str | list[str], image_size: int, batch_size: int, num_workers: int = 0,
               rank: int | None = None, world_size: int | None = None, max_pixels: int | None = None,
               max_skip_fraction: float | None = 0.01, pin_memory: bool = False,
               skip_setting: str = "max_skip_fraction") -> ImageLoader:
    """A validation loader: every image exactly once over all ranks and workers, the same number of full
    batches on every rank (padding samples have ``valid=False`` and key "").

    Args:
        shards: shard pattern(s), folder or list (see `expand_shards`).
        image_size: output side (shorter side resized to it, centre crop).
        batch_size: samples per batch.
        num_workers: DataLoader workers per rank.
        rank: global rank (default: from torch.distributed / RANK).
        world_size: number of ranks (default: from torch.distributed / WORLD_SIZE).
        max_pixels: decompression-bomb limit.
        max_skip_fraction: stop when more than this fraction of samples is unusable.
        pin_memory: pin host memory.
        skip_setting: how the user sets max_skip_fraction, named when it stops (e.g. "--max-skip-fraction").
    """
    for name, value in (("image_size", image_size), ("batch_size", batch_size)):
        check_positive(name, value)
    check_positive("num_workers", num_workers, allow_zero=True)
    urls = expand_shards(shards, "val_shards")
    rank, world_size = dist_info(rank, world_size)
    counts = shard_counts(urls)
    if counts is None:
        raise DataError(f"val_shards ({urls[0]}, ...) are remote and have no manifest, so they cannot be split "
                        "exactly over ranks; copy them locally or write a manifest with vartok-data make-shards.")
    plans = plan_validation(urls, counts, world_size, num_workers, batch_size)[rank]
    stream = ValStream(plans, image_size, batch_size, max_pixels, max_skip_fraction, skip_setting)
    return ImageLoader(stream, num_workers, "val", max_skip_fraction, pin_memory, skip_setting=skip_setting)

