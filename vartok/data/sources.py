"""The input of make-shards: image files from a folder tree or a list file, with unique sanitised keys.

Folder: every non-hidden regular file (symlinks followed) below the folder, sorted by path. When every file
sits in a subfolder, the top-level folder name is the class (ImageNet layout); otherwise there are no classes.
Hidden files and folders (names starting with '.': .DS_Store, macOS ._* resource forks, .git) are not read;
`list_sources` can report them with the reason.
List file: one path per line, optionally followed by a TAB and a class name; relative paths are relative to the
list file; blank lines and lines starting with '#' are ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vartok.data.errors import DataError

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_CHARS = 120


@dataclass(frozen=True)
class Source:
    """One input file.

    Args:
        path: absolute file path.
        name: the path as the user knows it (relative to the input folder, or as written in the list).
        key: the sanitised, unique sample key (letters, digits, '_', '-').
        label: the class name, or None.
    """

    path: str
    name: str
    key: str
    label: str | None


def hidden_reason(name: str, folder: bool = False) -> str:
    """Why a hidden file or folder (its name starts with '.') is not read, in a few words.

    Args:
        name: the file or folder name (no path).
        folder: whether it is a folder.
    """
    if folder:
        return "hidden folder"
    if name == ".DS_Store":
        return "macOS folder metadata"
    if name.startswith("._"):
        return "macOS resource fork (AppleDouble), not an image"
    return "hidden file"


def list_sources(input_path: str | os.PathLike, hidden: list[dict] | None = None) -> list[Source]:
    """All input files of a folder or list file, in a deterministic order with unique keys.

    Args:
        input_path: a folder of images (optionally one subfolder per class) or a text file listing images.
        hidden: if given, receives {"path", "reason"} for each hidden file or folder of an input folder that is
            not read (a hidden folder is one entry, its path ending in '/').
    """
    root = Path(input_path).expanduser()
    if root.is_dir():
        entries = _walk(root, hidden if hidden is not None else [])
        if not entries:
            raise DataError(f"--input {input_path} holds no (non-hidden) files; point it at a folder of images.")
        labelled = all("/" in name for _, name in entries)
        pairs = [(path, name, name.split("/", 1)[0] if labelled else None) for path, name in entries]
    elif root.is_file():
        pairs = _read_list(root)
        if not pairs:
            raise DataError(f"--input {input_path} is a list file without any image path; write one path per line.")
    else:
        raise DataError(f"--input {input_path} does not exist; give a folder of images or a list file.")
    keys = unique_keys([name for _, name, _ in pairs])
    return [Source(path, name, key, label) for (path, name, label), key in zip(pairs, keys)]


def _walk(root: Path, hidden: list[dict]) -> list[tuple[str, str]]:
    entries = []

    def rel(path: str) -> str:
        return os.path.relpath(path, root).replace(os.sep, "/")

    for folder, dirs, files in os.walk(root, followlinks=False):
        hidden += [{"path": rel(os.path.join(folder, d)) + "/", "reason": hidden_reason(d, folder=True)}
                   for d in sorted(dirs) if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            path = os.path.join(folder, file)
            if file.startswith("."):
                hidden.append({"path": rel(path), "reason": hidden_reason(file)})
            elif os.path.isfile(path):
                entries.append((path, rel(path)))
    entries.sort(key=lambda entry: entry[1])
    hidden.sort(key=lambda entry: entry["path"])
    return entries


def _read_list(list_file: Path) -> list[tuple[str, str, str | None]]:
    pairs = []
    for line in list_file.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, label = line.rstrip("\n").partition("\t")
        name = name.strip()
        path = name if os.path.isabs(name) else str(list_file.parent / name)
        pairs.append((path, name, label.strip() or None))
    return pairs


def sanitize_key(name: str) -> str:
    """A webdataset-safe key from a file path: extension dropped, every other character outside
    [A-Za-z0-9_-] (dots, slashes, spaces, accents) replaced by '_', long names shortened with a hash.

    Args:
        name: the relative path of the file.
    """
    stem = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
    key = _UNSAFE.sub("_", stem).strip("_") or "image"
    if len(key) > MAX_KEY_CHARS:
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        key = key[: MAX_KEY_CHARS - 11] + "_" + digest
    return key


def unique_keys(names: list[str]) -> list[str]:
    """Sanitised keys, made unique by appending _1, _2, ... in input order.

    Args:
        names: file paths in their final order.
    """
    used: set[str] = set()
    keys = []
    for name in names:
        base = sanitize_key(name)
        key, n = base, 0
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys
