"""rFID and pFID: torchmetrics' FID over torch-fidelity's Inception-v3.

The network is torchmetrics' ``NoTrainInceptionV3`` built exactly as ``FrechetInceptionDistance(feature=F,
antialias=False)`` builds it (torch-fidelity's TF1-compatible bilinear resize to 299, so numbers match
torch-fidelity), loaded from a checked local weights file, frozen and in eval mode. Statistics are the
float64 sums of torchmetrics' ``FrechetInceptionDistance`` (sum reduction, so under DDP every image counts
once over all ranks). One network pass per image set: the originals' features are computed once and shared
by every reconstruction set (one per length k, one per pFID variant and seed).
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
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

from vartok.metrics.weights import (
    INCEPTION,
    WeightsFileError,
    check_state_dict_shapes,
    file_sha256,
    load_state_dict_file,
    resolve_weights,
)

FEATURE_DIMS = (64, 192, 768, 2048)


class _CheckedInceptionV3(NoTrainInceptionV3):
    """torchmetrics' FID Inception whose weights we load ourselves, after checking every shape
    (torch-fidelity's constructor would unpickle the file without ``weights_only`` and fail obscurely)."""

    _defer_load = True

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self._defer_load:  # the call from torch-fidelity's __init__: skipped, done in build_inception
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> _CheckedInceptionV3:
        """Always eval mode (torchmetrics' version also requires the argument; plain ``.train()`` works here)."""
        return super().train(False)


def build_inception(
    weights: str | os.PathLike | None = None, feature: int = 2048, allow_download: bool = False
) -> nn.Module:
    """The frozen FID network: (B,3,H,W) uint8 → (B, feature) float32 features.

    Args:
        weights: explicit path of weights-inception-2015-12-05-6726825d.pth (else the torch hub cache).
        feature: the Inception feature layer, one of 64, 192, 768, 2048 (2048 = the standard FID).
        allow_download: download the file into the hub cache when it is missing.
    """
    if feature not in FEATURE_DIMS:
        raise ValueError(f"FID feature must be one of {FEATURE_DIMS}, got {feature!r}.")
    path = resolve_weights(INCEPTION, weights, allow_download)
    state = load_state_dict_file(path, INCEPTION)  # weights_only=True: the file is plain tensors
    try:
        net = _CheckedInceptionV3(
            name="inception-v3-compat",
            features_list=[str(feature)],
            feature_extractor_weights_path=str(path),
            antialias=False,
        )
    except Exception as err:  # e.g. a file torch-fidelity cannot read
        raise WeightsFileError(f"{INCEPTION.what}: cannot build the network from {path} ({err}).") from err
    check_state_dict_shapes(state, net.state_dict(), path, INCEPTION)
    net._defer_load = False
    net.load_state_dict(state, strict=True)
    net.requires_grad_(False)
    net.eval()
    net.num_features = feature
    net.weights_path = str(path)
    return net


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
        network: the feature network from :func:`build_inception` (or any module with ``num_features``
            mapping uint8 (B,3,H,W) to (B, num_features)).
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
        self.reference.sync(should_sync=_distributed())
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


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


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
