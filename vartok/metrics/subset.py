"""The validation subset that vartok's evaluations read: the EvaluationCallback during training and the
end-of-fit report.

Shard data (an `ImageDataModule`): the subset is the first `num_images` samples of the validation shards in
their order (shard by shard, each shard in file order), or all of them when `num_images` is None. With n
samples in the subset, rank r of W decodes positions [r·n // W, (r+1)·n // W), so the images are the same
whatever the number of ranks and each one counts once; positions follow the shards' manifest counts (a scan
of local tar files without one), so they do not depend on which rank reads what. A sample that cannot be
decoded is left out and counted under its reason, as the validation loader counts it.

Any other validation loader: each rank takes the first valid images of its own split (⌈n/W⌉ or ⌊n/W⌋ of
them): the subset then depends on how that loader splits the data over W ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from vartok.data.batch import parse_batch

FIRST_IN_SHARD_ORDER = "first_in_shard_order"
FIRST_OF_EACH_RANK = "first_of_each_rank_split"


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 (or None for all validation images), "
                         f"got {value!r}.")


class ShardSubset:
    """This rank's share of the first `num_images` samples of validation shards, as batches of valid images.

    Args:
        urls: the validation shards, in order (as `vartok.data.expand_shards` returns them).
        image_size: output side (shorter side resized to it, centre crop: as the validation loader does).
        batch_size: images per batch (the last one may be smaller).
        num_images: size of the subset over all ranks (None = every sample of the shards).
        rank: this process's rank.
        world: number of ranks.
        max_pixels: decompression-bomb limit.
    """

    def __init__(self, urls: list[str], image_size: int, batch_size: int, num_images: int | None = None,
                 rank: int = 0, world: int = 1, max_pixels: int | None = None) -> None:
        from vartok.data.manifest import shard_counts
        from vartok.data.skips import SkipCounter

        _check_count("num_images", num_images)
        _check_count("batch_size", batch_size)
        self.urls, self.image_size, self.batch_size = list(urls), image_size, batch_size
        self.rank, self.world, self.max_pixels, self.limit = rank, world, max_pixels, num_images
        self.counts = shard_counts(self.urls)
        self.available = sum(self.counts) if self.counts is not None else None
        if num_images is None and self.available is None:
            raise ValueError(f"the validation shards ({self.urls[0]}, ...) are remote and have no manifest, "
                             "so 'all of them' has no known size; set a number of images to evaluate.")
        if self.available is None:
            self.size = num_images
        else:
            self.size = min(num_images or self.available, self.available)
        self.start, self.stop = self.size * rank // world, self.size * (rank + 1) // world
        self.counter = SkipCounter("eval")

    def __len__(self) -> int:
        """Batches of this rank (fewer if some samples cannot be decoded)."""
        return (self.stop - self.start + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[dict]:
        from vartok.data.batch import image_batch
        from vartok.data.stream import decode_sample

        pixels, keys = [], []
        for sample in self._samples():
            out = decode_sample(sample, self.image_size, None, False, self.counter, self.max_pixels)
            if out is None:
                continue
            pixels.append(out)
            keys.append(sample.get("__key__", ""))
            if len(keys) == self.batch_size:
                yield image_batch(pixels, [True] * len(keys), keys)
                pixels, keys = [], []
        if keys:
            yield image_batch(pixels, [True] * len(keys), keys)

    def _samples(self) -> Iterator[dict]:
        """The raw samples at this rank's positions; whole shards before them are not opened."""
        from vartok.data.splitting import Unit
        from vartok.data.stream import MISSING_SAMPLE, unit_samples

        offset = 0
        for i, url in enumerate(self.urls):
            count = self.counts[i] if self.counts is not None else None
            if offset >= self.stop:
                return
            if count is not None and offset + count <= self.start:
                offset += count
                continue
            read = 0
            for sample in unit_samples(Unit(url), self.counter):
                if (count is not None and read >= count) or offset + read >= self.stop:
                    break  # past the manifest's count (not a position) or past this rank's share
                if offset + read >= self.start:
                    yield sample
                read += 1
            if count is not None:  # positions the manifest lists but the shard did not deliver
                for _ in range(max(offset + read, self.start), min(offset + count, self.stop)):
                    self.counter.record_skip(MISSING_SAMPLE, "", url, "the shard holds fewer samples than "
                                             "listed")
            offset += count if count is not None else read

    def skipped(self) -> dict[str, int]:
        """Samples of this rank's positions left out, by reason."""
        return dict(self.counter.skipped)

    def describe(self) -> dict[str, Any]:
        """How the subset was chosen, for the report (identical on every rank)."""
        whole = self.available is not None and self.size == self.available
        of = f" of {self.available}" if self.available is not None else ""
        shards = f"the {len(self.urls)} validation shards"
        text = f"the first {self.size}{of} samples of {shards}, in shard order"
        if whole:
            text = f"all {self.size} samples of {shards}"
        return {"selection": FIRST_IN_SHARD_ORDER, "description": text, "limit": self.limit,
                "samples": self.size, "available": self.available, "ranks": self.world}


