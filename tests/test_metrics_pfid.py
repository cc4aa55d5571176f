"""The pFID hook: per-image seeds fixed by the image key (batch-independent), per-sample slices of the
encoder output, the batch-seed fallback without keys, and a wrong-shape perturbation as a clear error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch

from vartok.metrics.pfid import perturb


class Enc(NamedTuple):
    indices: torch.Tensor
    latents: torch.Tensor
    losses: dict


@dataclass
class Extra:
    codes: torch.Tensor
    scale: float = 1.0


def noisy(indices: torch.Tensor, seed: int, encoding=None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return indices + torch.randint(0, 1000, indices.shape, generator=generator)


def test_per_image_perturbation_does_not_depend_on_the_batch() -> None:
    indices = torch.arange(12).reshape(4, 3)
    keys = ["a", "b", "c", "d"]
    whole = perturb(noisy, indices, 0, keys, 0, None)
    halves = torch.cat([perturb(noisy, indices[:2], 0, keys[:2], 5, None),
                        perturb(noisy, indices[2:], 0, keys[2:], 9, None)])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, perturb(noisy, indices, 1, keys, 0, None))  # the seed matters


def test_encoding_is_sliced_per_image() -> None:
    indices = torch.arange(6).reshape(3, 2)
    encoding = Enc(indices, torch.randn(3, 2, 4), {"commit": torch.tensor(0.5), "extra": Extra(torch.ones(3, 7))})
    seen = []

    def check(idx: torch.Tensor, seed: int, encoding: Enc) -> torch.Tensor:
        seen.append(encoding)
        assert torch.equal(encoding.indices, idx) and encoding.latents.shape == (1, 2, 4)
        assert encoding.losses["commit"].shape == () and encoding.losses["extra"].codes.shape == (1, 7)
        return idx

    assert torch.equal(perturb(check, indices, 0, ["x", "y", "z"], 0, encoding), indices)
    assert len(seen) == 3


def test_without_distinct_keys_the_batch_is_perturbed_at_once() -> None:
    calls = []

    def record(idx: torch.Tensor, seed: int) -> torch.Tensor:
        calls.append((idx.shape[0], seed))
        return idx

    indices = torch.zeros(3, 2, dtype=torch.long)
    perturb(record, indices, 0, None, 4, None)
    perturb(record, indices, 0, ["a", "a", "b"], 4, None)
    assert calls[0] == calls[1] and calls[0][0] == 3
    assert perturb(record, indices, 0, None, 5, None) is not None and calls[2][1] != calls[0][1]


def test_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"perturbation returned indices of shape \(1, 1\), not \(1, 2\)"):
        perturb(lambda idx, seed: idx[:, :1], torch.zeros(2, 2, dtype=torch.long), 0, ["a", "b"], 0, None)
