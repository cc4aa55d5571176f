"""Latent perturbation P(α, δ) (docs/definitions.md §3): one operator for training (the decoder sees code errors) and pFID.

For every symbol independently, with probability α, its index is replaced by one drawn uniformly from the δ
codes nearest to the symbol's continuous latent, EXCLUDING its own code, so α is the exact symbol-error rate.
A symbol is a token, or one group of a `gq` token (each group is one symbol to a generator).

"Nearest" is the quantizer's own distance, computed by the quantizer itself (`Quantizer.symbol_latents`,
`Quantizer.nearest_codes`; each quantizer's docstrings say which distance): the continuous latent is taken
after the quantizer's input projection, and the δ+1 nearest codes are searched exactly (for the separable
fsq and binary codebooks without enumerating them, `vartok.models.quantizers.neighbours`), so δ may exceed
the number of bits of a binary code. This module holds only the operator and touches no concrete quantizer.

Training (the Tokenizer hook): decoder codes are q' + (q − sg(q)) with q the clean straight-through codes: the
value is exactly the perturbed code q' and the gradient is the clean codes' (so z + sg(q' − z) on the encoder
path). The quantizer's losses were already taken on the clean codes and are not touched. Images are chosen by
per-sample Bernoulli(β); α and δ follow a step schedule; the random draws come from a torch.Generator seeded
with (seed, step, rank), so a resumed run draws the same perturbations.

Differences from RobusTok's released `add_perturbation`: it draws among the δ nearest INCLUDING the own code
(error rate α_r(δ−1)/δ for its nominal α_r; here α is the error rate, α = α_r(δ−1)/δ), perturbs the first
floor(β·B) images of each per-GPU batch (none when β·B < 1; here each image by Bernoulli(β)), supports VQ
only (here vq, fsq, lfq, bsq, gq) and has no schedule or seeding.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vartok.models.precision import no_autocast
from vartok.models.quantizers.base import Quantizer, QuantizerOutput
from vartok.tokenizers.ramp import Ramp
from vartok.tokenizers.randomness import keyed_generator


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_probability(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value <= 1.0


# ----------------------------------------------------------------------------------------------- config


@dataclass
class PerturbationConfig:
    """Settings of the training perturbation (docs/definitions.md §3).

    Args:
        alpha: symbol-error rate α in [0, 1] (at and before `start_step` when `alpha_end` is set).
        delta: neighbourhood size δ >= 2: a replacement is one of the δ nearest codes other than the own.
        beta: probability in [0, 1] that an image of the batch is perturbed at all (per sample).
        alpha_end, delta_end: values reached at `end_step` by a linear ramp from `start_step`; None = constant.
            δ is rounded to the nearest integer along the ramp.
        start_step, end_step: the ramp's steps, 0 <= start_step <= end_step (training steps).
        seed: mixed with (step, rank) into the seed of each step's generator.
    Upper bounds of δ (codebook size − 1 per symbol) are checked against the quantizer by LatentPerturbation.
    """

    alpha: float = 0.1
    delta: int = 16
    beta: float = 1.0
    alpha_end: float | None = None
    delta_end: int | None = None
    start_step: int = 0
    end_step: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "alpha_end", "beta"):
            value = getattr(self, name)
            if not (value is None and name == "alpha_end") and not _is_probability(value):
                raise ValueError(f"perturbation.{name} must be a probability in [0, 1], got {value!r}")
        for name in ("delta", "delta_end"):
            value = getattr(self, name)
            if not (value is None and name == "delta_end") and (not _is_int(value) or value < 2):
                raise ValueError(
                    f"perturbation.{name} must be an int >= 2 (the number of codes a replacement is drawn "
                    f"from, the own code excluded), got {value!r}"
                )
        for name in ("start_step", "end_step", "seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"perturbation.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.end_step < self.start_step:
            raise ValueError(
                f"perturbation.end_step={self.end_step} precedes perturbation.start_step={self.start_step}; "
                f"the ramp runs from start_step to end_step, so set end_step >= start_step"
            )

    @property
    def alpha_schedule(self) -> Ramp:
        end = self.alpha if self.alpha_end is None else self.alpha_end
        return Ramp(self.alpha, end, self.start_step, self.end_step)

    @property
    def delta_schedule(self) -> Ramp:
        end = self.delta if self.delta_end is None else self.delta_end
        return Ramp(self.delta, end, self.start_step, self.end_step)

    def alpha_at(self, step: int) -> float:
        """α at training step `step`."""
        return self.alpha_schedule(step)

    def delta_at(self, step: int) -> int:
        """δ at training step `step`, rounded half up to an integer."""
        return math.floor(self.delta_schedule(step) + 0.5)


# ------------------------------------------------------------------------------------ neighbourhood


def check_delta(quantizer: Quantizer, delta: int, name: str = "delta") -> None:
    """One clear error naming the argument `name` unless 2 <= delta <= (codes per symbol) − 1.

    Args:
        quantizer: its `symbol_codes` bound δ; grouped codes (index_shape (G,), G > 1) count codes per group.
        delta: the neighbourhood size to check.
        name: the argument's name as the user wrote it, for the message.
    """
    size = quantizer.symbol_codes
    if not _is_int(delta) or not 2 <= delta <= size - 1:
        per = " per group" if math.prod(quantizer.index_shape) > 1 else ""
        raise ValueError(
            f"{name} must be an int in [2, {size - 1}]: the quantizer has {size} codes{per}, and a "
            f"replacement is drawn from the δ nearest codes other than the own, got {delta!r}"
        )


def neighbours_excluding_own(candidates: Tensor, own: Tensor) -> Tensor:
    """Drop the own code from the δ+1 nearest (or the farthest, if the own code is not among them).

    Args:
        candidates: (M, δ+1) nearest codes, nearest first; own: (M,) own codes.
    Returns:
        (M, δ) the δ nearest codes other than the own, nearest first.
    """
    is_own = (candidates == own[:, None]).to(torch.int8)
    order = torch.sort(is_own, dim=1, stable=True).indices  # own code (if present) moves to the end
    return candidates.gather(1, order)[:, :-1]


# --------------------------------------------------------------------------------------- operator


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """CPU generator of one training step on one rank: the same (seed, step, rank) gives the same draws."""
    return keyed_generator("perturb", seed, step, rank)


@torch.no_grad()
def perturb_indices(
    quantizer: Quantizer,
    latents: Tensor,
    indices: Tensor,
    alpha: float,
    delta: int,
    generator: torch.Generator,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """P(α, δ) on a batch: replace symbols by one of their δ nearest other codes.

    Args:
        quantizer: the quantizer that produced `indices`; its `symbol_latents` and `nearest_codes` define
            "nearest".
        latents: (B, N, D) encoder outputs (before the quantizer).
        indices: int64 (B, N) or (B, N, G), the own codes.
        alpha: probability that a symbol of a chosen image is replaced.
        delta: neighbourhood size, 2 <= δ <= codes per symbol − 1.
        generator: CPU generator; draws (in this order) B uniforms for β, B·N·G uniforms for α and B·N·G
            integers in [0, δ), whatever α and β, so the stream does not depend on the outcome.
        beta: probability that an image is chosen.
    Returns:
        new_indices: same shape and dtype as `indices`.
        replaced: bool (B, N, G) on the CPU, True where the symbol was replaced (its index differs).
    """
    check_delta(quantizer, delta)
    batch, length = indices.shape[:2]
    own = indices.reshape(batch, length, -1)  # (B, N, G)
    cpu = generator.device  # draws on the generator's device (the CPU), the same on any accelerator
    chosen = torch.rand(batch, generator=generator, device=cpu) < beta  # (B,)
    hit = torch.rand(own.shape, generator=generator, device=cpu) < alpha  # (B, N, G)
    choice = torch.randint(0, delta, own.shape, generator=generator, device=cpu)  # (B, N, G)
    replaced = hit & chosen[:, None, None]
    if not bool(replaced.any()):
        return indices.clone(), replaced
    where = replaced.nonzero(as_tuple=True)  # CPU index tensors
    device_where = tuple(w.to(indices.device) for w in where)
    with no_autocast(latents.device):
        x = quantizer.symbol_latents(latents)[device_where]  # (M, C)
        old = own[device_where]  # (M,)
        others = neighbours_excluding_own(quantizer.nearest_codes(x, delta + 1), old)  # (M, δ)
        new = others.gather(1, choice[where].to(others.device)[:, None])[:, 0]
    out = own.clone()
    out[device_where] = new.to(out.dtype)
    return out.reshape(indices.shape), replaced


def perturbed_codes(quantizer: Quantizer, codes: Tensor, indices: Tensor, replaced: Tensor) -> Tensor:
    """Decoder codes with the straight-through form: q' + (q − sg(q)) where a token has a replaced symbol.

    Args:
        codes: (B, N, D) clean straight-through codes q from the quantizer.
        indices: (B, N[, G]) perturbed indices; replaced: bool (B, N, G).
    Returns:
        (B, N, D): exactly the perturbed code's value at replaced tokens and `codes` elsewhere; the gradient
        w.r.t. `codes` is the identity everywhere (so the encoder is trained as with clean codes).
    """
    with no_autocast(codes.device):
        new = quantizer.lookup_codes(indices).detach().to(codes.dtype)  # (B, N, D)
    token = replaced.any(-1).to(codes.device)[..., None]  # (B, N, 1)
    return torch.where(token, new + (codes - codes.detach()), codes)


class LatentPerturbation:
    """The Tokenizer's training hook: `(codes, latents, quantizer_output, step) -> decoder codes`.

    Not an nn.Module on purpose: assigned to `tokenizer.perturbation`, it must not add the quantizer's
    parameters a second time to the tokenizer's state dict.

    Args:
        config: PerturbationConfig (α, δ, β, schedules, seed).
        quantizer: the tokenizer's quantizer (its δ bounds are checked here).
        rank: this process's rank, mixed into the seed (settable attribute; set it in `setup`).
    Attributes:
        last_error_rate: float, fraction of the batch's symbols replaced at the last call (0 before any).
        last_alpha, last_delta: the scheduled α and δ of the last call.
    """

    def __init__(self, config: PerturbationConfig, quantizer: Quantizer, rank: int = 0) -> None:
        if not isinstance(config, PerturbationConfig):
            raise TypeError(f"config must be a PerturbationConfig, got {type(config).__name__}")
        check_delta(quantizer, config.delta, "perturbation.delta")
        if config.delta_end is not None:
            check_delta(quantizer, config.delta_end, "perturbation.delta_end")
        self.config, self.quantizer, self.rank = config, quantizer, rank
        self.last_error_rate, self.last_alpha, self.last_delta = 0.0, 0.0, config.delta

    def __call__(self, codes: Tensor, latents: Tensor, quantizer_output: QuantizerOutput, step: int) -> Tensor:
        """codes, latents (B, N, D); quantizer_output.indices (B, N[, G]) -> decoder codes (B, N, D)."""
        alpha, delta = self.config.alpha_at(step), self.config.delta_at(step)
        self.last_alpha, self.last_delta = alpha, delta
        generator = step_generator(self.config.seed, step, int(self.rank))
        indices, replaced = perturb_indices(
            self.quantizer, latents, quantizer_output.indices, alpha, delta, generator, self.config.beta
        )
        self.last_error_rate = float(replaced.float().mean()) if replaced.numel() else 0.0
        if not bool(replaced.any()):
            return codes
        return perturbed_codes(self.quantizer, codes, indices, replaced)

    def __repr__(self) -> str:
        return f"LatentPerturbation({self.config}, rank={self.rank})"


def pfid_perturbation(tokenizer: Any, alpha: float, delta: int) -> Callable[..., Tensor]:
    """The pFID variant P(α, δ) with β = 1 for `vartok.metrics.evaluate(perturbations=...)` (docs/definitions.md §4).

    Args:
        tokenizer: a vartok Tokenizer (its `quantizer` is read at call time, so moving it later is fine).
        alpha: symbol-error rate in [0, 1]; α = 0 returns the indices unchanged (pFID = rFID exactly).
        delta: neighbourhood size in [2, codes per symbol − 1].
    Returns:
        fn(indices, seed, encoding) -> perturbed indices (same shape): the evaluation loop passes the
        encoder's output as `encoding` (its `latents` (B, N, D)); the draws depend only on `seed`.
    """
    if not _is_probability(alpha):
        raise ValueError(f"pfid alpha (vartok-eval --pfid-alpha) must be a probability in [0, 1], got {alpha!r}")
    quantizer = getattr(tokenizer, "quantizer", None)
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"pfid_perturbation needs a vartok Tokenizer (with a quantizer), got {type(tokenizer).__name__}")
    check_delta(quantizer, delta, "pfid delta (vartok-eval --pfid-delta)")

    def perturb(indices: Tensor, seed: int, encoding: Any = None) -> Tensor:
        latents = getattr(encoding, "latents", None)
        if latents is None:
            raise ValueError(
                "the pFID perturbation needs the encoder output: call it with encoding=tokenizer.encode(images) "
                "(vartok.metrics.evaluate does)"
            )
        generator = keyed_generator(int(seed))
        return perturb_indices(tokenizer.quantizer, latents, indices, float(alpha), delta, generator)[0]

    return perturb

