"""The one quantizer interface of docs/definitions.md §1.

Every quantizer maps latents z (B, N, D) to straight-through codes of the same shape and integer
indices, and reports UNWEIGHTED losses and detached statistics. Weights live in the training module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from vartok.models.precision import no_autocast


class QuantizerOutput(NamedTuple):
    """Args:
    codes: (B, N, D) quantized latents with a straight-through gradient to z.
    indices: int64 (B, N), or (B, N, G) for grouped codes.
    losses: unweighted scalar tensors, e.g. {"commit", "entropy", "codebook"}.
    stats: detached scalars, e.g. {"usage", "perplexity", "entropy_sample", "entropy_codebook"}.
    """

    codes: Tensor
    indices: Tensor
    losses: dict[str, Tensor]
    stats: dict[str, Tensor]


class Quantizer(nn.Module):
    """Base class: subclasses set `codebook_size` (python int) and implement `quantize` and
    `indices_to_codes`. `forward` runs them in float32 with autocast disabled, whatever the precision."""

    codebook_size: int
    dim: int

    @property
    def bits_per_token(self) -> float:
        import math

        return math.log2(self.codebook_size)

    @property
    def index_shape(self) -> tuple[int, ...]:
        """Trailing shape of one token's index: () or (G,) for grouped codes."""
        return ()

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"quantizer input z must be (B, N, {self.dim}), got {tuple(z.shape)}")
        if mask is not None and (mask.shape != z.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(f"mask must be bool (B, N) = {tuple(z.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
        with no_autocast(z.device):
            return self.quantize(z.float(), mask)

    def quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` (B, N, ...) over real tokens only; mask (B, N) bool, True = real."""
    if mask is None:
        return values.mean()
    per_token = values.reshape(*mask.shape, -1).mean(-1)  # (B, N)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def index_stats(indices: Tensor, mask: Tensor | None, codebook_size: int) -> dict[str, Tensor]:
    """Usage, perplexity and empirical codebook entropy (nats) of hard indices (B, N) over real tokens."""
    flat = indices.reshape(-1) if mask is None else indices[mask]
    counts = torch.bincount(flat, minlength=codebook_size).double()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum()
    return {
        "usage": ((counts > 0).sum() / codebook_size).float(),
        "perplexity": entropy.exp().float(),
        "entropy_codebook": entropy.float(),
    }
