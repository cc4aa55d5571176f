"""Length policies (docs/definitions.md §2): how many of the N ordered tokens the decoder sees in a training step.

`tail_drop` (One-D-Piece) keeps the first k tokens and removes the rest: granularity "batch" truncates
the whole batch to one k (compute falls with k); "sample" draws k per image and excludes the dropped tail
from attention with a key-padding mask. `nested_dropout` (FlexTok) draws k per image and overwrites
positions >= k with one learned mask token (the sequence stays N long). Applied after the quantizer, so
the quantizer losses always see all N tokens.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Distribution = Literal["uniform", "pow2", "uniform_pow2", "list"]


def pow2_lengths(num_tokens: int) -> list[int]:
    """1, 2, 4, ... below N, then N itself (also when N is not a power of two)."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens!r}")
    return sorted({min(2**i, num_tokens) for i in range(num_tokens.bit_length() + 1)})


class LengthSample(NamedTuple):
    """Args:
    length: decoder sequence length (tokens kept in the tensor): k for batch tail drop, else N or max k.
    keep_len: (B,) int64 per-sample lengths, or None when every sample keeps `length` tokens.
    fill: "pad" (key-padding mask) or "mask_token" (learned token) for positions >= keep_len.
    """

    length: int
    keep_len: Tensor | None
    fill: str


