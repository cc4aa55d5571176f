"""Finite scalar quantization (Mentzer et al. 2023) through vector-quantize-pytorch's FSQ."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from vector_quantize_pytorch import FSQ

from vartok.models.quantizers import register_quantizer
from vartok.models.quantizers.base import Quantizer, QuantizerOutput, index_stats
from vartok.models.quantizers.neighbours import smallest_sums

EPS = 1e-3  # the library's margin in bound(): half_l = (levels - 1)·(1 + EPS)/2


@register_quantizer("fsq")
class FSQQuantizer(Quantizer):
    """Each of the len(levels) channels is bounded with tanh and rounded to one of `levels[i]` values.

    Args:
        dim: width D of the latents; a linear projection to len(levels) channels is added when they differ.
        levels: number of levels per channel, each >= 3 (level 2 needs a symmetric variant we do not use);
            a token is one symbol of prod(levels) codes (latent perturbation).
        bound: how a channel is limited to its range before rounding: "tanh" (the paper's soft bound) or
            "clamp" (identity inside [-1, 1]: codes are then an affine function of the latents up to rounding,
            which a linear encoder/decoder pair, e.g. the PCA-started global linear path, can invert).
    No auxiliary losses; the index is the mixed-radix number of the per-channel levels.
    """

    def __init__(self, dim: int, levels: list[int] = (8, 8, 8, 5, 5, 5), bound: str = "tanh") -> None:
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

    def lookup_codes(self, indices: Tensor) -> Tensor:
        """(...) int64 in [0, prod(levels)), checked by `check_indices` (the library wraps any other value
        silently) -> codes (..., D)."""
        return self.fsq.indices_to_codes(indices).float()

    @classmethod
    def code_width(cls, **quantizer_args: Any) -> int:
        """len(levels): with dim == len(levels) the latents enter unprojected."""
        return len(cls.complete_args(quantizer_args)["levels"])

    def level_tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """The levels and the mixed-radix basis of the index, from `self.levels` (the library's values).

        Args:
            device: where to put them.
        Returns:
            levels: (C,) int64. basis: (C,) int64 cumulative products of the levels before each channel, so
            index = Σ_c level_c · basis_c (the first channel least significant).
        """
        levels = torch.tensor(self.levels, dtype=torch.int64, device=device)
        basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0)
        return levels, basis

    # -- latent perturbation (docs/definitions.md §3) ----------------------------------------------

    @property
    def symbol_codes(self) -> int:
        """prod(levels): a symbol is a whole token."""
        return int(self.codebook_size)

    def symbol_latents(self, latents: Tensor) -> Tensor:
        """The bounded latent b before rounding, in level units (adjacent levels are 1 apart).

        b = tanh(project_in(z) + shift)·half_l − offset, the library's `bound` without the rounding (with
        `bound="clamp"`, its hard clamp instead of tanh: identity inside the range); the code of channel c is
        round(b_c).

        Args:
            latents: (B, N, D) encoder outputs, before the quantizer.
        Returns:
            (B, N, 1, len(levels)) float32.
        """
        z = self.fsq.project_in(latents.detach().float())
        levels, _ = self.level_tensors(z.device)
        half_l = (levels.float() - 1) * (1 + EPS) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        if self.bound == "clamp":
            bounded = (z + offset / half_l).clamp(-1.0, 1.0) * half_l - offset
        else:
            bounded = torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset
        return bounded[:, :, None]

    def nearest_codes(self, x: Tensor, count: int) -> Tensor:
        """The `count` grid points nearest to each bounded latent by squared Euclidean distance (level units).

        The distance is a sum over channels, so the exact search of `neighbours.smallest_sums` applies.

        Args:
            x: (M, len(levels)) bounded latents from `symbol_latents`.
            count: number of codes, <= prod(levels).
        Returns:
            (M, count) int64 indices, nearest first.
        """
        levels, basis = self.level_tensors(x.device)  # (C,), (C,)
        level = torch.arange(int(levels.max()), device=x.device)  # (L,) level index l: grid point l − L//2
        grid = (level[None] - levels[:, None] // 2).float()  # (C, L)
        costs = (x[:, :, None] - grid[None]) ** 2  # (M, C, L)
        costs = costs.masked_fill(level[None, None] >= levels[None, :, None], math.inf)
        return smallest_sums(costs, level[None] * basis[:, None], count)
