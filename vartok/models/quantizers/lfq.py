"""Lookup-free quantization (`lfq`, MAGVIT-v2): q_i = +1 if v_i > 0 else -1, one index of K bits, MSB first.

The exact codebook entropy over all 2^K codes uses the two-halves factorisation of `binary.py`
(memory O(T·2^{K/2} + 2^K)), so K is limited to 24 bits; wider codes need `gq`.
"""

from __future__ import annotations

from torch import Tensor

from vartok.models.quantizers import register_quantizer
from vartok.models.quantizers.gq import GQQuantizer


@register_quantizer("lfq")
class LFQQuantizer(GQQuantizer):
    """Binary lookup-free quantizer: the one-group case of `gq`, indices int64 (B, N) in [0, 2^bits).

    Args:
        dim: width D of the latents z (B, N, D); Linear projections D -> bits -> D when D != bits.
        bits: code bits K (1..24, default 18 as MAGVIT-v2); codebook_size = 2**K.
        temperature: τ of p(c) ∝ exp(2<v, c>/τ), p(bit_i = 1) = σ(4 v_i/τ); default 0.01 for latents of unit
            scale (vector-quantize-pytorch LFQ's default inv_temperature = 100 is the same τ).
        gamma: losses["entropy"] = H_sample - gamma * H_codebook (nats).
        sync_entropy: all-reduce the entropy sums over DDP ranks in training mode.
    Losses: commit (masked mean of (v - sg(q))² per element) and entropy. Stats: usage (distinct codes seen /
    2^K), perplexity = exp(H_codebook), entropy_sample, entropy_codebook.
    """

    def __init__(
        self,
        dim: int,
        bits: int = 18,
        temperature: float = 0.01,
        gamma: float = 1.0,
        sync_entropy: bool = True,
    ) -> None:
        super().__init__(dim, bits, groups=1, temperature=temperature, gamma=gamma, sync_entropy=sync_entropy)

    @property
    def index_shape(self) -> tuple[int, ...]:
        return ()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bits={self.bits}, temperature={self.temperature}, gamma={self.gamma}"

    def format_indices(self, indices: Tensor) -> Tensor:
        return indices.squeeze(-1)  # (B, N, 1) -> (B, N)

    def lookup_codes(self, indices: Tensor) -> Tensor:
        """Exact inverse of `forward`'s indices: (...) int64 in [0, 2^bits) -> codes (..., D)."""
        return super().lookup_codes(indices.unsqueeze(-1))
