"""Random draws keyed by where they happen, so that a resumed run draws what the uninterrupted run drew.

A draw's seed is the crc32 of its key parts joined by "/" (e.g. seed, training step, rank): the same parts give
the same numbers in any process, after any resume, on any device (the generators are CPU generators; their
draws are moved to the device by the caller).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def keyed_seed(*parts: object) -> int:
    """crc32 of the parts joined by "/"."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def keyed_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with `keyed_seed(*parts)`."""
    return torch.Generator().manual_seed(keyed_seed(*parts))


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG (CPU, and `device`'s when it is a GPU) seeded with `seed` inside the block and restored
    after it: draws that libraries make from it (vector-quantize-pytorch's dead-code reset samples replacement
    codes from the batch) are then the same in a resumed run as in the uninterrupted one, whose global RNG has
    moved on since."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield
