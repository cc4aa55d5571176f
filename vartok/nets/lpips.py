"""LPIPS-VGG through the `lpips` package, frozen: one module for the metric and the training loss.

Lives in nets/ so the training loss (models/) and the evaluation (metrics/) use the same frozen network:
``LPIPS`` gives per-image distances, ``LPIPSLoss`` their batch mean.

The `lpips` package leaves its linear heads trainable with dropout, and fetches VGG16 with torchvision's
downloader. Here the network is built with nothing loaded (``pretrained=False, pnet_rand=True``), then:
- the VGG16 backbone is loaded from a resolved file (explicit path → torch hub cache → download if allowed
  → a clear error), either torchvision's vgg16-397923af.pth or a full LPIPS state dict;
- the linear heads from the file that ships inside the lpips wheel (weights/v0.1/vgg.pth) or a given path;
- dropout is replaced by identity, every parameter has ``requires_grad=False`` and the module never leaves
  eval mode, so two calls on the same input give the same value even inside a training loop.
Gradients flow to the input images, never to the LPIPS weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import lpips
import lpips.pretrained_networks
import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from vartok.nets.weights import (
    VGG16,
    WeightsNotFoundError,
    WeightsSpec,
    check_state_dict_shapes,
    load_state_dict_file,
    resolve_weights,
)

LPIPS_HEADS = WeightsSpec(
    what="LPIPS linear heads (lpips package, v0.1 vgg)",
    filename="vgg.pth",
    url="",
    flag="--lpips-heads",
    sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
)
# torchvision vgg16.features index → the lpips slice that holds it (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
_SLICE_ENDS = (4, 9, 16, 23, 30)


def _slice_of(layer: int) -> int:
    return next(s for s, end in enumerate(_SLICE_ENDS, start=1) if layer < end)


def _backbone_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision VGG16 keys (features.{i}.*) or LPIPS keys (net.slice{s}.{i}.*) to ``net.slice…``."""
    if any(k.startswith("net.slice") for k in state):
        return {k: v for k, v in state.items() if k.startswith("net.slice")}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and len(parts) == 3 and int(parts[1]) < _SLICE_ENDS[-1]:
            out[f"net.slice{_slice_of(int(parts[1]))}.{parts[1]}.{parts[2]}"] = value
    return out


@contextmanager
def _vgg_features_only() -> Iterator[None]:
    """lpips builds torchvision's whole VGG16, then keeps only `.features`; initialising the 120M-parameter
    classifier it drops takes seconds. Inside this block lpips gets the feature layers alone."""
    def vgg16(pretrained: bool = False, **kwargs) -> SimpleNamespace:
        if pretrained:  # never: vartok resolves and loads the weights itself, with no download
            raise RuntimeError("lpips asked torchvision for pretrained VGG16 weights")
        return SimpleNamespace(features=make_layers(cfgs["D"]))

    saved = lpips.pretrained_networks.tv
    lpips.pretrained_networks.tv = SimpleNamespace(vgg16=vgg16)
    try:
        yield
    finally:
        lpips.pretrained_networks.tv = saved


def default_heads_path() -> Path:
    """The v0.1 VGG linear heads shipped inside the lpips wheel."""
    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance per image. Inputs in [0, 1].

    Args:
        vgg_weights: explicit VGG16 weights file (torchvision's vgg16-397923af.pth, or a full LPIPS state dict
            which then also provides the heads); None = the torch hub cache.
        heads_weights: explicit linear-heads file; None = the one shipped in the lpips wheel.
        random_init: build with random weights and load nothing (tests; the heads are made non-negative,
            like the trained ones, so distances are ≥ 0).
        allow_download: download VGG16 into the hub cache when missing.
        seed: seed of the random initialisation (same module on every rank).
    """

    def __init__(
        self,
        vgg_weights: str | os.PathLike | None = None,
        heads_weights: str | os.PathLike | None = None,
        random_init: bool = False,
        allow_download: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # The files the weights came from (None: random weights), for the report's provenance.
        self.weights_path: str | None = None
        self.heads_path: str | None = None
        with torch.random.fork_rng(devices=[]), _vgg_features_only():
            torch.manual_seed(seed)
            self.net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
        if random_init:
            with torch.no_grad():
                for lin in self.net.lins:
                    lin.model[-1].weight.abs_()
        else:
            self._load(vgg_weights, heads_weights, allow_download)
        for lin in self.net.lins:
            lin.model[0] = nn.Identity()  # dropout off for good (keeps the conv at index 1 for loading)
        self.requires_grad_(False)
        super().train(False)

    def _load(self, vgg_weights, heads_weights, allow_download: bool) -> None:
        path = resolve_weights(VGG16, vgg_weights, allow_download)
        state = load_state_dict_file(path, VGG16)
        backbone = _backbone_state(state)
        expected = {k: v for k, v in self.net.state_dict().items() if k.startswith("net.slice")}
        check_state_dict_shapes(backbone, expected, path, VGG16)
        self.net.load_state_dict(backbone, strict=False)
        full = any(k.startswith("lin0.") for k in state)
        if full and heads_weights is None:
            heads, heads_path = state, path
        else:
            heads_path = Path(heads_weights) if heads_weights is not None else default_heads_path()
            if not heads_path.is_file():
                raise WeightsNotFoundError(
                    f"{LPIPS_HEADS.what}: {heads_path} does not exist; reinstall lpips or pass the heads file."
                )
            heads = load_state_dict_file(heads_path, LPIPS_HEADS)
        heads = {k: v for k, v in heads.items() if k.startswith("lin") and not k.startswith("lins.")}
        expected = {k: v for k, v in self.net.state_dict().items() if k.startswith("lin") and "lins." not in k}
        check_state_dict_shapes(heads, expected, heads_path, LPIPS_HEADS)
        self.net.load_state_dict(heads, strict=False)
        self.weights_path, self.heads_path = str(path), str(heads_path)

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode whatever is asked (a frozen measuring network)."""
        return super().train(False)

    def forward(self, images: Tensor, targets: Tensor) -> Tensor:
        """LPIPS distance per image.

        Args:
            images: (B,3,H,W) in [0,1] (gradients flow to it).
            targets: (B,3,H,W) in [0,1].
        Returns:
            (B,) distances.
        """
        if images.shape != targets.shape or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (B,3,H,W) tensors of one shape, got {tuple(images.shape)} and "
                f"{tuple(targets.shape)}."
            )
        return self.net(images, targets, normalize=True).reshape(images.shape[0])


class LPIPSLoss(LPIPS):
    """LPIPS as a training loss: the mean distance over the batch (a scalar). Same arguments as LPIPS."""

    def forward(self, images: Tensor, targets: Tensor) -> Tensor:
        """Mean LPIPS of (B,3,H,W) images in [0,1] against targets; differentiable in `images`."""
        return super().forward(images, targets).mean()

