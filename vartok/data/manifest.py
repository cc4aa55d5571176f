"""Shard lists: expanding user patterns into shard URLs, and the manifest written next to the shards.

A shard argument may be a brace pattern (``/data/train/shard-{000000..000146}.tar``), a glob, a folder holding
a ``manifest.json`` (its shard list is used) or ``*.tar`` files, a list of any of these, or a remote URL
(``pipe:...``, ``s3://...``, ``https://...``) that is passed on unchecked.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path

import braceexpand

from vartok.data.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "vartok-shards"
_META = ("__", "__")


def is_remote(url: str) -> bool:
    """Whether a shard URL is not a local path (it cannot be checked before reading)."""
    return url.startswith("pipe:") or "://" in url


def expand_shards(spec: str | list[str], argument: str = "shards") -> list[str]:
    """Turn a shard argument into an ordered list of shard URLs, checking that local ones exist.

    Args:
        spec: a pattern, folder, URL or list of them (see the module docstring).
        argument: the argument's name, used in the error message.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise DataError(f"{argument} is an empty list; give shard paths, a brace pattern or a shard folder.")
    urls: list[str] = []
    for item in specs:
        for url in braceexpand.braceexpand(os.fspath(item)):
            urls.extend(_expand_one(os.path.expanduser(url)))
    if not urls:
        raise DataError(f"{argument}={spec!r} matches no shard file; give existing .tar shards, a brace pattern "
                        "like 'dir/shard-{000000..000009}.tar' or a folder made by `vartok-data make-shards`.")
    missing = [url for url in urls if not is_remote(url) and not os.path.isfile(url)]
    if missing:
        raise DataError(f"{argument}={spec!r}: {len(missing)} of {len(urls)} shard files do not exist "
                        f"(first: {missing[0]}); check the path or the brace range.")
    return urls


def _expand_one(url: str) -> list[str]:
    if is_remote(url):
        return [url]
    if os.path.isdir(url):
        manifest = read_manifest(url)
        if manifest is not None:
            return [os.path.join(url, shard["name"]) for shard in manifest["shards"]]
        return sorted(glob.glob(os.path.join(url, "*.tar")))
    if glob.has_magic(url):
        return sorted(glob.glob(url))
    return [url]


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of a shard folder, or None when there is none.

    Args:
        folder: the folder holding the shards.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable JSON manifest ({err}); delete it or rebuild the shards.")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{path} has no 'shards' list; it was not written by vartok-data, rebuild the shards.")
    return manifest


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file.

    Args:
        path: destination file.
        data: JSON-serialisable content.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def shard_counts(urls: list[str]) -> list[int] | None:
    """Number of samples in each shard, from the manifests next to them or by scanning local tar files.

    Returns None when a remote shard has no manifest entry (its size cannot be known without reading it).

    Args:
        urls: shard URLs as returned by `expand_shards`.
    """
    counts = []
    for url in urls:
        if is_remote(url):
            return None
        path = os.path.abspath(url)
        count = _manifest_counts(os.path.dirname(path), _mtime(path)).get(os.path.basename(path))
        if count is None:
            stat = os.stat(path) if os.path.isfile(path) else None  # a missing file counts 0, as a damaged one
            count = _scanned_count(path, stat.st_mtime_ns, stat.st_size) if stat else 0
        counts.append(count)
    return counts


@lru_cache(maxsize=65536)
def _scanned_count(path: str, _mtime_key: int, _size_key: int) -> int:
    # Cached while the file is unchanged: the data module checks the shards at setup, then the loaders count
    # them again, and scanning a large shard without a manifest reads every member's header.
    return scan_tar_count(path)


def _mtime(path: str) -> float:
    folder_manifest = os.path.join(os.path.dirname(path), MANIFEST_NAME)
    return os.path.getmtime(folder_manifest) if os.path.exists(folder_manifest) else 0.0


@lru_cache(maxsize=64)
def _manifest_counts(folder: str, _mtime_key: float) -> dict[str, int]:
    manifest = read_manifest(folder)
    if manifest is None:
        return {}
    return {shard["name"]: int(shard["count"]) for shard in manifest["shards"]}


def scan_tar_count(path: str) -> int:
    """Count the samples of a tar shard the way the reader groups them (consecutive members sharing a key).

    Args:
        path: a local tar file.
    """
    count, previous = 0, None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                name = member.name
                base = os.path.basename(name)
                if "/" not in name and base.startswith(_META[0]) and base.endswith(_META[1]):
                    continue
                key = sample_key(name)
                if key is not None and key != previous:
                    count, previous = count + 1, key
    except (tarfile.TarError, OSError, EOFError):
        pass  # a damaged shard: count what could be listed; the reader pads or reports the rest
    return count


def sample_key(member_name: str) -> str | None:
    """Key of a tar member as webdataset groups it: the path up to the first dot of the file name."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, _ = base.partition(".")
    if not dot or not stem:
        return None
    return f"{folder}/{stem}" if folder else stem
