"""Grouped lookup-free quantization (`gq`, WeTok-style): K sign bits split into G groups of k = K/G bits.

This module holds the general binary quantizer; `lfq` is the one-group case and `bsq` adds the unit-sphere
normalisation. The entropy math lives in `binary.py` (docs/definitions.md §1.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from vartok.models.quantizers import register_quantizer
from vartok.models.quantizers.base import Quantizer, QuantizerOutput, check_positive, masked_mean
from vartok.models.quantizers.binary import (
    bits_to_indices,
    check_finite,
    check_group_bits,
    entropy_terms,
    group_usage,
    indices_to_bits,
    position_usage,
    scrub_padding,
)
from vartok.models.quantizers.neighbours import smallest_sums


@register_quantizer("gq")
class GQQuantizer(Quantizer):
    """Binary lookup-free quantizer with G independent groups: q_i = +1 if v_i > 0 else -1, where v is
    z (or project_in(z) when dim != bits); each group of k = bits/groups channels is one index, MSB first.

    Args:
        dim: width D of the latents z (B, N, D); Linear projections D -> bits -> D are added when D != bits.
        bits: total bits K per token (default 32 = 4 groups × 8 bits); codebook_size = 2**K (a python int, may exceed 2**63).
        groups: number of groups G (bits % groups == 0, k = bits/groups <= 24 for the exact entropy); each
            group is one symbol of 2^k codes to the latent perturbation.
        temperature: τ of the soft assignment p(c) ∝ exp(2<v, c>/τ), i.e. p(bit_i = 1) = σ(4 v_i/τ)
            (same definition as vector-quantize-pytorch LFQ with inv_temperature = 1/τ). Default 0.01
            suits un-normalised latents of unit scale.
        gamma: weight of the codebook term: losses["entropy"] = H_sample - gamma * H_codebook.
        pool_groups: False: H_codebook is the MEAN of the G group entropies (a weight keeps its meaning
            when G changes); True: the entropy of the group-pooled p̄ (WeTok's released code).
        sync_entropy: all-reduce the entropy sums over DDP ranks in training mode (see binary.py for the
            gradient convention).
    Outputs: indices int64 (B, N, G) in [0, 2^k); losses {"commit", "entropy"} where commit is the masked
    mean of (v - sg(q))² per element and H_sample = token mean of (mean over groups of Σ_bits H_b);
    stats {"usage", "usage_group{g}", "perplexity", "entropy_sample", "entropy_codebook"}, perplexity =
    exp(H_codebook) (a geometric mean over groups unless pooled), usage = distinct group codes seen / 2^k
    averaged over groups (per batch and per rank).
    """

    def __init__(
        self,
        dim: int,
        bits: int = 32,
        groups: int = 4,
        temperature: float = 0.01,
        gamma: float = 1.0,
        pool_groups: bool = False,
        sync_entropy: bool = True,
    ) -> None:
        super().__init__()
        self.group_bits = check_group_bits(bits, groups)
        check_positive("temperature", temperature)
        if not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite float, got {gamma!r}")
        self.dim, self.bits, self.groups = dim, bits, groups
        self.temperature, self.gamma = float(temperature), float(gamma)
        self.pool_groups, self.sync_entropy = bool(pool_groups), bool(sync_entropy)
        self.codebook_size = 2**bits
        self.has_projection = dim != bits
        self.project_in = nn.Linear(dim, bits) if self.has_projection else nn.Identity()
        self.project_out = nn.Linear(bits, dim) if self.has_projection else nn.Identity()

    @property
    def index_shape(self) -> tuple[int, ...]:
        return (self.groups,)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, bits={self.bits}, groups={self.groups}, temperature={self.temperature}, "
            f"gamma={self.gamma}, pool_groups={self.pool_groups}"
        )

    # -- hooks that bsq overrides -----------------------------------------------------------------

    def binarize(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split the projected latents into what the code is compared with and the code itself.

        Args:
            v: (B, N, K) projected latents.
        Returns:
            x: (B, N, K) the continuous latent the straight-through code and the commitment use.
            q: (B, N, K) the code, bit_to_code(x > 0).
            scaled: (B, N, K) the vector whose sign is the bit and whose 4·scaled/τ is the bit logit.
        """
        return v, self.bit_to_code(v > 0), v

    def bit_to_code(self, bits: Tensor) -> Tensor:
        """bool bits (..., K) to code values (..., K) in the quantizer space: ±1."""
        return bits.float() * 2.0 - 1.0

    # -- interface --------------------------------------------------------------------------------

    def quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        batch, length, _ = z.shape
        z = scrub_padding(z, mask)  # padded tokens may hold anything, NaN included
        check_finite("z", z, mask)
        v = self.project_in(z)  # (B, N, K)
        if self.has_projection:
            check_finite("project_in(z)", v, mask)
            v = scrub_padding(v, mask)
        x, q, scaled = self.binarize(v)  # (B, N, K) each
        bits = (scaled > 0).reshape(batch, length, self.groups, self.group_bits)  # (B, N, G, k)
        indices = bits_to_indices(bits)  # (B, N, G)
        codes = self.project_out(q + (x - x.detach()))  # value exactly q, gradient identity to x

        if mask is not None:  # losses see padded tokens as zeros: any padded value leaves them unchanged
            keep = mask[..., None]
            x, q, scaled = (torch.where(keep, t, 0.0) for t in (x, q, scaled))
        logits = (4.0 / self.temperature) * scaled.reshape(batch, length, self.groups, self.group_bits)
        sync = self.sync_entropy and self.training
        h_sample, h_codebook, _ = entropy_terms(logits, mask, self.pool_groups, sync)
        losses = {"commit": masked_mean((x - q) ** 2, mask), "entropy": h_sample - self.gamma * h_codebook}
        return QuantizerOutput(
            codes, self.format_indices(indices), losses, self.stats(indices, mask, h_sample, h_codebook)
        )

    def stats(
        self, indices: Tensor, mask: Tensor | None, h_sample: Tensor, h_codebook: Tensor
    ) -> dict[str, Tensor]:
        """Detached statistics; indices (B, N, G)."""
        usage = group_usage(indices, mask, self.group_bits)  # (G,)
        out = {
            "usage": usage.mean(),
            "perplexity": h_codebook.detach().exp(),
            "entropy_sample": h_sample.detach(),
            "entropy_codebook": h_codebook.detach(),
        }
        if self.groups > 1:
            out.update({f"usage_group{g}": usage[g] for g in range(self.groups)})
        return out

    def format_indices(self, indices: Tensor) -> Tensor:
        """(B, N, G) group indices to the public index layout (lfq drops G)."""
        return indices

    def lookup_codes(self, indices: Tensor) -> Tensor:
        """Exact inverse of `forward`'s indices: (..., G) int64 in [0, 2^k), checked by `check_indices`, ->
        codes (..., D) as `forward` returns them."""
        bits = indices_to_bits(indices, self.group_bits)  # (..., G, k)
        code = self.bit_to_code(bits.flatten(-2))  # (..., K)
        return self.project_out(code)

    def position_usage(self, indices: Tensor, mask: Tensor | None = None) -> Tensor:
        """Distinct codes (whole G-tuples) per token position over real tokens: (B, N[, G]) -> (N,) float."""
        return position_usage(indices, mask)

    @classmethod
    def code_width(cls, **quantizer_args: Any) -> int:
        """`bits`: with dim == bits the latents enter unprojected."""
        return int(cls.complete_args(quantizer_args)["bits"])

    # -- latent perturbation (docs/definitions.md §3) ----------------------------------------------

    @property
    def symbol_codes(self) -> int:
        """2^k, k = bits/groups: a symbol is one group of a token."""
        return 2**self.group_bits

    @property
    def symbol_codes_text(self) -> str:
        return f"2^{self.group_bits}"

    def symbol_latents(self, latents: Tensor) -> Tensor:
        """x = project_in(z), or for bsq its unit-sphere normalisation u: what the code is compared with.

        Args:
            latents: (B, N, D) encoder outputs, before the quantizer.
        Returns:
            (B, N, G, k) float32, k = bits/groups.
        """
        batch, length = latents.shape[:2]
        x, _, _ = self.binarize(self.project_in(latents.detach().float()))  # (B, N, K)
        return x.reshape(batch, length, self.groups, self.group_bits)

    def nearest_codes(self, x: Tensor, count: int) -> Tensor:
        """The `count` cheapest bit-flip sets of each symbol, multi-bit flips included (count may exceed k).

        A neighbour is a set S of flipped bits of the own code, cost Σ_{i∈S} 2|x_i|: each flipped bit adds
        4|x_i| to ‖x − c‖² (bsq: 4|u_i|/√K), so this is the Euclidean order. Per channel the own bit costs 0
        and the other 2|x_i|, a sum over channels searched exactly by `neighbours.smallest_sums`.

        Args:
            x: (M, k) symbol latents from `symbol_latents`.
            count: number of codes, <= 2^k.
        Returns:
            (M, count) int64 group indices (MSB first), nearest first.
        """
        k = x.shape[1]
        own_bit = (x > 0).long()  # (M, k)
        flip = 2 * x.abs()
        costs = torch.stack([flip * own_bit, flip * (1 - own_bit)], dim=-1)  # (M, k, 2): cost of bit 0, bit 1
        weights = 2 ** torch.arange(k - 1, -1, -1, device=x.device)  # MSB first
        values = torch.stack([torch.zeros_like(weights), weights], dim=-1)  # (k, 2)
        return smallest_sums(costs, values, count)
