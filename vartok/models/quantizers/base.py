"""The one quantizer interface of docs/definitions.md §1.

Every quantizer maps latents z (B, N, D) to straight-through codes of the same shape and integer
indices, and reports UNWEIGHTED losses and detached statistics. Weights live in the training module.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

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
    """Base class: subclasses set `codebook_size` (python int) and implement `quantize`, `lookup_codes`,
    the latent perturbation's three (`symbol_codes`, `symbol_latents`, `nearest_codes`, docs/definitions.md
    §3) and the classmethod `code_width`. `indices_to_codes` checks the indices once (`check_indices`, against
    `symbol_codes` and `index_shape`) for every quantizer, then calls `lookup_codes`. `forward` runs `quantize` in float32 with autocast disabled,
    whatever the precision. The constructor's keyword defaults are the quantizer's defaults (`default_args`).

    A symbol is what the latent perturbation replaces: a token, or one group of a grouped token.
    """

    codebook_size: int
    dim: int
    registry_name: str | None = None  # set by `register_quantizer`

    @property
    def bits_per_token(self) -> float:
        return math.log2(self.codebook_size)

    @property
    def index_shape(self) -> tuple[int, ...]:
        """Trailing shape of one token's index: () or (G,) for grouped codes."""
        return ()

    # -- defaults and width -----------------------------------------------------------------------

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        """The constructor's keyword defaults, every keyword but `dim`; tuples become lists (JSON-able)."""
        params = inspect.signature(cls).parameters.values()
        return {p.name: list(p.default) if isinstance(p.default, tuple) else p.default
                for p in params if p.name != "dim" and p.default is not inspect.Parameter.empty}

    @classmethod
    def complete_args(cls, quantizer_args: dict[str, Any]) -> dict[str, Any]:
        """`quantizer_args` over the constructor's defaults.

        Args:
            quantizer_args: keywords of the constructor (without `dim`); an unknown key is one clear error.
        """
        defaults = cls.default_args()
        for key, value in quantizer_args.items():
            if key not in defaults:
                raise ValueError(
                    f"quantizer_args has the unknown key {key!r} (value {value!r}) for quantizer "
                    f"{cls.registry_name or cls.__name__!r}; allowed keys: {', '.join(defaults)}"
                )
        return {**defaults, **quantizer_args}

    @classmethod
    def code_width(cls, **quantizer_args: Any) -> int:
        """Natural width of one code (no projection inside the quantizer).

        Args:
            quantizer_args: constructor keywords (without `dim`) over the defaults; an unknown key is an error.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement the classmethod code_width")

    # -- latent perturbation (docs/definitions.md §3) ----------------------------------------------

    @property
    def symbol_codes(self) -> int:
        """Number of codes one symbol can take: an index (of a token, or of one group) lies in [0, symbol_codes)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement symbol_codes (codes per symbol)")

    def symbol_latents(self, latents: Tensor) -> Tensor:
        """The continuous latent of every symbol, in the space where the quantizer compares it with codes.

        Args:
            latents: (B, N, D) encoder outputs, before the quantizer.
        Returns:
            (B, N, G, C) float32, G symbols of C channels per token.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement symbol_latents")

    def nearest_codes(self, x: Tensor, count: int) -> Tensor:
        """The `count` symbol codes nearest to each symbol latent by the quantizer's own distance.

        Args:
            x: (M, C) symbol latents, rows of `symbol_latents`.
            count: number of codes, <= `symbol_codes`.
        Returns:
            (M, count) int64 symbol indices, nearest first.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement nearest_codes")

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"quantizer input z must be (B, N, {self.dim}), got {tuple(z.shape)}")
        if mask is not None and (mask.shape != z.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(f"mask must be bool (B, N) = {tuple(z.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
        with no_autocast(z.device):
            return self.quantize(z.float(), mask)

    def quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement quantize")

    # -- decoding indices -------------------------------------------------------------------------

    @property
    def symbol_codes_text(self) -> str:
        """How `check_indices` writes the number of codes per symbol (binary quantizers say 2^k)."""
        return str(self.symbol_codes)

    def check_indices(self, indices: Tensor) -> None:
        """The one check of indices to decode: an integer tensor (..., *index_shape) with values in
        [0, symbol_codes - 1] (per group for grouped codes). One min/max reduction; a ValueError naming the
        first bad value, its position, the range found and the range allowed otherwise.

        Args:
            indices: (B, N) or (B, N, G) integer indices, as `forward` returns them.
        """
        if not isinstance(indices, Tensor):
            raise TypeError(f"indices must be an integer torch.Tensor, got {type(indices).__name__}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(
                f"indices must be an integer tensor (int64, as encode returns them), got dtype {indices.dtype}; "
                f"do not pass codes or normalised values"
            )
        trailing = self.index_shape
        if indices.dim() < 1 + len(trailing) or tuple(indices.shape[indices.dim() - len(trailing) :]) != trailing:
            raise ValueError(
                f"indices must have trailing shape {trailing} (one index per group of this "
                f"{self.registry_name or type(self).__name__} quantizer), got shape {tuple(indices.shape)}"
            )
        if not indices.numel():
            return
        low, high = (int(v) for v in torch.aminmax(indices))  # one reduction, one host sync
        count = self.symbol_codes
        if low >= 0 and high < count:
            return
        where = tuple(((indices < 0) | (indices >= count)).nonzero()[0].tolist())  # only on the error path
        per = " per group" if trailing else ""
        cause = (
            "negative values are not codes (a prefix needs no padding: pass the first k tokens as they are)"
            if low < 0 else "were they made by a tokenizer with more codes?"
        )
        raise ValueError(
            f"indices must lie in [0, {self.symbol_codes_text}) = [0, {count - 1}]{per}, the codes per symbol of "
            f"this {self.registry_name or type(self).__name__} quantizer, but index {int(indices[where])} is at "
            f"position {where} (values found in [{low}, {high}]); {cause}"
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Checked decoding: `check_indices`, then `lookup_codes`.

        Args:
            indices: (..., *index_shape) integer indices in [0, symbol_codes - 1].
        Returns:
            (..., D) codes, exactly those `forward` returns for these indices.
        """
        self.check_indices(indices)
        return self.lookup_codes(indices)

    def lookup_codes(self, indices: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The codes of indices already checked by `check_indices` (no check here: out-of-range values wrap
        or index past the codebook)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement lookup_codes")


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` (B, N, ...) over real tokens only; mask (B, N) bool, True = real."""
    if mask is None:
        return values.mean()
    per_token = values.reshape(*mask.shape, -1).mean(-1)  # (B, N)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


def codebook_losses(latents: Tensor, chosen: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
    """VQ-VAE's two terms over real tokens, on (B, N, D) latents and their chosen codes: "commit" pulls the
    latents toward their codes (codes held fixed), "codebook" the codes toward their latents (latents fixed)."""
    return {"commit": masked_mean((latents - chosen.detach()) ** 2, mask),
            "codebook": masked_mean((chosen - latents.detach()) ** 2, mask)}


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