class LoaderSubset:
    """The first valid images of this rank's own validation loader, as batches of `batch_size`.

    Args:
        loader: this rank's validation batches ({"image": uint8 (B,3,H,W), "valid"?, "key"?} or a tensor).
        batch_size: images per batch (the last one may be smaller).
        num_images: size of the subset over all ranks (None = every valid image of the loader).
        rank: this process's rank.
        world: number of ranks.
    """

    def __init__(self, loader: Iterable[Any], batch_size: int, num_images: int | None = None, rank: int = 0,
                 world: int = 1) -> None:
        _check_count("num_images", num_images)
        _check_count("batch_size", batch_size)
        self.loader, self.batch_size, self.limit, self.world = loader, batch_size, num_images, world
        self.quota = None if num_images is None else num_images // world + int(rank < num_images % world)

    def __iter__(self) -> Iterator[dict]:
        images: list[Tensor] = []
        keys: list[str] = []
        have = 0
        for batch in self.loader if self.quota != 0 else ():
            batch_images, valid, batch_keys = parse_batch(batch)
            if batch_images.dtype != torch.uint8:
                raise ValueError(f"evaluation expects uint8 validation images, got {batch_images.dtype}.")
            batch_keys = batch_keys if batch_keys is not None else [""] * batch_images.shape[0]
            take = valid.nonzero().flatten().tolist()
            if self.quota is not None:
                take = take[: self.quota - have]
            images += list(batch_images[take].cpu())
            keys += [batch_keys[i] for i in take]
            have += len(take)
            while len(keys) >= self.batch_size:
                yield {"image": torch.stack(images[: self.batch_size]), "key": keys[: self.batch_size],
                       "valid": torch.ones(self.batch_size, dtype=torch.bool)}
                images, keys = images[self.batch_size :], keys[self.batch_size :]
            if self.quota is not None and have >= self.quota:
                break
        if keys:
            yield {"image": torch.stack(images), "key": keys,
                   "valid": torch.ones(len(keys), dtype=torch.bool)}

    def skipped(self) -> dict[str, int]:
        """The loader's skip counts, when it keeps them."""
        return dict(self.loader.skipped()) if hasattr(self.loader, "skipped") else {}

    def describe(self) -> dict[str, Any]:
        """How the subset was chosen, for the report."""
        text = "every valid image of the validation loader"
        if self.limit is not None:
            text = (f"the first valid images of each rank's validation split, {self.limit} over "
                    f"{self.world} ranks")
        return {"selection": FIRST_OF_EACH_RANK, "description": text, "limit": self.limit, "samples": None,
                "available": None, "ranks": self.world}


def validation_subset(trainer: Any, num_images: int | None, batch_size: int, rank: int,
                      world: int) -> ShardSubset | LoaderSubset | None:
    """The subset of the trainer's validation data for this rank: from the shards of an `ImageDataModule`,
    else from the trainer's validation loader; None when there is no validation data.

    Args:
        trainer: a Lightning trainer (its `datamodule`, else its `val_dataloaders`).
        num_images: size of the subset over all ranks (None = all).
        batch_size: images per batch.
        rank: this process's rank.
        world: number of ranks.
    """
    from vartok.data import ImageDataModule

    datamodule = getattr(trainer, "datamodule", None)
    if isinstance(datamodule, ImageDataModule):
        urls = datamodule._urls("val")  # resolves the demo's shards
        if urls is None:
            return None
        return ShardSubset(urls, datamodule.image_size, batch_size, num_images, rank, world,
                           datamodule.max_pixels)
    if datamodule is not None:
        loader = datamodule.val_dataloader()
    else:
        loader = getattr(trainer, "val_dataloaders", None)
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    return None if loader is None else LoaderSubset(loader, batch_size, num_images, rank, world)
