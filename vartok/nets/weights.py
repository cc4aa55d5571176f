"""Where the frozen measuring networks get their weights: Inception-v3 (FID) and VGG16 (LPIPS).

Resolution order (docs/definitions.md §4):
1. an explicit path (a user flag such as ``--inception-weights``) — if given it must exist;
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file name>``;
3. a download into that cache, only when ``allow_download=True`` (and the machine is online);
4. otherwise :class:`WeightsNotFoundError`: one sentence naming the file, the folder searched and the flag.
Never a silent fallback to other weights. Files are read with ``torch.load(weights_only=True)``.

One resolver and one set of exception classes for both networks: it lives in nets/, which imports nothing
else from vartok, so the training LPIPS loss (models/) and the evaluation (metrics/) share it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weights file could not be found (or downloaded); the message says where and how."""


class WeightsFileError(ValueError):
    """A weights file exists but is unreadable or does not fit the network; the message names the file."""


@dataclass(frozen=True)
class WeightsSpec:
    """One pretrained weights file: its canonical file name, where it is published, the user's flag and the
    SHA-256 of the published file ("" = the prefix in the file name, torch hub's convention: `-<hex>.pth`)."""

    what: str
    filename: str
    url: str
    flag: str
    sha256: str = ""


INCEPTION = WeightsSpec(
    what="Inception-v3 FID weights (torch-fidelity)",
    filename="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    flag="--inception-weights",
)
VGG16 = WeightsSpec(
    what="VGG16 ImageNet weights for LPIPS (torchvision)",
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    flag="--lpips-weights",
)


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder that torchvision and torch-fidelity download into."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(spec: WeightsSpec, path: str | os.PathLike | None = None, allow_download: bool = False) -> Path:
    """Find the weights file of `spec`: explicit path → torch hub cache → download (if allowed) → error.

    Args:
        spec: which file (:data:`INCEPTION` or :data:`VGG16`).
        path: an explicit file given by the user; it must exist (a typo is an error, not a fallback).
        allow_download: fetch ``spec.url`` into the hub cache when the file is not there.
    Returns:
        The path of an existing file.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsNotFoundError(
                f"{spec.what}: the file given with {spec.flag} does not exist: {explicit}; "
                f"pass the path of {spec.filename}."
            )
        return explicit
    cached = hub_checkpoint_dir() / spec.filename
    if cached.is_file():
        return cached
    if allow_download:
        return _download(spec, cached)
    raise WeightsNotFoundError(
        f"{spec.what}: {spec.filename} was not found in the torch hub cache folder {cached.parent} and "
        f"downloading is off; put the file there, pass its path with {spec.flag}, or allow the download "
        f"(from {spec.url})."
    )


def _download(spec: WeightsSpec, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(target), progress=True)
    except Exception as err:  # offline, proxy, HTTP error: all mean the same thing to the user
        raise WeightsNotFoundError(
            f"{spec.what}: {spec.filename} is not in {target.parent} and downloading it from {spec.url} "
            f"failed ({type(err).__name__}: {err}); put the file there or pass its path with {spec.flag}."
        ) from err
    return target


def load_state_dict_file(path: str | os.PathLike, spec: WeightsSpec) -> dict[str, Tensor]:
    """Read a state dict safely (``weights_only=True``, CPU) and check it is a mapping of tensors.

    Args:
        path: the weights file.
        spec: what the file should hold (for the error message).
    """
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsFileError(
            f"{spec.what}: {path} is not a readable PyTorch weights file ({type(err).__name__}); "
            f"pass the path of {spec.filename} with {spec.flag}."
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsFileError(
            f"{spec.what}: {path} does not hold a state dict of tensors; pass {spec.filename} with {spec.flag}."
        )
    return state


def check_state_dict_shapes(
    state: dict[str, Tensor], expected: dict[str, Tensor], path: str | os.PathLike, spec: WeightsSpec
) -> None:
    """Raise one clear :class:`WeightsFileError` if `state` does not have exactly the keys and shapes
    of `expected` (a network's own ``state_dict()``)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return
    if wrong:
        k = wrong[0]
        first = f"tensor '{k}' has shape {tuple(state[k].shape)} but {tuple(expected[k].shape)} is expected"
    elif missing:
        first = f"tensor '{missing[0]}' is missing"
    else:
        first = f"tensor '{unexpected[0]}' is not part of the network"
    raise WeightsFileError(
        f"{spec.what}: {path} does not fit the network: {first} ({len(wrong)} wrong shapes, {len(missing)} "
        f"missing, {len(unexpected)} unexpected tensors); pass the genuine {spec.filename} with {spec.flag}."
    )


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, memoised per (path, size, mtime) within the process."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def describe_weights(path: str | os.PathLike, spec: WeightsSpec) -> dict:
    """Which file a network was loaded from, for a report: its path, SHA-256 and whether it is the official file.

    Args:
        path: the weights file that was loaded.
        spec: what it should be (its ``sha256`` is the official file's; "" = no official file to compare with).
    Returns:
        {"path", "sha256", "official": bool | None (None: nothing to compare with), and "warning" (one sentence)
        when the file is not the official one}.
    """
    digest = file_sha256(path)
    expected = spec.sha256 or official_prefix(spec.filename)
    entry: dict = {"path": str(Path(path).resolve()), "sha256": digest,
                   "official": digest.startswith(expected) if expected else None}
    if entry["official"] is False:
        entry["warning"] = (
            f"{spec.what}: {path} is not the official {spec.filename} (SHA-256 {digest[:12]}…, expected one "
            f"starting {expected[:12]}), so figures measured with it are not comparable with published ones; pass "
            f"the official file with {spec.flag}."
        )
    return entry


def official_prefix(filename: str) -> str:
    """The SHA-256 prefix a published file name carries (`vgg16-397923af.pth` → "397923af"), "" if none."""
    match = re.search(r"-([0-9a-f]{8,})\.", filename)
    return match.group(1) if match else ""
