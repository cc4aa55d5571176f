"""The convolutional pixel decoder of MaskGIT's VQGAN, which two-stage TiTok models decode through.

A two-stage TiTok decoder predicts, per 16x16 patch, logits over the 1024 codes of a frozen VQGAN codebook
(1024 x 256); the softmax-weighted codes form a (B, 256, H/16, W/16) map that this network turns into pixels:
a 3x3 convolution, residual blocks, then per level (coarsest first) residual blocks and a nearest-neighbour x2
upsampling with a 3x3 convolution, and GroupNorm + SiLU + a 3x3 convolution to RGB. Its output is in [0, 1]
scale. Parameter names follow the released weights (conv_in, mid, up.<level>.block.<i>, up.<level>.upsample_conv,
norm_out, conv_out), so converting them is a rename of the prefix only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

GROUPS, EPS = 32, 1e-6  # GroupNorm of every block, as in the released network


@dataclass
class PixelDecoderArgs:
    """Args:
    proxy_codes: codes of the VQGAN codebook the ViT predicts logits over (1024 in the released models).
    code_dim: width of one code = channels of the decoder's input map (256).
    channels: base channel count (128); level i has channels * channel_mult[i].
    channel_mult: per level, finest first ([1, 1, 2, 2, 4]: four x2 upsamplings, 16x in all).
    res_blocks: residual blocks per level and in the middle (2).
    """

    proxy_codes: int = 1024
    code_dim: int = 256
    channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    res_blocks: int = 2

    def __post_init__(self) -> None:
        widths = [self.channels * m for m in self.channel_mult]
        if not self.channel_mult or any(w < GROUPS or w % GROUPS for w in widths):
            raise ValueError(f"pixel_decoder channels * channel_mult must be positive multiples of {GROUPS} (GroupNorm "
                             f"groups), got {self.channels} * {self.channel_mult}")
        for name in ("proxy_codes", "code_dim", "res_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"pixel_decoder.{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def upsampling(self) -> int:
        """The decoder's scale factor from its input map to pixels."""
        return 2 ** (len(self.channel_mult) - 1)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice. When the width changes, the 1x1 shortcut reads the block's OUTPUT (not its
    input): that is how the released MaskGIT VQGAN computes it, so its weights only reproduce with this form."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(GROUPS, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = (nn.Conv2d(out_channels, out_channels, 1, bias=False)
                             if in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(h))


class UpBlock(nn.Module):
    """One level: residual blocks, then (except at the finest level 0) x2 nearest upsampling + a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, res_blocks: int, upsample: bool) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * res_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in pairwise(widths))
        self.upsample_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class PixelDecoder(nn.Module):
    """(B, code_dim, h, w) code map -> (B, 3, h * upsampling, w * upsampling) pixels in [0, 1] scale (unclamped).

    Args:
        args: the shape (PixelDecoderArgs; the defaults are the released network's).
    """

    def __init__(self, args: PixelDecoderArgs) -> None:
        super().__init__()
        widths = [args.channels * m for m in args.channel_mult]
        self.conv_in = nn.Conv2d(args.code_dim, widths[-1], 3, padding=1)
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1]) for _ in range(args.res_blocks))
        # up[level] for level 0 (finest) .. L-1 (coarsest); forward runs them coarsest first.
        self.up = nn.ModuleList(
            UpBlock(widths[min(level + 1, len(widths) - 1)], widths[level], args.res_blocks, upsample=level > 0)
            for level in range(len(widths))
        )
        self.norm_out = nn.GroupNorm(GROUPS, widths[0], eps=EPS)
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.mid:
            x = block(x)
        for block in reversed(self.up):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))
