"""Quantizers behind one interface (docs/definitions.md §1): `build_quantizer(name, dim, **kw)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vartok.models.quantizers.base import Quantizer, QuantizerOutput

QUANTIZERS: dict[str, Callable[..., Quantizer]] = {}


def register_quantizer(name: str) -> Callable:
    def wrap(cls: Callable[..., Quantizer]) -> Callable[..., Quantizer]:
        QUANTIZERS[name] = cls
        return cls

    return wrap


def build_quantizer(name: str, dim: int, **kwargs: Any) -> Quantizer:
    """Build the quantizer `name` for latents of width `dim` (see docs/definitions.md §1 for the keywords)."""
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; allowed: {', '.join(sorted(QUANTIZERS))}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"quantizer dim must be a positive int, got {dim!r}")
    return QUANTIZERS[name](dim=dim, **kwargs)


from vartok.models.quantizers import bsq, fsq, gq, lfq, vq  # noqa: F401  (registration)

__all__ = ["QUANTIZERS", "Quantizer", "QuantizerOutput", "build_quantizer", "register_quantizer"]