@dataclass
class LengthPolicy:
    """Args:
    mode: "none" (always N), "tail_drop" or "nested_dropout".
    granularity: "batch" (one k per step; tail_drop only) or "sample" (one k per image).
    distribution: "uniform" on {1..N}, "pow2" uniform on {1,2,4,...,N}, "uniform_pow2" (uniform rounded up
        to a power of two, capped at N), or "list" (the values in `lengths` with `weights`).
    lengths, weights: the explicit list (integers in [1, N]) and its unnormalised weights (finite, >= 0,
        positive sum; empty = equal) for "list"; an error with any other distribution.
    p_full: probability that a draw is k = N regardless of the distribution.
    start_step: no dropping before this training step.
    """

    mode: Literal["none", "tail_drop", "nested_dropout"] = "none"
    granularity: Literal["batch", "sample"] = "batch"
    distribution: Distribution = "pow2"
    lengths: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    p_full: float = 0.0
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("none", "tail_drop", "nested_dropout"):
            raise ValueError(f"length_policy.mode must be none, tail_drop or nested_dropout, got {self.mode!r}")
        if self.granularity not in ("batch", "sample"):
            raise ValueError(f"length_policy.granularity must be batch or sample, got {self.granularity!r}")
        if self.mode == "nested_dropout" and self.granularity != "sample":
            raise ValueError("length_policy.granularity must be 'sample' for nested_dropout (one k per image)")
        if self.distribution not in ("uniform", "pow2", "uniform_pow2", "list"):
            raise ValueError(
                f"length_policy.distribution must be uniform, pow2, uniform_pow2 or list, got {self.distribution!r}"
            )
        if self.distribution == "list":
            self._check_list()
        elif self.lengths or self.weights:
            raise ValueError(
                f"length_policy.lengths / weights are only used with distribution 'list', got distribution "
                f"{self.distribution!r} with lengths {self.lengths} and weights {self.weights}"
            )
        if isinstance(self.p_full, bool) or not 0.0 <= self.p_full <= 1.0:
            raise ValueError(f"length_policy.p_full must be a probability in [0, 1], got {self.p_full!r}")
        if not _is_int(self.start_step) or self.start_step < 0:
            raise ValueError(f"length_policy.start_step must be an int >= 0, got {self.start_step!r}")

    def _check_list(self) -> None:
        """The explicit list: integer lengths >= 1 (<= N is checked in `support`, when N is known) and
        finite non-negative weights with a positive sum (empty weights = equal weights)."""
        if not self.lengths:
            raise ValueError(
                "length_policy.lengths must be a non-empty list of token counts in [1, num_tokens] when "
                "distribution is 'list', got []"
            )
        if any(not _is_int(k) or k < 1 for k in self.lengths):
            raise ValueError(f"length_policy.lengths must be integers in [1, num_tokens], got {self.lengths}")
        weights = self.weights or [1.0] * len(self.lengths)
        finite = all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights)
        if len(weights) != len(self.lengths) or not finite or any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(
                f"length_policy.weights must be {len(self.lengths)} finite numbers >= 0 (one per length) with a "
                f"sum > 0, got {self.weights}"
            )

    def support(self, num_tokens: int) -> tuple[Tensor, Tensor]:
        """The lengths that can be drawn and their probabilities (before p_full): (values, probs)."""
        n, cpu = num_tokens, torch.device("cpu")
        if self.distribution == "uniform":
            values = torch.arange(1, n + 1, device=cpu)
            probs = torch.full((n,), 1.0 / n, device=cpu)
        elif self.distribution == "pow2":
            values = torch.tensor(pow2_lengths(n), device=cpu)
            probs = torch.full((len(values),), 1.0 / len(values), device=cpu)
        elif self.distribution == "uniform_pow2":
            rounded = [min(2 ** math.ceil(math.log2(k)), n) for k in range(1, n + 1)]
            values = torch.tensor(sorted(set(rounded)), device=cpu)
            probs = torch.tensor([rounded.count(int(v)) / n for v in values], device=cpu)
        else:
            if max(self.lengths) > n:
                raise ValueError(f"length_policy.lengths must be in [1, {n}] (num_tokens), got {self.lengths}")
            weights = torch.tensor(self.weights or [1.0] * len(self.lengths), dtype=torch.float64, device=cpu)
            values = torch.tensor([int(k) for k in self.lengths], device=cpu)
            probs = (weights / weights.sum()).float()
        return values, probs

    def draw(self, count: int, num_tokens: int, generator: torch.Generator | None = None) -> Tensor:
        """`count` lengths (int64, on the CPU) from the distribution mixed with p_full at N.

        The draws are made on the CPU with a CPU generator whatever the training device, so that a run draws
        the same lengths on any accelerator; the caller moves them to its device."""
        values, probs = self.support(num_tokens)
        picks = values[torch.multinomial(probs, count, replacement=True, generator=generator)]
        full = torch.rand(count, generator=generator, device=values.device) < self.p_full
        return torch.where(full, torch.full_like(picks, num_tokens), picks)

    def sample(
        self, batch: int, num_tokens: int, step: int, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> LengthSample:
        """The decoder input for one training step; `keep_len` on `device` (drawn on the CPU, see `draw`)."""
        if self.mode == "none" or step < self.start_step:
            return LengthSample(num_tokens, None, "pad")
        if self.granularity == "batch":
            return LengthSample(int(self.draw(1, num_tokens, generator)[0]), None, "pad")
        keep_len = self.draw(batch, num_tokens, generator)  # (B,) on the CPU
        length = num_tokens if self.mode == "nested_dropout" else int(keep_len.max())  # a host value, no sync
        fill = "mask_token" if self.mode == "nested_dropout" else "pad"
        return LengthSample(length, keep_len.to(device, non_blocking=True), fill)


def _is_int(value: object) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_length(length: int | Tensor | None, num_tokens: int, batch: int) -> int | Tensor:
    """Validate a decode length: None (= N), an int in [1, N], or an integer (B,) tensor of such values.

    Args:
        length: the requested length(s); a 0-dim integer tensor counts as an int.
        num_tokens: N.
        batch: B, the number of images being decoded.
    Returns:
        An int, or the (B,) int64 tensor of per-sample lengths.
    """
    if length is None:
        return num_tokens
    allowed = f"an int in [1, {num_tokens}] or an integer tensor of shape ({batch},) with values in [1, {num_tokens}]"
    if isinstance(length, Tensor):
        if length.dtype.is_floating_point or length.dtype.is_complex or length.dtype == torch.bool:
            raise ValueError(f"length must be {allowed}, got a {length.dtype} tensor")
        if length.dim() == 0:
            length = int(length)
        elif length.shape != (batch,):
            raise ValueError(f"length must be {allowed}, got a tensor of shape {tuple(length.shape)}")
        else:
            if batch and (int(length.min()) < 1 or int(length.max()) > num_tokens):
                raise ValueError(f"length must be {allowed}, got values {length.tolist()}")
            return length.long()
    if not _is_int(length) or not 1 <= length <= num_tokens:
        raise ValueError(f"length must be {allowed}, got {length!r}")
    return int(length)
