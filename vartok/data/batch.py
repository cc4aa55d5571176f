"""The batch format every loader yields and every consumer reads: `{"image": uint8 (B, 3, H, W), "valid": bool
(B,), "key": list[str]}`. `valid` is False for the padding samples that even out the ranks' validation shares;
they take part in no statistic. A bare (B, 3, H, W) tensor is read as a batch of valid images."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor


class Batch(NamedTuple):
    """Args:
    images: (B, 3, H, W) as given (uint8 from the loaders).
    valid: bool (B,) on the images' device.
    keys: the samples' keys, or None when the batch has none.
    """

    images: Tensor
    valid: Tensor
    keys: list[str] | None


def image_batch(pixels: list[np.ndarray], valid: list[bool], keys: list[str]) -> dict:
    """Stack decoded samples (uint8 (H, W, 3) each) into the batch dict."""
    image = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()  # (B,H,W,3) -> (B,3,H,W)
    return {"image": image, "valid": torch.tensor(valid, dtype=torch.bool), "key": list(keys)}


def parse_batch(batch: dict[str, Any] | Tensor) -> Batch:
    """The images, valid mask and keys of a batch dict (or of a bare image tensor)."""
    if not isinstance(batch, dict):
        batch = {"image": batch}
    images: Tensor = batch["image"]
    valid = batch.get("valid")
    valid = torch.ones(images.shape[0], dtype=torch.bool, device=images.device) if valid is None \
        else torch.as_tensor(valid, device=images.device).bool()
    keys = batch.get("key")
    return Batch(images, valid, list(keys) if keys is not None else None)


def to_unit(images: Tensor) -> Tensor:
    """(B, 3, H, W) uint8 in [0, 255] -> float32 in [0, 1]; float images are taken as already in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def valid_images(batch: dict[str, Any] | Tensor) -> Tensor:
    """The batch's valid images as float32 in [0, 1], (b, 3, H, W)."""
    images, valid, _ = parse_batch(batch)
    return to_unit(images[valid])
