"""Parts of the token prior (`prior.py`): a causal pre-norm transformer block with a key/value cache, and the
token codec of each kind of token (its input embedding, output head, log-likelihood and per-symbol draw).

Kinds (see `TokenSpec`): "categorical" (one symbol of `codes` values per token), "grouped" (G symbols of `codes`
values, conditionally independent given the earlier tokens: one softmax head per group) and "bits" (a binary
code of K bits, predicted as K independent bits given the earlier tokens, MSB first as
`quantizers.binary.indices_to_bits` numbers them). Shapes: B batch, T positions, W width, G groups, C codes, K bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vartok.models.quantizers.binary import bits_to_indices, indices_to_bits

KeyValue = tuple[Tensor, Tensor]  # keys and values (B, H, S, W/H) of the S positions seen so far


class CausalBlock(nn.Module):
    """Pre-norm transformer block (attention + MLP) whose attention sees only earlier positions.

    Args:
        width: model width W (a multiple of heads).
        heads: attention heads.
        mlp_ratio: hidden width of the MLP / W.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = max(1, int(width * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor, cache: KeyValue | None = None) -> tuple[Tensor, KeyValue]:
        """Run T new positions after the S positions held in `cache`.

        Args:
            x: (B, T, W) inputs of the new positions.
            cache: keys and values (B, H, S, W/H) of the earlier positions, or None (S = 0).
        Returns:
            (B, T, W) outputs and the keys and values (B, H, S + T, W/H) of all positions so far.
        """
        batch, new, width = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, new, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, W/H)
        seen = 0 if cache is None else cache[0].shape[2]
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        mask = None
        if seen and new > 1:  # new position i (absolute seen + i) sees absolute positions <= seen + i
            mask = torch.ones(new, seen + new, dtype=torch.bool, device=x.device).tril(seen)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not seen and new > 1)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, new, width))
        return x + self.mlp(self.norm2(x)), (k, v)


