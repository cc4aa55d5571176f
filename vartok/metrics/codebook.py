"""Codebook usage over a whole evaluation set: usage, perplexity, and usage per token position.

Indices are (B, N) or, for grouped codes, (B, N, G) with G symbols of S = codebook_size^(1/G) values each;
grouped figures are averaged over groups. Counts are torchmetrics sum states and per-position presence a
max state, so under DDP the figures are those of the whole set. Entropies are in nats, perplexity =
exp(entropy of the empirical code distribution).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

MAX_COUNTED_CODES = 1 << 24  # per group: a float64 histogram of at most 128 MiB
MAX_PRESENCE_CELLS = 1 << 26  # N·G·S presence bytes for usage per position


def group_alphabet(codebook_size: int, groups: int) -> int:
    """S such that S**groups == codebook_size."""
    size = round(2 ** (math.log2(int(codebook_size)) / groups))
    if size**groups != int(codebook_size):
        raise ValueError(
            f"codebook_size {codebook_size} is not an exact power {groups} of an integer; grouped indices "
            f"(B, N, {groups}) need codebook_size = S**{groups}."
        )
    return size


class CodebookStats(Metric):
    """Usage of the codebook by the indices of a set of images.

    Args:
        codebook_size: total number of codes (python int).
        num_tokens: N.
        groups: G (1 for (B, N) indices).
    """

    full_state_update = False

    def __init__(self, codebook_size: int, num_tokens: int, groups: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.codebook_size, self.num_tokens, self.groups = int(codebook_size), int(num_tokens), int(groups)
        self.alphabet = group_alphabet(codebook_size, groups) if groups > 1 else self.codebook_size
        self.countable = self.alphabet <= MAX_COUNTED_CODES
        self.per_position = self.countable and num_tokens * groups * self.alphabet <= MAX_PRESENCE_CELLS
        counts_shape = (groups, self.alphabet) if self.countable else (0,)
        presence_shape = (num_tokens, groups, self.alphabet) if self.per_position else (0,)
        self.add_state("counts", torch.zeros(counts_shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("presence", torch.zeros(presence_shape, dtype=torch.uint8), dist_reduce_fx="max")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        """Add the indices of valid images: int64 (B, N) or (B, N, G)."""
        indices = indices if indices.dim() == 3 else indices.unsqueeze(-1)  # (B, N, G)
        if indices.shape[1:] != (self.num_tokens, self.groups):
            raise ValueError(
                f"indices must be (B, {self.num_tokens}) or (B, {self.num_tokens}, {self.groups}), "
                f"got {tuple(indices.shape)}."
            )
        if indices.shape[0] == 0:
            return
        self.tokens += indices.shape[0] * self.num_tokens
        if not self.countable:
            return
        offsets = torch.arange(self.groups, device=indices.device) * self.alphabet  # (G,)
        flat = (indices + offsets).reshape(-1)
        counts = torch.bincount(flat, minlength=self.groups * self.alphabet)
        self.counts += counts.reshape(self.groups, self.alphabet).to(self.counts)
        if self.per_position:
            cells = indices + offsets + torch.arange(self.num_tokens, device=indices.device)[:, None] * (
                self.groups * self.alphabet
            )  # (B, N, G) flat ids in the (N, G, S) grid
            self.presence.view(-1)[cells.reshape(-1).to(self.presence.device)] = 1

    def compute(self) -> dict:
        """{"codebook_size", "groups", "tokens", "distinct_codes", "usage", "entropy", "perplexity",
        "usage_per_position", "distinct_per_position"} (per-group figures averaged over groups)."""
        out: dict = {"codebook_size": self.codebook_size, "groups": self.groups, "tokens": int(self.tokens)}
        if not self.countable:
            out["note"] = f"a group alphabet of {self.alphabet} codes is too large to count"
            return out
        counts = self.counts  # (G, S)
        probs = counts / counts.sum(1, keepdim=True).clamp_min(1.0)
        entropy = -(probs * probs.clamp_min(1e-300).log()).sum(1)  # (G,) nats
        distinct = (counts > 0).sum(1).double()  # (G,)
        out.update(
            distinct_codes=float(distinct.mean()),
            usage=float((distinct / self.alphabet).mean()),
            entropy=float(entropy.mean()),
            perplexity=float(entropy.mean().exp()),
        )
        if self.per_position:
            distinct_pos = self.presence.double().sum(2).mean(1)  # (N,) mean over groups
            out["distinct_per_position"] = distinct_pos.tolist()
            out["usage_per_position"] = (distinct_pos / self.alphabet).tolist()
        return out
