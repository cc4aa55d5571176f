"""Resize the shorter side (bicubic, antialiased), crop a square, optionally flip -> uint8 (H, W, 3) array.

The resize and the crop are one PIL call: only the source box that ends up in the crop is resampled, which
gives the same pixels as resizing the whole image and then cropping, at a fraction of the cost.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def crop_box(width: int, height: int, size: int, rng: np.random.Generator | None) -> tuple[float, ...]:
    """The source box (left, top, right, bottom) whose resize to (size, size) equals resize-then-crop.

    Args:
        width: source width in pixels.
        height: source height in pixels.
        size: output side; the shorter source side is scaled to it.
        rng: random crop position along the longer side when given, centre crop when None.
    """
    scale = size / min(width, height)
    # Size after resizing the shorter side to `size` (the longer side rounded like torchvision does).
    resized_w = size if width <= height else max(size, round(width * scale))
    resized_h = size if height <= width else max(size, round(height * scale))
    if rng is None:
        left, top = (resized_w - size) // 2, (resized_h - size) // 2
    else:
        left = int(rng.integers(0, resized_w - size + 1))
        top = int(rng.integers(0, resized_h - size + 1))
    sx, sy = width / resized_w, height / resized_h
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def resize_crop(image: Image.Image, size: int, rng: np.random.Generator | None = None,
                flip: bool = False) -> tuple[np.ndarray, bool]:
    """Resize the shorter side to `size`, crop a size x size square and maybe flip it horizontally.

    Args:
        image: an RGB PIL image.
        size: output side in pixels.
        rng: random crop and flip when given; centre crop and no flip when None.
        flip: flip left-right with probability 1/2 (only with `rng`).

    Returns:
        (pixels, upscaled): uint8 array (size, size, 3) and whether the shorter side had to be enlarged.
    """
    width, height = image.size
    upscaled = min(width, height) < size
    if width == size and height == size:
        out = image
    else:
        out = image.resize((size, size), Image.BICUBIC, box=crop_box(width, height, size, rng))
    pixels = np.asarray(out, dtype=np.uint8)  # (H, W, 3)
    if flip and rng is not None and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return pixels, upscaled
