"""The frozen FID feature network: torchmetrics' Inception-v3 over torch-fidelity's weights.

The network is torchmetrics' ``NoTrainInceptionV3`` built exactly as ``FrechetInceptionDistance(feature=F,
antialias=False)`` builds it (torch-fidelity's TF1-compatible bilinear resize to 299, so numbers match
torch-fidelity), loaded from a checked local weights file, frozen and in eval mode. The FID statistics over
its features are in :mod:`vartok.metrics.fid`.
"""

from __future__ import annotations

import os

from torch import nn
from torchmetrics.image.fid import NoTrainInceptionV3

from vartok.nets.weights import (
    INCEPTION,
    WeightsFileError,
    check_state_dict_shapes,
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
