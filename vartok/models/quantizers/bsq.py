"""Binary spherical quantization (`bsq`, Zhao et al. 2024): u = v/‖v‖ on the unit sphere, q = sign(u)/√K.

Entropy definition (docs/definitions.md §1.1 with the "√K scaling"): the soft assignment uses the sphere rescaled to
radius √K, s = √K·u, whose components have the unit scale of ±1 bits: p(c) ∝ exp(2<s, c>/τ) over
c ∈ {-1, +1}^K, i.e. p(c) ∝ exp(2K<u, ĉ>/τ) over the actual codes ĉ = c/√K, and per bit
p(bit_i = 1) = σ(4√K·u_i/τ). Default τ = 1.0. BSQ-ViT's inv_temperature β (logit 4β·u_i/√K) is K/τ.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from vartok.models.quantizers import register_quantizer
from vartok.models.quantizers.lfq import LFQQuantizer


@register_quantizer("bsq")
class BSQQuantizer(LFQQuantizer):
    """Binary spherical quantizer: indices int64 (B, N) in [0, 2^bits), bit i = (u_i > 0), MSB first.

    Args:
        dim: width D of the latents z (B, N, D); Linear projections D -> bits -> D when D != bits.
        bits: code bits K (1..24, default 18); codebook_size = 2**K.
        temperature: τ of p(bit_i = 1) = σ(4√K·u_i/τ) (see the module docstring); default 1.0.
        gamma: losses["entropy"] = H_sample - gamma * H_codebook (nats).
        sync_entropy: all-reduce the entropy sums over DDP ranks in training mode.
    Codes: q = sign(u)/√K (unit norm), projected out when D != bits; commit = masked mean of (u - sg(q))²
    per element.
    """

    def __init__(
        self,
        dim: int,
        bits: int = 18,
        temperature: float = 1.0,
        gamma: float = 1.0,
        sync_entropy: bool = True,
    ) -> None:
        super().__init__(dim, bits, temperature=temperature, gamma=gamma, sync_entropy=sync_entropy)

    def binarize(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u = F.normalize(v, dim=-1)  # (B, N, K) on the unit sphere (0 stays 0)
        return u, self.bit_to_code(u > 0), math.sqrt(self.bits) * u

    def bit_to_code(self, bits: Tensor) -> Tensor:
        return (bits.float() * 2.0 - 1.0) / math.sqrt(self.bits)
