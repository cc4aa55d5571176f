"""A PatchGAN discriminator (pix2pix / VQGAN's NLayerDiscriminator), sized for 32 px to 256 px images.

    images (B, 3, H, W) in [0, 1]
      → conv 4×4 stride 2, LeakyReLU                                  (no norm on the first layer)
      → (num_layers − 1) × [conv 4×4 stride 2, GroupNorm, LeakyReLU]  channels doubling up to max_channels
      → conv 4×4 stride 1, GroupNorm, LeakyReLU
      → conv 4×4 stride 1 → (B, 1, h, w) patch logits

Each logit judges one receptive field (70 px for num_layers=3): at 256 px, 3 layers give 30×30 logits; at
32 px, 3 layers give 2×2 logits. GroupNorm instead of BatchNorm: the real and reconstructed batches are judged
in separate calls and per-rank batches are small, so batch statistics would leak between them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _norm(channels: int, groups: int) -> nn.Module:
    return nn.GroupNorm(min(groups, channels), channels) if groups > 0 else nn.Identity()


class PatchDiscriminator(nn.Module):
    """Patch logits for real / reconstructed images.

    Args:
        channels: width of the first layer (> 0).
        num_layers: stride-2 layers (≥ 1); each halves the resolution.
        max_channels: cap of the doubling widths (≥ channels).
        norm_groups: groups of the GroupNorm layers (0 = no normalisation).
        in_channels: image channels.
    """

    def __init__(
        self, channels: int = 64, num_layers: int = 3, max_channels: int = 512, norm_groups: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        for name, value, low in (("channels", channels, 1), ("num_layers", num_layers, 1),
                                 ("max_channels", max_channels, channels), ("norm_groups", norm_groups, 0),
                                 ("in_channels", in_channels, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"discriminator.{name} must be an integer >= {low}, got {value!r}")
        self.num_layers = num_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1  # the last of these keeps the resolution (pix2pix)
            out = min(channels * 2**i, max_channels)
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=norm_groups == 0), _norm(out, norm_groups),
                       nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def output_size(self, image_size: int) -> int:
        """Side of the logit map for square images of side `image_size`."""
        size = image_size
        for _ in range(self.num_layers):  # the stride-2 convolutions
            size = _conv_out(size, 4, 2, 1)
        return _conv_out(_conv_out(size, 4, 1, 1), 4, 1, 1)  # the two stride-1 convolutions

    def check_image_size(self, image_size: int) -> None:
        """One clear error when the logit map would be empty for this image size."""
        if self.output_size(image_size) < 1:
            raise ValueError(
                f"discriminator.num_layers={self.num_layers} is too deep for {image_size} px images (no "
                f"patch logit is left); use at most {self.max_layers(image_size)} layers"
            )

    def max_layers(self, image_size: int) -> int:
        """The deepest `num_layers` that still leaves at least one logit at `image_size`."""
        layers, size = 0, image_size
        while _conv_out(_conv_out(_conv_out(size, 4, 2, 1), 4, 1, 1), 4, 1, 1) >= 1:
            layers, size = layers + 1, _conv_out(size, 4, 2, 1)
        return layers

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] → logits (B, 1, h, w)."""
        return self.net(images * 2 - 1)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` do not require grad inside the block (the graph built there excludes them)."""
    states = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for param, state in zip(module.parameters(), states):
            param.requires_grad_(state)


def build_discriminator(overrides: dict[str, Any] | None, image_size: int) -> PatchDiscriminator:
    """PatchDiscriminator(**overrides), with one clear error for an unknown argument or a too-small image."""
    overrides = dict(overrides or {})
    allowed = list(inspect.signature(PatchDiscriminator).parameters)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        names = ", ".join(allowed)
        raise ValueError(f"model.discriminator has unknown arguments {unknown}; allowed: {names}")
    discriminator = PatchDiscriminator(**overrides)
    discriminator.check_image_size(image_size)
    return discriminator
