"""Shared math of the binary quantizers `lfq`, `bsq` and `gq` (docs/definitions.md §1.1).

A token's code is K bits (+1 <-> bit 1, -1 <-> bit 0), split into G groups of k = K/G bits; each group is
an integer index, MSB first (the first latent channel of a group is its most significant bit).

Entropy regulariser: the soft assignment of a token over all codes c of a group is
p(c) ∝ exp(2<v, c>/τ), which factorises over bits, p(c_i = +1) = σ(4 v_i/τ) = σ(logit_i). Therefore
- per-sample entropy: Σ_i H_b(σ(logit_i)), closed form, O(k);
- codebook entropy H(p̄), p̄ = mean over tokens of p(·), computed EXACTLY with the two-halves
  factorisation: p(c) = p_A(c_A)·p_B(c_B) over the first ceil(k/2) and the last floor(k/2) bits, so
  p̄ = P_Aᵀ diag(w) P_B / Σw — one batched matrix product, memory O(T·2^{k/2} + 2^k), never T·2^k.

Memory bound: p̄ has 2^k float32 entries per group (64 MiB at k = 24, plus as much for its gradient), so
the widest exact group is MAX_EXACT_GROUP_BITS = 24; wider codes must be split into groups (`gq`).

DDP: under an initialised process group with world size > 1 (training mode only, so that rank-0-only or
uneven evaluation never waits on a collective), the sums of probabilities, the sum of per-sample
entropies and the token count are all-reduced, so both entropy terms equal the single-process values on
the union of all ranks' tokens. Gradient choice: the all-reduced sum is S = S_local + (others, constant),
and its gradient w.r.t. this rank's tokens is multiplied by world_size. Every rank computes the same H,
so this is exactly what a differentiable all-reduce (torch.distributed.nn.all_reduce) would give, without
a backward collective; after DDP AVERAGES the parameter gradients over ranks, the result equals the
gradient of the single-process loss on the union of tokens.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

MAX_INDEX_BITS = 62  # one int64 index holds at most 62 bits here (positive, headroom for offsets)
MAX_EXACT_GROUP_BITS = 24  # widest group whose exact codebook entropy we compute (2^24 probabilities)
LOG_CLAMP = 1e-30  # p̄ is clamped to this before the log (float32 keeps it as a normal number)
LOGIT_CLAMP = 200.0  # σ(±200) is exactly 0/1 in float32 with zero gradient: clamping changes nothing but infs


class NonFiniteError(ValueError):
    """A quantizer input holds NaN or inf; the training module can catch it and add the step."""


def check_group_bits(bits: int, groups: int) -> int:
    """Validate a binary code layout and return the bits per group k = bits / groups.

    Args:
        bits: total bits K per token.
        groups: number of groups G; each group is one index of k = K/G bits.
    """
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if bits % groups != 0:
        raise ValueError(f"bits={bits} is not divisible by groups={groups}; choose groups dividing bits")
    k = bits // groups
    if k > MAX_INDEX_BITS:
        raise ValueError(
            f"bits per index = {k} (bits={bits}, groups={groups}) exceeds {MAX_INDEX_BITS}, the most one "
            f"int64 index holds; use gq with more groups"
        )
    if k > MAX_EXACT_GROUP_BITS:
        raise ValueError(
            f"bits per group = {k} (bits={bits}, groups={groups}) exceeds {MAX_EXACT_GROUP_BITS}, the widest "
            f"group with an exact codebook entropy; use gq with groups >= {math.ceil(bits / MAX_EXACT_GROUP_BITS)}"
        )
    return k


# ---------------------------------------------------------------------------------------------- bits


def bits_to_indices(bits: Tensor) -> Tensor:
    """Bits (..., k), bool or 0/1, to int64 indices (...), the first bit most significant."""
    k = bits.shape[-1]
    weights = 2 ** torch.arange(k - 1, -1, -1, device=bits.device, dtype=torch.int64)  # (k,)
    return (bits.to(torch.int64) * weights).sum(-1)


def indices_to_bits(indices: Tensor, k: int) -> Tensor:
    """int64 indices (...) to bool bits (..., k), the first bit most significant."""
    shifts = torch.arange(k - 1, -1, -1, device=indices.device, dtype=torch.int64)  # (k,)
    return (indices.to(torch.int64).unsqueeze(-1) >> shifts) & 1 == 1


# ------------------------------------------------------------------------------------------ entropy


def bit_entropy(logits: Tensor) -> Tensor:
    """Binary entropy (nats) of σ(logits), elementwise, stable for large |logits| (no cancellation)."""
    return torch.sigmoid(logits) * F.softplus(-logits) + torch.sigmoid(-logits) * F.softplus(logits)


def code_probs(logits: Tensor) -> Tensor:
    """Probabilities of all 2^m codes of m independent bits, MSB first.

    Args:
        logits: (..., m) per-bit logits, p(bit = 1) = σ(logit).
    Returns:
        (..., 2^m); entry c is Π_i p(bit_i = c_i) with c_0 the most significant bit.
    """
    table = logits.new_ones(*logits.shape[:-1], 1)  # (..., 1)
    for i in range(logits.shape[-1]):
        bit = logits[..., i : i + 1]  # (..., 1)
        # appending bit i as the new least significant bit keeps earlier bits more significant
        table = torch.stack([table * torch.sigmoid(-bit), table * torch.sigmoid(bit)], -1).flatten(-2)
    return table


def codebook_prob_sums(logits: Tensor, weights: Tensor) -> Tensor:
    """Exact weighted sums of code probabilities per group, Σ_t w_t p_t(c), via two halves.

    Args:
        logits: (T, G, k) per-bit logits of T tokens and G groups.
        weights: (T,) token weights (1 real, 0 padding).
    Returns:
        (G, 2^k) sums; divide by Σ w for p̄.
    """
    k = logits.shape[-1]
    k_a = (k + 1) // 2  # first (most significant) half A: ceil(k/2) bits, half B: floor(k/2) bits
    probs_a = code_probs(logits[..., :k_a])  # (T, G, 2^kA)
    probs_b = code_probs(logits[..., k_a:]) * weights[:, None, None]  # (T, G, 2^kB)
    sums = torch.einsum("tga,tgb->gab", probs_a, probs_b)  # (G, 2^kA, 2^kB): index a·2^kB + b
    return sums.reshape(logits.shape[1], 2**k)


def entropy(probs: Tensor) -> Tensor:
    """Entropy (nats) over the last dim of a probability tensor, log clamped away from 0."""
    return -(probs * probs.clamp_min(LOG_CLAMP).log()).sum(-1)


def world_size() -> int:
    """Number of ranks of the default process group, 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sums(tensors: list[Tensor]) -> list[Tensor]:
    """Sum each tensor over ranks in one collective; gradients w.r.t. the local tensor scaled by world size.

    The value is the global sum; the gradient is world_size × ∂/∂(local sum) (see the module docstring for
    why: DDP averages parameter gradients, so the result equals the single-process gradient).
    """
    world = world_size()
    if world == 1:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])  # one buffer, one collective
    dist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        total = flat[offset : offset + t.numel()].view_as(t)
        offset += t.numel()
        out.append(total + world * (t - t.detach()) if t.requires_grad else total)
    return out


