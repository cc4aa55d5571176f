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

import dataclasses
import inspect
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from vartok.models.arguments import check_keys


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


def _args_class() -> type:
    """`DiscriminatorArgs`: PatchDiscriminator's constructor arguments with their defaults, as a dataclass.

    Built from the constructor's signature, so the two cannot drift apart; typed, so that the training
    command line lists the arguments (`vartok-train fit --help`) and refuses an unknown one.
    """
    hints = typing.get_type_hints(PatchDiscriminator.__init__)
    parameters = list(inspect.signature(PatchDiscriminator).parameters.values())
    fields = [(p.name, hints[p.name], dataclasses.field(default=p.default)) for p in parameters]
    args = dataclasses.make_dataclass("DiscriminatorArgs", fields)
    args.__module__ = __name__
    args.__doc__ = ("The PatchDiscriminator's arguments (built when model.loss.gan > 0).\n\n    Args:"
                    + PatchDiscriminator.__doc__.split("Args:", 1)[1])
    return args


DiscriminatorArgs = _args_class()


def discriminator_args(value: DiscriminatorArgs | Mapping[str, Any] | None) -> DiscriminatorArgs:
    """A `DiscriminatorArgs` from itself, a dict of some of its arguments (from Python) or None (the defaults).

    Args:
        value: a DiscriminatorArgs, a mapping of argument names to values, or None.

    Raises:
        ValueError: a key that is not an argument of PatchDiscriminator.
        TypeError: a value that is neither.
    """
    if value is None:
        return DiscriminatorArgs()
    if isinstance(value, DiscriminatorArgs):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"model.discriminator must be a DiscriminatorArgs or a dict of its arguments, got "
                        f"{type(value).__name__}")
    check_keys(value, DiscriminatorArgs, "model.discriminator", "arguments")
    return DiscriminatorArgs(**value)


def build_discriminator(args: DiscriminatorArgs | Mapping[str, Any] | None, image_size: int) -> PatchDiscriminator:
    """A PatchDiscriminator, with one clear error for an unknown argument or a too-small image.

    Args:
        args: a DiscriminatorArgs, a dict of some of its arguments, or None (the defaults).
        image_size: side of the square images it judges.
    """
    discriminator = PatchDiscriminator(**dataclasses.asdict(discriminator_args(args)))
    discriminator.check_image_size(image_size)
    return discriminator
