"""Exact nearest codes of a separable codebook, shared by `fsq` and the binary quantizers.

When a code is one level per channel and its distance to a latent is a sum of per-channel costs (the
squared Euclidean distance to a grid point, or the cost of a set of flipped bits), the `count` nearest codes
can be found without enumerating the codebook. Merge the channels one at a time and keep only the `count`
cheapest partial codes after each merge. Nothing needed is dropped: if a full code is among the `count`
cheapest, each of its prefixes (its levels on the channels merged so far) is among the `count` cheapest
prefixes. Otherwise `count` cheaper prefixes would exist, and extending each of them by the same remaining
levels would give `count` full codes cheaper than it, since the remaining costs are added to every prefix
alike. The cost is O(channels · count · levels) per latent, whatever the codebook size.
"""

from __future__ import annotations

import torch
from torch import Tensor


def smallest_sums(costs: Tensor, values: Tensor, count: int) -> Tensor:
    """Indices of the `count` codes with the smallest total cost when the cost is a sum over channels.

    Args:
        costs: (M, C, L) cost of each level of each channel (inf marks a level a channel does not have).
        values: (C, L) int64 contribution of each level to the code index (index = Σ_c values[c, level_c]).
        count: how many codes; at most the number of codes with finite cost.
    Returns:
        (M, count) int64 indices, cheapest first.
    """
    rows = costs.shape[0]
    total = costs.new_zeros(rows, 1)  # (M, m): cost of the best partial codes so far
    index = torch.zeros(rows, 1, dtype=torch.int64, device=costs.device)
    for c in range(costs.shape[1]):
        cand_cost = (total[:, :, None] + costs[:, None, c, :]).reshape(rows, -1)  # (M, m·L)
        cand_index = (index[:, :, None] + values[None, None, c, :]).reshape(rows, -1)
        total, order = cand_cost.topk(min(count, cand_cost.shape[1]), dim=1, largest=False, sorted=True)
        index = cand_index.gather(1, order)
    return index
