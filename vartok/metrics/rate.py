"""Rate of k tokens: bits per token = log2(codebook size), bytes = ceil(k·bits/8), bpp."""

from __future__ import annotations

import math


def bits_per_token(codebook_size: int) -> float:
    """log2 of the codebook size (python int, may exceed 2**63 for grouped codes)."""
    if int(codebook_size) < 2:
        raise ValueError(f"codebook_size must be an integer ≥ 2, got {codebook_size!r}.")
    return math.log2(int(codebook_size))


def bytes_per_image(num_tokens: int, bits: float) -> int:
    """Bytes to store `num_tokens` tokens of `bits` bits each, packed: ceil(k·bits/8).

    Args:
        num_tokens: k ≥ 0.
        bits: bits per token (> 0).
    """
    if num_tokens < 0 or not bits > 0:
        raise ValueError(f"need num_tokens ≥ 0 and bits > 0, got num_tokens={num_tokens!r}, bits={bits!r}.")
    # the tiny tolerance keeps an exact product (e.g. 3 × 8 bits) from rounding up through float error
    return math.ceil(num_tokens * bits / 8 - 1e-9)


def bits_per_pixel(nbytes: float, height: int, width: int) -> float:
    """Bits per pixel of a `nbytes`-byte representation of an H×W image (whole bytes, as stored)."""
    return 8.0 * nbytes / (height * width)


def default_lengths(num_tokens: int) -> list[int]:
    """1, 2, 4, ... up to N, plus N itself if it is not a power of two."""
    from vartok.tokenizers.length import pow2_lengths

    return pow2_lengths(num_tokens)
