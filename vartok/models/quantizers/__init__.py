"""Quantizers behind one interface (docs/definitions.md §1): `build_quantizer(name, dim, **kw)`.

One registry, `QUANTIZERS`, and one set of defaults: each constructor's keyword defaults
(`quantizer_defaults(name)`), which `TokenizerConfig` records in full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vartok.models.quantizers.base import Quantizer, QuantizerOutput

QUANTIZERS: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator: register a Quantizer subclass under `name` (also its `registry_name`)."""

    def wrap(cls: type[Quantizer]) -> type[Quantizer]:
        QUANTIZERS[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def quantizer_class(name: str) -> type[Quantizer]:
    """The registered class of quantizer `name`; one clear error naming the allowed names otherwise."""
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; allowed: {', '.join(sorted(QUANTIZERS))}")
    return QUANTIZERS[name]


def quantizer_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of quantizer `name`'s constructor, every keyword but `dim` (lists, not tuples)."""
    return quantizer_class(name).default_args()


def build_quantizer(name: str, dim: int, **kwargs: Any) -> Quantizer:
    """Build the quantizer `name` for latents of width `dim` (see docs/definitions.md §1 for the keywords)."""
    cls = quantizer_class(name)
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"quantizer dim must be a positive int, got {dim!r}")
    cls.complete_args(kwargs)  # one clear error for an unknown keyword
    return cls(dim=dim, **kwargs)


from vartok.models.quantizers import bsq, fsq, gq, lfq, titok_vq, vq  # noqa: F401  (registration)

__all__ = [
    "QUANTIZERS",
    "Quantizer",
    "QuantizerOutput",
    "build_quantizer",
    "quantizer_class",
    "quantizer_defaults",
    "register_quantizer",
]