class TokenCodec(nn.Module):
    """Embeds tokens and reads next-token logits for one kind of token.

    Args:
        kind: "categorical", "grouped" or "bits".
        codes: values per symbol C (kind "bits": 2^K).
        groups: symbols per token G (1 unless grouped).
        bits: K for kind "bits", else 0.
        width: model width W.
    """

    def __init__(self, kind: str, codes: int, groups: int, bits: int, width: int) -> None:
        super().__init__()
        self.kind, self.codes, self.groups, self.bits = kind, codes, groups, bits
        if kind == "bits":
            self.embed = nn.Linear(bits, width)  # a linear map of the ±1 bits
            self.head = nn.Linear(width, bits)  # one logit per bit: p(bit = 1) = σ(logit)
        else:
            # one table of G·C rows = G per-group tables; a token's embedding is the sum over its groups
            self.embed = nn.Embedding(groups * codes, width)
            self.head = nn.Linear(width, groups * codes)
            self.register_buffer("offsets", torch.arange(groups) * codes, persistent=False)  # (G,)

    def embed_tokens(self, indices: Tensor) -> Tensor:
        """(B, T) or (B, T, G) int64 indices, already checked -> (B, T, W)."""
        if self.kind == "bits":
            signs = indices_to_bits(indices, self.bits).to(self.embed.weight.dtype) * 2.0 - 1.0  # (B, T, K)
            return self.embed(signs)
        grouped = indices.unsqueeze(-1) if self.kind == "categorical" else indices  # (B, T, G)
        return self.embed(grouped + self.offsets).sum(-2)

    def read(self, hidden: Tensor) -> Tensor:
        """(B, T, W) -> logits (B, T, G, C), or (B, T, K) for kind "bits"."""
        logits = self.head(hidden)
        if self.kind == "bits":
            return logits
        return logits.unflatten(-1, (self.groups, self.codes))

    def log_prob(self, logits: Tensor, indices: Tensor) -> Tensor:
        """Log-likelihood (nats, float32) of each token.

        Args:
            logits: from `read`, (B, T, G, C) or (B, T, K).
            indices: (B, T) or (B, T, G) int64 tokens at the same positions.
        Returns:
            (B, T): the sum over the token's symbols (groups, or bits) of their log-probabilities.
        """
        logits = logits.float()
        if self.kind == "bits":
            bits = indices_to_bits(indices, self.bits)  # (B, T, K), MSB first
            return F.logsigmoid(torch.where(bits, logits, -logits)).sum(-1)
        grouped = indices.unsqueeze(-1) if self.kind == "categorical" else indices  # (B, T, G)
        chosen = logits.log_softmax(-1).gather(-1, grouped.unsqueeze(-1)).squeeze(-1)  # (B, T, G)
        return chosen.sum(-1)

    def draw(
        self, logits: Tensor, temperature: float, top_k: int | None,
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> Tensor:
        """Draw one token per row from the logits of one position.

        Categorical symbols use the Gumbel-max trick, argmax(logit + temperature·g), which draws from
        softmax(logit / temperature) without dividing by a small temperature (no overflow; the limit is the
        argmax). A bit is 1 when temperature·log(u / (1 - u)) < logit, i.e. with probability σ(logit / temperature).
        Both use one uniform per symbol (per bit) from `generator`; with one generator per row, row b's
        uniforms come from generator b alone, the same numbers as a draw of that row by itself.

        Args:
            logits: (B, G, C), or (B, K) for kind "bits".
            temperature: > 0.
            top_k: keep only the k largest logits of each symbol (None: all); not for kind "bits".
            generator: the random source, on the logits' device (None: torch's default), or one per row.
        Returns:
            (B,) int64, or (B, G) for grouped tokens.
        """
        logits = logits.float()
        if isinstance(generator, (list, tuple)):  # (B, ...): row b from generator b
            uniform = torch.stack([torch.rand(logits.shape[1:], generator=g, device=logits.device) for g in generator])
        else:
            uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
        if self.kind == "bits":
            bits = temperature * (uniform.log() - torch.log1p(-uniform)) < logits  # (B, K)
            return bits_to_indices(bits)
        if top_k is not None and top_k < self.codes:
            values, where = logits.topk(top_k, -1)
            logits = torch.full_like(logits, float("-inf")).scatter(-1, where, values)
        gumbel = -torch.log(-torch.log(uniform))  # u = 0 gives -inf: that code is not drawn
        symbols = (logits + temperature * gumbel).argmax(-1)  # (B, G)
        return symbols.squeeze(-1) if self.kind == "categorical" else symbols


# ---------------------------------------------------------------------------------------------- checks
# One sentence per bad argument, before any model work. `spec` is a prior.TokenSpec (not imported: prior.py imports
# this module).


def check_indices(spec: Any, indices: Tensor) -> tuple[int, int]:
    """Check tokens given to a prior: int (B, k) or (B, k, G), 1 <= k <= N, values in [0, C). Returns (B, k)."""
    if not isinstance(indices, Tensor):
        raise TypeError(f"prior indices must be an integer torch.Tensor, got {type(indices).__name__}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise ValueError(f"prior indices must be an integer tensor (int64 token ids), got dtype {indices.dtype}")
    trailing = spec.index_shape()
    layout = "(B, k" + "".join(f", {g}" for g in trailing) + ")"
    if indices.dim() != 2 + len(trailing) or tuple(indices.shape[2:]) != trailing:
        raise ValueError(f"prior indices must have shape {layout} for {spec.describe()}, got {tuple(indices.shape)}")
    batch, length = indices.shape[:2]
    if batch < 1 or not 1 <= length <= spec.num_tokens:
        raise ValueError(
            f"prior indices must hold B >= 1 sequences of k tokens, 1 <= k <= {spec.num_tokens}, got shape "
            f"{tuple(indices.shape)}"
        )
    low, high = (int(v) for v in torch.aminmax(indices))  # one reduction, one host sync
    if low < 0 or high >= spec.codes:
        per = " per group" if trailing else ""
        bad = low if low < 0 else high
        raise ValueError(
            f"prior indices must lie in [0, {spec.codes - 1}]{per} for {spec.describe()}, found {bad}; were they "
            f"made by another tokenizer?"
        )
    return batch, length


def check_labels(num_classes: int, labels: Tensor | None, batch: int) -> None:
    """Labels must be None for an unconditional prior and int (B,) in [0, num_classes) for a conditional one."""
    if not num_classes:
        if labels is not None:
            raise ValueError("this prior is unconditional (num_classes=0): pass labels=None, not class labels")
        return
    allowed = f"int64 (B,) = ({batch},) with values in [0, {num_classes - 1}]"
    if labels is None:
        raise ValueError(f"this prior is class-conditional (num_classes={num_classes}): pass labels, {allowed}")
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        found = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"prior labels must be an integer tensor, {allowed}, got {found}")
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"prior labels must be {allowed}, got shape {tuple(labels.shape)}")
    low, high = (int(v) for v in torch.aminmax(labels))
    if low < 0 or high >= num_classes:
        raise ValueError(f"prior labels must be {allowed}, found {low if low < 0 else high}")


def check_generation(
    spec: Any, length: int, temperature: float, top_k: int | None,
    generator: torch.Generator | Sequence[torch.Generator] | None, device: torch.device, batch: int | None = None,
) -> None:
    """Length in [1, N], temperature > 0, top_k in [1, C] (none for kind "bits"), generator on the prior's device;
    a list of generators (only where `batch` is given) holds one torch.Generator per sequence."""
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= spec.num_tokens:
        raise ValueError(
            f"length must be an int in [1, {spec.num_tokens}] (the prior predicts {spec.num_tokens} tokens), got {length!r}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0 (1 samples the prior as trained), got {temperature!r}")
    if top_k is not None:
        if spec.kind == "bits":
            raise ValueError(
                f"top_k is not available for a prior of {spec.describe()}: it predicts each bit on its own, so there "
                f"is no ranking of whole codes; use temperature instead"
            )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= spec.codes:
            raise ValueError(f"top_k must be None or an int in [1, {spec.codes}] (codes per symbol), got {top_k!r}")
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    if isinstance(generator, (list, tuple)):
        if batch is None:
            raise ValueError("mix takes one generator (or None), not a list")
        if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(
                f"a list of generators gives one torch.Generator per sequence: {batch} sequences, got "
                f"{len(generator)} items"
            )
    for one in generators:
        if one is not None and torch.device(one.device).type != torch.device(device).type:
            raise ValueError(
                f"the generator is on {one.device} but the prior is on {device}; make it with "
                f"torch.Generator(device={str(device)!r})"
            )
