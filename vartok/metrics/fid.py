"""rFID and pFID: torchmetrics' FID over torch-fidelity's Inception-v3.

The network is built in :mod:`vartok.nets.inception` (frozen, eval mode, from a checked local weights file);
this module holds the statistics over its features: the float64 sums of torchmetrics'
``FrechetInceptionDistance`` (sum reduction, so under DDP every image counts once over all ranks). One network
pass per image set: the originals' features are computed once and shared by every reconstruction set (one per
length k, one per pFID variant and seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from vartok.distributed import is_distributed
from vartok.nets.weights import file_sha256


class _Precomputed(nn.Module):
    """Identity 'feature extractor': lets torchmetrics' FID accumulate features we computed once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _new_fid(num_features: int) -> FrechetInceptionDistance:
    metric = FrechetInceptionDistance(feature=_Precomputed(num_features), normalize=False)
    metric.orig_dtype = torch.float64  # compute() casts to it; a rank that saw no image has none set
    return metric


class FIDBank:
    """FID of any number of named image sets against one reference set (the originals).

    Args:
        network: the feature network from :func:`vartok.nets.inception.build_inception` (or any module with
            ``num_features`` mapping uint8 (B,3,H,W) to (B, num_features)).
        device: where the network and the float64 statistics live.
    """

    def __init__(self, network: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.num_features = int(network.num_features)
        self.reference = _new_fid(self.num_features).to(self.device)
        self.sets: dict[str, FrechetInceptionDistance] = {}
        self.reference_loaded = False  # True when reference statistics came from a cache file

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """uint8 (B,3,H,W) → float64 (B, num_features)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"FID images must be uint8 (B,3,H,W) in [0,255], got {images.dtype}.")
        return self.network(images.to(self.device)).double()

    def update_reference(self, images: Tensor) -> None:
        """Add originals, uint8 (B,3,H,W); ignored when the reference came from a cache file."""
        if not self.reference_loaded and images.shape[0] > 0:
            self.reference.update(self.features(images), real=True)

    def update(self, name: str, images: Tensor) -> None:
        """Add images, uint8 (B,3,H,W), to the set `name` (created on first use)."""
        if name not in self.sets:
            self.sets[name] = _new_fid(self.num_features).to(self.device)
        if images.shape[0] > 0:
            self.sets[name].update(self.features(images), real=False)

    def compute(self, name: str) -> float:
        """FID (float64) of set `name` against the reference; synced over ranks by torchmetrics."""
        metric = self.sets[name]
        # share the reference's LOCAL sums: compute() all-reduces them with the set's own sums
        metric.real_features_sum = self.reference.real_features_sum
        metric.real_features_cov_sum = self.reference.real_features_cov_sum
        metric.real_features_num_samples = self.reference.real_features_num_samples
        metric._computed = None
        return float(metric.compute())

    def reference_state(self) -> dict[str, Tensor]:
        """The reference sums synced over ranks (call on every rank), on the CPU."""
        self.reference.sync(should_sync=is_distributed())
        try:
            return {
                "sum": self.reference.real_features_sum.cpu().clone(),
                "cov_sum": self.reference.real_features_cov_sum.cpu().clone(),
                "count": self.reference.real_features_num_samples.cpu().clone(),
            }
        finally:
            if self.reference._is_synced:
                self.reference.unsync()

    def load_reference(self, state: dict[str, Tensor], rank: int = 0) -> None:
        """Use cached reference sums; only rank 0 holds them so the sum over ranks is the total."""
        keep = rank == 0
        self.reference.real_features_sum = state["sum"].double().to(self.device) * keep
        self.reference.real_features_cov_sum = state["cov_sum"].double().to(self.device) * keep
        self.reference.real_features_num_samples = state["count"].long().to(self.device) * keep
        self.reference_loaded = True


# ----------------------------------------------------------------------------------------------------
# Reference statistics cache: key = (data, resolution, count, weights file hash, feature layer).


def reference_stats_path(
    cache_dir: str | os.PathLike, data_id: str, image_size: int, count: int | str, weights_path: str, feature: int
) -> Path:
    """The cache file of one validation set's Inception statistics.

    Args:
        data_id: what identifies the images (e.g. the shard URLs).
        image_size: the evaluation resolution.
        count: the number of images, or a description of the limit ("all").
        weights_path: the Inception weights file (its SHA-256 enters the key).
        feature: the Inception feature layer.
    """
    key = json.dumps([data_id, int(image_size), str(count), file_sha256(weights_path), int(feature)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(cache_dir) / f"fid-ref-{image_size}px-{feature}-{digest}.pt"


def save_reference_stats(path: str | os.PathLike, state: dict[str, Tensor]) -> None:
    """Write reference sums atomically (tensors only: safe to load with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({k: v.cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def load_reference_stats(path: str | os.PathLike) -> dict[str, Tensor] | None:
    """The cached sums, or None if the file is absent or unreadable (then they are recomputed)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):  # recompute rather than fail
        return None
    if not isinstance(state, dict) or set(state) != {"sum", "cov_sum", "count"}:
        return None
    return state


# ----------------------------------------------------------------------------------------------------
# Plain numpy/scipy FID: the test oracle, independent of torchmetrics.


def fid_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1Σ2)^½) with scipy's matrix square root (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(np.real(covmean)))


def fid_from_features(features1: np.ndarray | Tensor, features2: np.ndarray | Tensor) -> float:
    """FID between two feature sets (n1, D) and (n2, D), unbiased covariances, float64."""
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    return fid_from_statistics(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def open_reference_cache(bank: FIDBank, cache_dir: str | os.PathLike | None, data_id: str | None, image_size: int,
                         rank: int) -> Path | None:
    """The cache file of the originals' statistics, loaded into `bank` when it exists (then the originals are
    not measured again); None when there is no cache (no folder, no data id, or a network without a file)."""
    weights = getattr(bank.network, "weights_path", None)
    if cache_dir is None or data_id is None or weights is None:
        return None
    path = reference_stats_path(cache_dir, data_id, image_size, "all", weights, bank.num_features)
    state = load_reference_stats(path)
    if state is not None:
        bank.load_reference(state, rank)
    return path


def close_reference_cache(bank: FIDBank, path: Path | None, seen: int, rank: int) -> str | None:
    """Write freshly computed statistics (rank 0); a loaded file whose image count differs from the `seen`
    images is removed, and the reason FID cannot be trusted this time is returned."""
    if path is None:
        return None
    state = bank.reference_state()  # synced: identical on every rank
    if bank.reference_loaded and int(state["count"]) != seen:
        if rank == 0:
            path.unlink(missing_ok=True)
        return (f"the cached Inception statistics {path} hold {int(state['count'])} images but the data gave "
                f"{seen}; the file was removed, run again to recompute it")
    if not bank.reference_loaded and rank == 0:
        save_reference_stats(path, state)
    return None
