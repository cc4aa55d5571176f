"""`ImageDataModule`: webdataset shards -> uint8 image batches for Lightning (its __init__ is the config schema).

Batches are ``{"image": uint8 (B,3,H,W), "valid": bool (B,), "key": list[str]}``; convert to float on the
device (``batch["image"].float() / 255``). Training batches are all valid. Validation batches are full-size and
padded with ``valid=False`` samples so that every rank runs the same number of steps while each image is
counted exactly once: weight per-sample metrics by ``valid``.

Every checkpoint holds the training stream's position (`state_dict`: the epoch, the batches of it the trainer
has trained on, and the settings that define the stream), so a run resumed from any step reads exactly the
batches the interrupted run would have read next.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

import pytorch_lightning as pl
import torch

from vartok.data.demo import DEMO_SIZE, demo_shards
from vartok.data.errors import DataError
from vartok.data.loader import ImageLoader, check_positive, train_loader, val_loader
from vartok.data.manifest import expand_shards, shard_counts
from vartok.data.splitting import dist_info

log = logging.getLogger("vartok.data")
DEMO = "demo"
STREAM_KEY = "train_stream"  # this module's entry in a checkpoint's datamodule state
# Our streams report exact per-rank lengths (each worker yields a planned share), so Lightning's generic
# caution about IterableDataset.__len__ with several workers does not apply.
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
# The stream position travels in the datamodule's state (see `state_dict`), which Lightning does not count
# when it warns that a mid-epoch resume replays data.
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


class ImageDataModule(pl.LightningDataModule):
    """Streaming image data from webdataset tar shards (or the embedded demo set).

    Args:
        train_shards: shard paths, brace pattern (``/data/train/shard-{000000..000146}.tar``), glob, shard
            folder, remote URL, a list of these, or "demo" for the embedded scikit-image crops.
        val_shards: the same for validation; None: the demo's validation crops when training on "demo",
            otherwise no validation.
        image_size: side of the square crops (the shorter side is resized to it, bicubic with antialiasing).
        batch_size: training samples per batch and rank.
        val_batch_size: validation samples per batch (default: batch_size).
        num_workers: DataLoader worker processes per rank.
        epoch_size: training samples per rank per epoch (default: dataset size / world size).
        seed: shuffling seed; the order depends on (seed, epoch) only.
        flip: random horizontal flips for training.
        max_skip_fraction: stop with a clear message when a larger fraction of samples is unusable.
        shuffle_buffer: samples in each worker's shuffle buffer.
        resampled: endless resampled shards cut into equal epochs on every rank (required for multi-GPU
            training); False reads each training sample exactly once per epoch.
        max_pixels: images with more pixels are skipped (decompression-bomb guard; default PIL's limit).
        demo_dir: where the demo shards are cached (default $VARTOK_CACHE/demo or ~/.cache/vartok/demo).
    """

    def __init__(self, train_shards: str | list[str] | None = DEMO, val_shards: str | list[str] | None = None,
                 image_size: int = DEMO_SIZE, batch_size: int = 64, val_batch_size: int | None = None,
                 num_workers: int = 2, epoch_size: int | None = None, seed: int = 0, flip: bool = True,
                 max_skip_fraction: float = 0.01, shuffle_buffer: int = 1000, resampled: bool = True,
                 max_pixels: int | None = None, demo_dir: str | None = None) -> None:
        super().__init__()
        if train_shards is None:
            raise DataError("data.train_shards is required: give shard paths or a brace pattern "
                            "(e.g. --data.train_shards '/data/train/shard-{000000..000146}.tar'), or 'demo'.")
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            check_positive(name, value)
        for name, value in (("val_batch_size", val_batch_size), ("epoch_size", epoch_size),
                            ("max_pixels", max_pixels)):
            if value is not None:
                check_positive(name, value)
        check_positive("num_workers", num_workers, allow_zero=True)
        check_positive("shuffle_buffer", shuffle_buffer, allow_zero=True)
        if not isinstance(max_skip_fraction, (int, float)) or not 0.0 <= max_skip_fraction <= 1.0:
            raise DataError(f"max_skip_fraction={max_skip_fraction!r} is not allowed; it must be in [0, 1].")
        self.uses_demo = train_shards == DEMO or val_shards == DEMO
        if val_shards is None and train_shards == DEMO:
            val_shards = DEMO
        # Local shard patterns are checked now, before any work (the demo is built in prepare_data).
        self._train_urls = None if train_shards == DEMO else expand_shards(train_shards, "train_shards")
        self._val_urls = None if val_shards in (DEMO, None) else expand_shards(val_shards, "val_shards")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.image_size, self.batch_size = image_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.epoch_size, self.seed, self.flip = num_workers, epoch_size, seed, flip
        self.max_skip_fraction, self.shuffle_buffer, self.resampled = max_skip_fraction, shuffle_buffer, resampled
        self.max_pixels, self.demo_dir = max_pixels, demo_dir
        self._loaders: dict[str, ImageLoader] = {}
        self._resume: dict[str, Any] | None = None  # the stream position restored from a checkpoint
        if self.uses_demo and image_size != DEMO_SIZE:
            log.warning("the demo crops are %d px; image_size=%d resizes them", DEMO_SIZE, image_size)

    def prepare_data(self) -> None:
        """Build the demo shards once per node (cached; later calls return at once)."""
        if self.uses_demo:
            demo_shards(self.demo_dir)

    def setup(self, stage: str | None = None) -> None:
        """Resolve the demo shards (building them if prepare_data did not run on this node), and check the shards
        a stage reads: an empty shard, or less data than one batch, is one sentence here, before any step.

        Lightning calls this before it restores a checkpoint, so a position left from an earlier fit is
        dropped here.
        """
        self._resume = None
        self._resolve_demo()
        if stage in (None, "fit"):
            self._check_epoch(self._counts("train"))
        if stage in (None, "fit", "validate"):
            self._counts("val")

    def _counts(self, split: str) -> list[int] | None:
        """Samples per shard of a split (None: no such shards, or remote ones without a manifest); refuses a shard
        that holds none."""
        urls = self._urls(split)
        counts = shard_counts(urls) if urls else None
        if counts is None:
            return None
        empty = [url for url, count in zip(urls, counts) if count == 0]
        if empty:
            names = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
            held, them = (f"the shard {names} holds", "it") if len(empty) == 1 else \
                (f"{len(empty)} shards ({names}) hold", "them")
            raise DataError(f"data.{split}_shards: {held} no samples (no tar member named <key>.<extension>); "
                            f"remove {them} from the list, or rebuild {them} with `vartok-data make-shards`.")
        return counts

    def _check_epoch(self, counts: list[int] | None) -> None:
        """An epoch of the training stream must hold at least one batch per rank."""
        _, world_size = self._rank_world()
        size, batch = self.epoch_size, self.batch_size
        if size is None and counts is None:
            return  # remote shards without a manifest: the loader asks for data.epoch_size
        total = sum(counts) if counts is not None else 0
        per_rank = size if size is not None else total // world_size
        if per_rank >= batch:
            return
        if size is not None:
            raise DataError(f"data.epoch_size={size} is smaller than data.batch_size={batch}; an epoch needs at "
                            f"least one batch per rank, so set data.epoch_size to {batch} or more.")
        ranks = f" over {world_size} ranks ({per_rank} each)" if world_size > 1 else ""
        lower = f"lower data.batch_size to {per_rank} or less" if per_rank else "add training shards"
        if not self.resampled:
            raise DataError(f"data.resampled is false, so an epoch reads the {total} training samples once"
                            f"{ranks}, fewer than data.batch_size={batch}; {lower}, or set data.resampled true "
                            "(endless shards cut into epochs).")
        raise DataError(f"the {total} training samples{ranks} make an epoch shorter than data.batch_size={batch}; "
                        f"{lower}, or set data.epoch_size to {batch} or more.")

    def _resolve_demo(self) -> None:
        if self.uses_demo:
            demo = demo_shards(self.demo_dir)
            if self.train_shards == DEMO:
                self._train_urls = demo["train"]
            if self.val_shards == DEMO:
                self._val_urls = demo["val"]

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return dist_info()

    def _current_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def _urls(self, split: str) -> list[str] | None:
        if (self._train_urls if split == "train" else self._val_urls) is None and self.uses_demo:
            self._resolve_demo()
        return self._train_urls if split == "train" else self._val_urls

    def train_dataloader(self) -> ImageLoader:
        self._check_resumable()
        rank, world_size = self._rank_world()
        if not self.resampled and world_size > 1:
            log.warning("resampled=False with %d ranks: ranks may get different numbers of batches per epoch "
                        "(and DDP can hang); use resampled=True for multi-GPU training", world_size)
        loader = train_loader(
            self._urls("train"), self.image_size, self.batch_size, num_workers=self.num_workers,
            epoch_size=self.epoch_size, seed=self.seed, flip=self.flip, shuffle_buffer=self.shuffle_buffer,
            resampled=self.resampled, rank=rank, world_size=world_size, max_pixels=self.max_pixels,
            max_skip_fraction=self.max_skip_fraction, pin_memory=torch.cuda.is_available(),
            epoch_fn=self._current_epoch, skip_setting="data.max_skip_fraction")
        if self._resume is not None:
            loader.resume_at(self._resume["epoch"], self._resume["consumed"])
        self._loaders["train"] = loader
        return loader

    # ------------------------------------------------------------------ resume
    def stream_settings(self) -> dict[str, Any]:
        """What defines the training stream's order: a resume with other values reads other batches."""
        _, world_size = self._rank_world()
        names = "/".join(PurePosixPath(url).name for url in self._train_urls or [])
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": world_size,
                "num_workers": self.num_workers, "epoch_size": self.epoch_size, "image_size": self.image_size,
                "shuffle_buffer": self.shuffle_buffer, "flip": self.flip, "resampled": self.resampled,
                "shards": f"{len(self._train_urls or [])} shards, crc32 {zlib.crc32(names.encode()):08x}"}

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position, written into every checkpoint by Lightning.

        `consumed` is the trainer's count of this epoch's batches that went through a training step, not the
        loader's: the loader runs ahead of the step (DataLoader workers, Lightning's fetcher), and a checkpoint
        written in the middle of a step (SLURM's signal) must resume at the batch of that step.
        """
        trainer = self.trainer
        if trainer is None:  # used without Lightning
            return {}
        loader = self._loaders.get("train")
        epoch, consumed = trainer.current_epoch, 0
        if loader is not None and loader.current_epoch is not None:
            epoch = loader.current_epoch
            consumed = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return {STREAM_KEY: {"epoch": int(epoch), "consumed": consumed, "settings": self.stream_settings()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's stream position for the next training loader; warn if the stream changed."""
        position = state_dict.get(STREAM_KEY)
        if position is None:
            return
        self._resume = position
        saved, now = position.get("settings", {}), self.stream_settings()
        changed = [f"{name} {saved.get(name)} -> {value}" for name, value in now.items()
                   if saved.get(name) != value]
        if changed and self._is_global_zero():
            log.warning("the training stream's settings differ from the checkpoint's (%s), so the data order "
                        "from here on differs from the interrupted run's", ", ".join(changed))

    def _check_resumable(self) -> None:
        trainer = self.trainer
        if self._resume is None and trainer is not None and trainer.ckpt_path is not None \
                and trainer.state.fn == "fit":
            raise DataError(f"the checkpoint {trainer.ckpt_path} has no training-stream position (it was "
                            "written before vartok saved one), so resuming from it would replay the interrupted "
                            "epoch's data from its start; resume from a checkpoint written by this version of "
                            "vartok, or start a new run.")

    def _is_global_zero(self) -> bool:
        return self.trainer.is_global_zero if self.trainer is not None else dist_info()[0] == 0

    def val_dataloader(self) -> ImageLoader | list:
        urls = self._urls("val")
        if urls is None:
            return []
        rank, world_size = self._rank_world()
        loader = val_loader(urls, self.image_size, self.val_batch_size, self.num_workers, rank, world_size,
                            self.max_pixels, self.max_skip_fraction, torch.cuda.is_available(),
                            skip_setting="data.max_skip_fraction")
        self._loaders["val"] = loader
        return loader

    def steps_per_epoch(self) -> int | None:
        """Training batches per rank per epoch (None for an unbounded single pass)."""
        loader = self._loaders.get("train") or self.train_dataloader()
        try:
            return len(loader)
        except TypeError:
            return None

    def skipped(self, split: str | None = None) -> dict[str, int]:
        """Samples left out so far on this rank, by reason.

        Args:
            split: "train", "val", or None for both.
        """
        total: Counter[str] = Counter()
        for name, loader in self._loaders.items():
            if split in (None, name):
                total.update(loader.skipped())
        return dict(total)

    def converted(self, split: str | None = None) -> dict[str, int]:
        """Samples used after a conversion (grayscale, cmyk, alpha, upscaled, ...), by kind.

        Args:
            split: "train", "val", or None for both.
        """
        total: Counter[str] = Counter()
        for name, loader in self._loaders.items():
            if split in (None, name):
                total.update(loader.converted())
        return dict(total)

