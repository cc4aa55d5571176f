"""Vector quantization in a low-dimensional codebook space, through vector-quantize-pytorch's VectorQuantize:
an EMA codebook with cosine similarity and dead-code reset, or a learnable codebook trained by the
`codebook` loss (euclidean distance: the library does not combine cosine distance with a learnable codebook)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from vartok.models.quantizers import register_quantizer
from vartok.models.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    codebook_losses,
    index_stats,
)

SEARCH_CHUNK_ELEMENTS = 2**24  # cap of one (rows × codebook) similarity block in `nearest_codes` (64 MiB float32)


@register_quantizer("vq")
class VQQuantizer(Quantizer):
    """Nearest code in a `codebook_dim`-wide space: by cosine similarity (ema=True) or euclidean distance
    (ema=False).

    Args:
        dim: width D of the latents (projected to `codebook_dim` and back when they differ).
        codebook_size: number of codes K; one token is one symbol of K codes (latent perturbation).
        codebook_dim: width of the codebook space (low-dim codebooks keep usage high).
        ema: EMA codebook updates with cosine similarity (True), or a learnable codebook with euclidean
            distance, trained by the `codebook` loss ||q - sg(z)||^2 (False; weight it with loss.codebook).
        decay: EMA decay of the codebook (ema=True).
        dead_code_threshold: codes whose EMA cluster size falls below this are re-seeded from the batch
            (after the batch's codes were chosen; 0 = never).
        sync_codebook: all-reduce the EMA statistics over ranks. None = decided from the world size when
            training starts (`configure_world_size`), never from a guess at construction.
    Losses: `commit` ||z - sg(q)||^2 (and `codebook` when not EMA), unweighted. Padded tokens (mask False) take no
    part in the losses or the codebook update; their index is reported as 0.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int = 4096,
        codebook_dim: int = 12,
        ema: bool = True,
        decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        sync_codebook: bool | None = None,
    ) -> None:
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"vq codebook_size must be >= 2, got {codebook_size!r}")
        if codebook_dim < 1:
            raise ValueError(f"vq codebook_dim must be >= 1, got {codebook_dim!r}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"vq decay must be in (0, 1), got {decay!r}")
        self.dim = dim
        self.codebook_size = codebook_size
        # Projections are ours: the library's commit loss breaks with a mask when it projects itself.
        self.project_in = nn.Linear(dim, codebook_dim) if dim != codebook_dim else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if dim != codebook_dim else nn.Identity()
        self._vq_kwargs = {
            "dim": codebook_dim,
            "codebook_size": codebook_size,
            "codebook_dim": codebook_dim,
            "use_cosine_sim": ema,
            "decay": decay,
            "threshold_ema_dead_code": dead_code_threshold,
            # A learnable codebook gets our own commit and codebook terms (the library's commit loss would then
            # train the codebook too, with the two terms fused under one weight).
            "commitment_weight": 1.0 if ema else 0.0,
            "ema_update": ema,
            "learnable_codebook": not ema,
            "rotation_trick": False,
        }
        self.ema = ema
        self.vq = VectorQuantize(**self._vq_kwargs, sync_codebook=bool(sync_codebook))

    def configure_world_size(self, world_size: int) -> None:
        """Rebuild the wrapped module with `sync_codebook = world_size > 1`, keeping its state."""
        sync = world_size > 1
        if self.vq._codebook.use_ddp == sync:
            return
        state = self.vq.state_dict()
        trainable = {name: p.requires_grad for name, p in self.vq.named_parameters()}  # a frozen (EMA) copy stays so
        self.vq = VectorQuantize(**self._vq_kwargs, sync_codebook=sync).to(next(iter(state.values())).device)
        self.vq.load_state_dict(state)
        for name, param in self.vq.named_parameters():
            param.requires_grad_(trainable[name])

    def quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        low = self.project_in(z)  # (B, N, codebook_dim)
        low_codes, indices, _, breakdown = self.vq(low, mask=mask, return_loss_breakdown=True)
        indices = indices.long()
        if mask is not None:  # the library zeroes padded tokens and gives them index -1
            indices = indices.clamp_min(0)
            padded = self.vq.get_output_from_indices(indices).to(low_codes.dtype)
            low_codes = torch.where(mask[..., None], low_codes, padded)
        codes = self.project_out(low_codes)  # (B, N, D)
        if self.ema:
            losses = {"commit": breakdown.commitment}
        else:
            chosen = self.vq.get_codes_from_indices(indices)  # (B, N, codebook_dim), differentiable codebook
            losses = codebook_losses(low, chosen, mask)
        return QuantizerOutput(codes, indices, losses, index_stats(indices.detach(), mask, self.codebook_size))

    def lookup_codes(self, indices: Tensor) -> Tensor:
        """(...) int64 in [0, K), checked by `check_indices` (-1 would be the last code) -> codes (..., D)."""
        return self.project_out(self.vq.get_output_from_indices(indices).float())

    @classmethod
    def code_width(cls, **quantizer_args: Any) -> int:
        """`codebook_dim`: with dim == codebook_dim the latents enter unprojected."""
        return int(cls.complete_args(quantizer_args)["codebook_dim"])

    # -- latent perturbation (docs/definitions.md §3) ----------------------------------------------

    @property
    def symbol_codes(self) -> int:
        """K: a symbol is a whole token."""
        return int(self.codebook_size)

    def symbol_latents(self, latents: Tensor) -> Tensor:
        """The latent the codebook is compared with: l2norm(project_in(z)) for the EMA codebook (cosine
        similarity), project_in(z) itself for the learnable one (euclidean distance).

        Args:
            latents: (B, N, D) encoder outputs, before the quantizer.
        Returns:
            (B, N, 1, codebook_dim) float32.
        """
        low = self.project_in(latents.detach().float())
        return (F.normalize(low, dim=-1) if self.ema else low)[:, :, None]

    def nearest_codes(self, x: Tensor, count: int) -> Tensor:
        """The `count` codebook entries nearest to each latent by the quantizer's own rule: the largest cosine
        similarity (EMA codebook, stored l2-normalised by the library, so a dot product; in training as this
        step's EMA update left it), or the smallest euclidean distance (learnable codebook: the largest
        2<x, c> - |c|², the same order). Rows are searched in chunks to bound the memory.

        Args:
            x: (M, codebook_dim) symbol latents from `symbol_latents`.
            count: number of codes, <= K.
        Returns:
            (M, count) int64 codebook indices, nearest first.
        """
        codebook = self.vq.codebook.detach().float()  # (K, d)
        offset = 0.0 if self.ema else codebook.square().sum(1)  # (K,): |c|² for the euclidean order
        scale = 1.0 if self.ema else 2.0
        step = max(1, SEARCH_CHUNK_ELEMENTS // codebook.shape[0])
        return torch.cat([(scale * chunk @ codebook.T - offset).topk(count, dim=1).indices for chunk in x.split(step)])
