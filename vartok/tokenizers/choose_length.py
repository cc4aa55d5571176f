"""Adaptive length at inference (docs/definitions.md §2): per image, the smallest k whose reconstruction meets a target.

    k = choose_length(tok, images, target_psnr=30.0)          # (B,) int64 in [1, N]
    recon = tok.decode(tok.encode(images).indices, length=k)

One encoder pass, then a bisection over k in [1, N] run for every image at once: each step is ONE batched
decode of the images whose search is still open, each at its own midpoint (a per-sample length tensor).
That is at most ceil(log2 N) decoder passes instead of N for a scan.

Assumption: quality is monotone in k for each image (more tokens never make it worse), so the predicate
"meets the target at k" switches once from False to True. Tokenizers trained with tail drop or nested
dropout are close to this but not exactly; where an image's quality is not monotone the bisection still
returns a k in [1, N] whose reconstruction met the target when it was tested (or N), but not necessarily
the smallest such k. An image that does not meet the target below N gets N (the best the tokenizer can do;
N itself is not required to meet the target).

Quality is measured as `vartok.metrics` evaluates it: PSNR of the 8-bit reconstruction (`vartok.pixels`);
LPIPS by the caller's network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vartok.pixels import psnr_per_image, to_uint8

#: (reconstructions, originals), both (B, 3, H, W) in [0, 1] -> (B,) distances (lower is better).
DistanceFn = Callable[[Tensor, Tensor], Tensor]


def _meets_target(
    target_psnr: float | None, target_lpips: float | None, lpips_fn: DistanceFn | None
) -> Callable[[Tensor, Tensor], Tensor]:
    """Validate the target and return (recon, images) -> (B,) bool, True where the target is met."""
    if (target_psnr is None) == (target_lpips is None):
        raise ValueError(
            f"choose_length needs exactly one of target_psnr (dB) or target_lpips (a distance >= 0), got "
            f"target_psnr={target_psnr!r} and target_lpips={target_lpips!r}"
        )
    if target_psnr is not None:
        if isinstance(target_psnr, bool) or not isinstance(target_psnr, (int, float)) or not math.isfinite(
            target_psnr
        ):
            raise ValueError(f"target_psnr must be a finite number of dB, got {target_psnr!r}")
        return lambda recon, images: psnr_per_image(to_uint8(recon), images) >= target_psnr
    if isinstance(target_lpips, bool) or not isinstance(target_lpips, (int, float)) or not (
        math.isfinite(target_lpips) and target_lpips >= 0
    ):
        raise ValueError(f"target_lpips must be a finite distance >= 0, got {target_lpips!r}")
    if lpips_fn is None:
        raise ValueError(
            "target_lpips needs lpips_fn, a callable (recon, images) -> (B,) distances, e.g. "
            "vartok.metrics.LPIPS(); got lpips_fn=None"
        )

    def meets(recon: Tensor, images: Tensor) -> Tensor:
        saved = (recon.float().clamp(0, 1) * 255).round() / 255
        distance = lpips_fn(saved, images.float())
        if not isinstance(distance, Tensor) or distance.shape != (images.shape[0],):
            shape = tuple(distance.shape) if isinstance(distance, Tensor) else type(distance).__name__
            raise ValueError(f"lpips_fn must return one distance per image, shape ({images.shape[0]},), got {shape}")
        return distance <= target_lpips

    return meets


@torch.no_grad()
def choose_length(
    tokenizer: Any,
    images: Tensor,
    target_psnr: float | None = None,
    target_lpips: float | None = None,
    lpips_fn: DistanceFn | None = None,
) -> Tensor:
    """Per image the smallest token count k whose reconstruction meets the target (see the module docstring).

    Args:
        tokenizer: a `Tokenizer`, or any object with `encode(images).indices`, `decode(indices, length=(B,))`
            and `num_tokens`. Put in eval mode for the search, then restored.
        images: (B, 3, H, W) float in [0, 1]; a `Tokenizer`'s encode rejects other values (0-255, [-1, 1],
            NaN or inf) and shapes with one clear error before any decoder pass.
        target_psnr: PSNR in dB that the 8-bit reconstruction must reach (>=), or
        target_lpips: LPIPS distance it must not exceed (<=), measured by
        lpips_fn: (recon, images) -> (B,) distances; required with target_lpips.
    Returns:
        (B,) int64 on the device of `images`, each in [1, N]; N where no shorter length meets the target. No
        autograd graph is built.
    """
    meets = _meets_target(target_psnr, target_lpips, lpips_fn)
    num_tokens = int(tokenizer.num_tokens)
    was_training = bool(getattr(tokenizer, "training", False))
    if was_training:
        tokenizer.eval()
    try:
        indices = tokenizer.encode(images).indices  # (B, N[, G]): the one encoder pass
        batch = indices.shape[0]
        # Invariant per image: the answer lies in [low, high]; high = N also stands for "never met".
        low = torch.ones(batch, dtype=torch.long)
        high = torch.full((batch,), num_tokens, dtype=torch.long)
        while bool((low < high).any()):
            open_ = (low < high).nonzero().squeeze(1)  # (A,) images still searching
            mid = (low[open_] + high[open_]) // 2  # (A,) each in [1, N-1]
            recon = tokenizer.decode(indices[open_.to(indices.device)], length=mid.to(indices.device))
            ok = meets(recon, images[open_.to(images.device)]).cpu()  # (A,) bool
            high[open_] = torch.where(ok, mid, high[open_])
            low[open_] = torch.where(ok, low[open_], mid + 1)
    finally:
        if was_training:
            tokenizer.train()
    return low.to(images.device)
