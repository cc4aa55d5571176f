"""Whether a torch.distributed process group is up, this process's place in it, and gathering a Python
object from every rank: the one probe the data, training and metrics code share."""

from __future__ import annotations

from typing import TypeVar

import torch

T = TypeVar("T")


def is_distributed() -> bool:
    """True when torch.distributed is built in and a process group has been initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_world(distributed: bool = True) -> tuple[int, int]:
    """(rank, world size) of the process group when there is one and `distributed`, else (0, 1)."""
    if distributed and is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_objects(value: T, distributed: bool = True) -> list[T]:
    """`value` of every rank, in rank order (a collective: every rank must call it); [value] alone."""
    _, world = rank_world(distributed)
    if world == 1:
        return [value]
    everyone: list[T | None] = [None] * world
    torch.distributed.all_gather_object(everyone, value)
    return everyone  # type: ignore[return-value]
