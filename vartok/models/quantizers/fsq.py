"""Finite scalar quantization (Mentzer et al. 2023) through vector-quantize-pytorch's FSQ."""

from __future__ import annotations

import math

from torch import Tensor
from vector_quantize_pytorch import FSQ

from vartok.models.quantizers import register_quantizer
from vartok.models.quantizers.base import Quantizer, QuantizerOutput, index_stats


@register_quantizer("fsq")
class FSQQuantizer(Quantizer):
    """Each of the len(levels) channels is bounded with tanh and rounded to one of `levels[i]` values.

    Args:
        dim: width D of the latents; a linear projection to len(levels) channels is added when they differ.
        levels: number of levels per channel, each >= 3 (level 2 needs a symmetric variant we do not use).
        bound: how a channel is limited to its range before rounding: "tanh" (the paper's soft bound) or
            "clamp" (identity inside [-1, 1]: codes are then an affine function of the latents up to rounding,
            which a linear encoder/decoder pair, e.g. the PCA-started global linear path, can invert).
    No auxiliary losses; the index is the mixed-radix number of the per-channel levels.
    """

    def __init__(self, dim: int, levels: list[int] = (8, 5, 5, 5), bound: str = "tanh") -> None:
        super().__init__()
        levels = list(levels)
        if not levels or any(not isinstance(v, int) or v < 3 for v in levels):
            raise ValueError(f"fsq levels must be a non-empty list of ints >= 3, got {levels!r}")
        if math.prod(levels) > 2**24:
            raise ValueError(f"fsq levels {levels} give {math.prod(levels)} codes; at most 2**24 are supported")
        if bound not in ("tanh", "clamp"):
            raise ValueError(f"fsq bound must be 'tanh' or 'clamp', got {bound!r}")
        self.dim = dim
        self.levels = levels
        self.bound = bound
        self.fsq = FSQ(levels=levels, dim=dim, bound_hard_clamp=bound == "clamp")
        self.codebook_size = math.prod(levels)

    def quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        codes, indices = self.fsq(z)  # (B, N, D), (B, N)
        indices = indices.long()
        return QuantizerOutput(codes, indices, {}, index_stats(indices.detach(), mask, self.codebook_size))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.fsq.indices_to_codes(indices).float()
