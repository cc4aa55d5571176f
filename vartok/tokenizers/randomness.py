"""Random draws keyed by where they happen, so that a resumed run draws what the uninterrupted run drew, and
an evaluation draws the same whatever its batching or number of ranks.

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
    """A CPU generator seeded with `keyed_seed(*parts)` (or with the one integer given)."""
    seed = parts[0] if len(parts) == 1 and isinstance(parts[0], int) else keyed_seed(*parts)
    return torch.Generator().manual_seed(seed)


def tagged_seed(seed: int, tag: str) -> int:
    """A 31-bit seed from an integer seed and a tag (an image key): pFID's per-image perturbation seed. Kept
    apart from `keyed_seed` because the pFID figures in the docs were measured with it."""
    return (zlib.crc32(tag.encode()) ^ (seed * 0x9E3779B1)) & 0x7FFFFFFF


@contextmanager
def step_randomness(seed: int, device: torch.device) -> Iterator[torch.Generator]:
    """The draws of one training step: yields a CPU generator seeded with `seed` (vartok's own draws: lengths,
    perturbation masks), and inside the block the global RNG (CPU, and `device`'s when it is a GPU) is seeded
    with `seed` too and restored after it, so that draws libraries make from it (vector-quantize-pytorch's
    dead-code reset samples replacement codes from the batch) are the same in a resumed run as in the
    uninterrupted one, whose global RNG has moved on since."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield keyed_generator(seed)
