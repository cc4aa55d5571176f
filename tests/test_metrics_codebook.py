"""Codebook usage, perplexity and usage per position against numpy counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vartok.metrics.codebook import CodebookStats


def _expected(indices: np.ndarray, alphabet: int) -> dict:
    """indices (M, N, G): per-group figures averaged over groups, by direct counting."""
    entropies, distinct = [], []
    for g in range(indices.shape[2]):
        _, counts = np.unique(indices[:, :, g], return_counts=True)
        p = counts / counts.sum()
        entropies.append(-(p * np.log(p)).sum())
        distinct.append(len(counts))
    per_pos = [np.mean([len(np.unique(indices[:, n, g])) for g in range(indices.shape[2])])
               for n in range(indices.shape[1])]
    return {"usage": np.mean(distinct) / alphabet, "perplexity": np.exp(np.mean(entropies)),
            "distinct_codes": np.mean(distinct), "distinct_per_position": per_pos}


@pytest.mark.parametrize("groups", [1, 2])
def test_matches_numpy_counting(groups: int) -> None:
    rng = np.random.default_rng(groups)
    alphabet = 64 if groups == 1 else 8
    # skewed use: late positions see fewer codes
    batches = [rng.integers(0, alphabet, size=(b, 5, groups)) // np.array([1, 1, 2, 4, 8])[None, :, None]
               for b in (3, 1, 6)]
    stats = CodebookStats(alphabet**groups, num_tokens=5, groups=groups)
    for batch in batches:
        stats.update(torch.from_numpy(batch if groups > 1 else batch[..., 0]))
    stats.update(torch.zeros((0, 5, groups) if groups > 1 else (0, 5), dtype=torch.long))
    out = stats.compute()
    expected = _expected(np.concatenate(batches), alphabet)
    assert out["tokens"] == 10 * 5 and out["groups"] == groups and out["codebook_size"] == alphabet**groups
    for key in ("usage", "perplexity", "distinct_codes"):
        assert out[key] == pytest.approx(expected[key], rel=1e-12), key
    assert out["distinct_per_position"] == pytest.approx(expected["distinct_per_position"])
    assert out["usage_per_position"] == pytest.approx([d / alphabet for d in expected["distinct_per_position"]])


def test_bad_shapes_are_clear_errors() -> None:
    stats = CodebookStats(256, num_tokens=4)
    with pytest.raises(ValueError, match=r"indices must be \(B, 4\)"):
        stats.update(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="codebook_size 1000"):
        CodebookStats(1000, num_tokens=4, groups=2)
