"""Deterministic webdataset tar shards: same samples in, same bytes out.

Member metadata is fixed (mtime 0, uid/gid 0, mode 0644, no user names), shards rotate at `maxcount` samples or
`maxsize` bytes, and each shard is written as ``NAME.tmp`` and renamed when complete, so a shard file that
exists is always whole.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

SHARD_PATTERN = "shard-{:06d}.tar"


class ShardWriter:
    """Writes samples (key -> {extension: bytes}) into numbered tar shards.

    Args:
        folder: output folder (must exist).
        maxcount: at most this many samples per shard.
        maxsize: start a new shard before a sample would push the current one past this many bytes.
        start_index: number of the first shard (for resuming).
        on_shard_done: called with (name, count, bytes) after each shard is complete and renamed.
        pattern: shard file name pattern with one integer field.
    """

    def __init__(self, folder: str | os.PathLike, maxcount: int = 10_000, maxsize: int = 3 * 10**9,
                 start_index: int = 0, on_shard_done: Callable[[str, int, int], None] | None = None,
                 pattern: str = SHARD_PATTERN) -> None:
        self.folder = Path(folder)
        self.maxcount, self.maxsize = maxcount, maxsize
        self.index = start_index
        self.on_shard_done = on_shard_done
        self.pattern = pattern
        self._tar: tarfile.TarFile | None = None
        self._name = ""
        self._count = 0
        self._bytes = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample; `key` must not contain dots, extensions must not start with one.

        Args:
            key: the sample key (member names are ``key.ext``).
            members: extension -> content.
        """
        if "." in key.rpartition("/")[2] or not key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no dot")
        size = sum(512 + (len(data) + 511) // 512 * 512 for data in members.values())
        if self._tar is not None and (self._count >= self.maxcount or
                                      (self._count > 0 and self._bytes + size > self.maxsize)):
            self._finish()
        if self._tar is None:
            self._open()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def _open(self) -> None:
        self._name = self.pattern.format(self.index)
        # Closed in _finish / __exit__: the archive stays open across write() calls.
        self._tar = tarfile.open(  # noqa: SIM115
            self.folder / (self._name + ".tmp"), "w", format=tarfile.GNU_FORMAT)
        self._count, self._bytes = 0, 0

    def _finish(self) -> None:
        assert self._tar is not None
        self._tar.close()
        os.replace(self.folder / (self._name + ".tmp"), self.folder / self._name)
        size = (self.folder / self._name).stat().st_size
        self._tar = None
        self.index += 1
        if self.on_shard_done is not None:
            self.on_shard_done(self._name, self._count, size)

    def close(self) -> None:
        """Finish the current shard (if any sample was written to it)."""
        if self._tar is not None:
            self._finish()

    def __enter__(self) -> ShardWriter:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._tar is not None:  # an error: leave no half shard behind
            self._tar.close()
            (self.folder / (self._name + ".tmp")).unlink(missing_ok=True)
            self._tar = None