def entropy_terms(
    logits: Tensor, mask: Tensor | None, pool_groups: bool = False, sync: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample and exact codebook entropy of binary codes, masked, optionally all-reduced over ranks.

    Args:
        logits: (B, N, G, k) per-bit logits 4v/τ (finite at real tokens; padded entries must be finite).
        mask: (B, N) bool, True = real token, or None.
        pool_groups: H of the group-pooled p̄ instead of the mean of the group entropies.
        sync: all-reduce the sums over DDP ranks (when a process group with world size > 1 exists).
    Returns:
        h_sample: scalar, token mean of (mean over groups of Σ_bits H_b).
        h_codebook: scalar, mean over groups of H(p̄_g), or H(mean_g p̄_g) when pool_groups.
        group_entropy: (G,) H(p̄_g), detached.
    """
    batch, length, groups, k = logits.shape
    logits = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)  # an inf logit would give 0·inf = NaN entropies
    flat = logits.reshape(batch * length, groups, k)  # (T, G, k)
    if mask is None:
        weights = flat.new_ones(batch * length)  # (T,)
    else:
        weights = mask.reshape(-1).to(flat.dtype)  # (T,)
    sample_sum = (bit_entropy(flat).sum(-1).mean(-1) * weights).sum()  # Σ_t w_t · mean_g Σ_i H_b
    prob_sums = codebook_prob_sums(flat, weights)  # (G, 2^k)
    count = weights.sum()
    if sync:
        sample_sum, prob_sums, count = all_reduce_sums([sample_sum, prob_sums, count])
    count = count.clamp_min(1.0)
    p_bar = prob_sums / count  # (G, 2^k)
    group_entropy = entropy(p_bar)  # (G,)
    h_codebook = entropy(p_bar.mean(0)) if pool_groups else group_entropy.mean()
    return sample_sum / count, h_codebook, group_entropy.detach()


# ------------------------------------------------------------------------------------------- checks


def check_finite(name: str, values: Tensor, mask: Tensor | None = None) -> None:
    """Raise NonFiniteError naming `name` if any real-token entry of `values` (B, N, D) is NaN or inf."""
    bad = ~torch.isfinite(values)  # (B, N, D)
    if mask is not None:
        bad = bad & mask[..., None]
    count = int(bad.sum())
    if count:
        total = values.numel() if mask is None else int(mask.sum()) * values.shape[-1]
        raise NonFiniteError(
            f"quantizer input {name} has {count} non-finite values (NaN or inf) among its {total} "
            f"real-token entries; check the encoder output and the learning rate"
        )


def scrub_padding(values: Tensor, mask: Tensor | None) -> Tensor:
    """Replace NaN/inf at padded tokens by 0 so padding can hold anything; real tokens are unchanged."""
    if mask is None:
        return values
    return torch.where(mask[..., None], values, values.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0))


# -------------------------------------------------------------------------------------------- usage


def group_usage(indices: Tensor, mask: Tensor | None, k: int) -> Tensor:
    """Fraction of the 2^k codes of each group seen among real tokens.

    Args:
        indices: (B, N, G) int64 group indices in [0, 2^k).
        mask: (B, N) bool or None.
    Returns:
        (G,) float32: distinct codes seen / 2^k per group.
    """
    groups = indices.shape[-1]
    rows = indices.reshape(-1, groups) if mask is None else indices[mask]  # (T_real, G)
    offsets = torch.arange(groups, device=indices.device, dtype=torch.int64) * 2**k  # (G,)
    distinct = torch.unique(rows + offsets)  # one id space per group
    counts = torch.bincount(distinct // 2**k, minlength=groups)  # (G,)
    return counts.float() / 2**k


def position_usage(indices: Tensor, mask: Tensor | None = None) -> Tensor:
    """Number of distinct codes at each token position over the real tokens of a batch.

    Args:
        indices: (B, N) int64, or (B, N, G) for grouped codes (a code is then the whole G-tuple).
        mask: (B, N) bool or None.
    Returns:
        (N,) float32 distinct-code counts (divide by the number of real tokens at a position for a fraction).
    """
    batch, length = indices.shape[:2]
    codes = indices.reshape(batch, length, -1)  # (B, N, G)
    positions = torch.arange(length, device=indices.device).expand(batch, length)  # (B, N)
    rows = torch.cat([positions[..., None], codes], -1)  # (B, N, 1 + G)
    rows = rows.reshape(batch * length, -1) if mask is None else rows[mask]  # (T_real, 1 + G)
    distinct = torch.unique(rows, dim=0)  # (U, 1 + G)
    return torch.bincount(distinct[:, 0], minlength=length).float()
