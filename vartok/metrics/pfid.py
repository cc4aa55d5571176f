"""The pFID hook: applying a latent perturbation to the codes of an evaluation batch.

A perturbation is ``fn(indices, seed) -> perturbed indices`` (same shape, (B, N) or (B, N, G)); one that also
takes an ``encoding`` keyword receives the encoder's output for those images (the operator of
vartok.tokenizers.perturb draws from the codes nearest to each token's continuous latent, which lives there).
When every image has a distinct key, each image is perturbed on its own with a seed fixed by (seed, key), so
pFID is the same whatever the batch size or number of ranks; otherwise the whole batch gets a seed fixed by
(seed, batch index).

pFID values are vartok's definition (docs/perturbation.md: FID of the originals against decodes of perturbed
codes, β = 1, mean over fixed seeds). The original pFID code is unpublished, so they are not comparable to the
paper's table.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vartok.tokenizers.randomness import tagged_seed

Perturbation = Callable[[Tensor, int], Tensor]


def _take(obj: Any, index: int, batch: int) -> Any:
    """Sample `index` of a batched object (tensors with leading dim `batch`, inside tuples / dicts /
    dataclasses); anything else is passed unchanged."""
    if isinstance(obj, Tensor):
        return obj[index : index + 1] if obj.dim() > 0 and obj.shape[0] == batch else obj
    if isinstance(obj, tuple):
        items = [_take(x, index, batch) for x in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, dict):
        return {k: _take(v, index, batch) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _take(getattr(obj, f.name), index, batch)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def _call_perturbation(fn: Callable, indices: Tensor, seed: int, encoding: Any) -> Tensor:
    """Call ``fn(indices, seed)``, passing ``encoding=`` too when the callable accepts it (the continuous
    latents live there, which the nearest-code perturbation of vartok.tokenizers.perturb needs)."""
    try:
        takes_encoding = "encoding" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_encoding = False
    out = fn(indices, seed, encoding=encoding) if takes_encoding else fn(indices, seed)
    if out.shape != indices.shape:
        raise ValueError(f"a perturbation returned indices of shape {tuple(out.shape)}, not {tuple(indices.shape)}.")
    return out


def perturb(fn: Callable, indices: Tensor, seed: int, keys: list[str] | None, batch_index: int,
            encoding: Any) -> Tensor:
    """Perturbed indices (B, N[, G]) whose randomness depends only on (seed, image key) when every image
    has a distinct key — so pFID does not depend on batch size or the number of ranks — else on
    (seed, batch index)."""
    batch = indices.shape[0]
    if not keys or len(set(keys)) != batch or not all(keys):
        return _call_perturbation(fn, indices, tagged_seed(seed, f"batch{batch_index}"), encoding)
    return torch.cat([
        _call_perturbation(fn, indices[i : i + 1], tagged_seed(seed, key), _take(encoding, i, batch))
        for i, key in enumerate(keys)
    ])
