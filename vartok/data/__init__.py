"""The data path: shard writer, streaming DataModule, robust decoding and the embedded demo dataset.

Names are imported lazily, so `vartok-data` and the evaluation CLI do not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageDataModule": "datamodule",
    "Decoded": "decode", "decode_image": "decode", "to_rgb": "decode",
    "build_demo": "demo", "demo_cache_dir": "demo", "demo_shards": "demo",
    "DataError": "errors",
    "ImageLoader": "loader", "train_loader": "loader", "val_loader": "loader",
    "expand_shards": "manifest", "read_manifest": "manifest", "shard_counts": "manifest",
    "make_shards": "shard_writer",
}
__all__ = [
    "DataError", "Decoded", "ImageDataModule", "ImageLoader", "build_demo", "decode_image", "demo_cache_dir",
    "demo_shards", "expand_shards", "make_shards", "read_manifest", "shard_counts", "to_rgb", "train_loader",
    "val_loader",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vartok.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vartok.data.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
