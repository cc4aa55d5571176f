"""TiTok's vector quantizer: a learnable (K, D) codebook searched at the token width itself (TiTok's models have
no projection; a latent width other than the code width gets a linear one in and out), optionally on the unit sphere (latents and codes l2-normalised, as the two-stage TiTok models and One-D-Piece).

The nearest code is the argmin over codes of |z|² + |e|² - 2 z·e, evaluated in that order and form, as the
released models compute it: an equal distance computed differently can pick the other code of a near tie.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vartok.models.quantizers import register_quantizer
from vartok.models.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    codebook_losses,
    index_stats,
)

SEARCH_CHUNK_ELEMENTS = 2**24  # cap of one (rows × codebook) distance block in `nearest_codes`


@register_quantizer("titok_vq")
class TiTokVQ(Quantizer):
    """Nearest code by euclidean distance, on the sphere when `l2_norm`.

    Args:
        dim: width D of the latents; the released models have D = `codebook_dim` (no projection).
        codebook_size: number of codes K.
        codebook_dim: width of each code (TiTok's token_size).
        l2_norm: normalise latents and codes to unit length before the search; the codes handed to the decoder
            are the normalised ones.
    Losses (unweighted): `commit` ||z - sg(q)||² and `codebook` ||q - sg(z)||², z normalised when l2_norm.
    """

    def __init__(self, dim: int, codebook_size: int = 4096, codebook_dim: int = 12, l2_norm: bool = True) -> None:
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"titok_vq codebook_size must be >= 2, got {codebook_size!r}")
        self.dim, self.codebook_size, self.l2_norm = dim, codebook_size, l2_norm
        self.project_in = nn.Linear(dim, codebook_dim) if dim != codebook_dim else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if dim != codebook_dim else nn.Identity()
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def _sphere(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.l2_norm else x

    def _distances(self, flat: Tensor) -> Tensor:
        """(M, D) latents already on the sphere when l2_norm -> (M, K) squared distances, in the released form."""
        codebook = self._sphere(self.embedding.weight)
        return (torch.sum(flat**2, dim=1, keepdim=True) + torch.sum(codebook**2, dim=1)
                - 2 * torch.einsum("bd,dn->bn", flat, codebook.T))

    def quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        z = self._sphere(self.project_in(z))  # (B, N, codebook_dim)
        indices = torch.argmin(self._distances(z.reshape(-1, z.shape[-1])), dim=1).view(z.shape[:2])  # (B, N)
        chosen = self._sphere(self.embedding(indices))  # differentiable in the codebook
        losses = codebook_losses(z, chosen, mask)
        codes = self.project_out(z + (chosen - z).detach())
        return QuantizerOutput(codes, indices, losses, index_stats(indices.detach(), mask, self.codebook_size))

    def lookup_codes(self, indices: Tensor) -> Tensor:
        """(...) int64 in [0, K), checked by `check_indices` -> codes (..., D), normalised when l2_norm."""
        return self.project_out(self._sphere(self.embedding(indices)))

    @classmethod
    def code_width(cls, **quantizer_args: Any) -> int:
        return int(cls.complete_args(quantizer_args)["codebook_dim"])

    # -- latent perturbation (docs/definitions.md §3) ----------------------------------------------

    @property
    def symbol_codes(self) -> int:
        """K: a symbol is a whole token."""
        return int(self.codebook_size)

    def symbol_latents(self, latents: Tensor) -> Tensor:
        """(B, N, D) encoder outputs -> (B, N, 1, codebook_dim) float32, projected and normalised as the search
        compares them."""
        with torch.no_grad():
            return self._sphere(self.project_in(latents.detach().float()))[:, :, None]

    def nearest_codes(self, x: Tensor, count: int) -> Tensor:
        """The `count` codes nearest to each row of x (M, D) by the quantizer's own distance -> (M, count) int64,
        nearest first. Rows are searched in chunks to bound the memory."""
        step = max(1, SEARCH_CHUNK_ELEMENTS // self.codebook_size)
        with torch.no_grad():
            return torch.cat([self._distances(chunk).topk(count, dim=1, largest=False).indices
                              for chunk in x.float().split(step)])
