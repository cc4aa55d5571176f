"""Rate of k tokens: bytes = ceil(k·log2(C)/8), checked against exact integer arithmetic."""

from __future__ import annotations

import pytest

from vartok.metrics.rate import bits_per_pixel, bits_per_token, bytes_per_image, default_lengths


def _bytes_brute_force(num_tokens: int, codebook_size: int) -> int:
    """Smallest b with 256**b ≥ C**k: the fewest whole bytes that can index every k-token sequence."""
    b = 0
    while 256**b < codebook_size**num_tokens:
        b += 1
    return b


@pytest.mark.parametrize("codebook_size", [2, 3, 16, 256, 1000, 1024, 4096, 8192, 65536, 2**18, 2**40, 2**70])
def test_bytes_match_exact_integer_count(codebook_size: int) -> None:
    bits = bits_per_token(codebook_size)
    for k in list(range(40)) + [64, 128, 256]:
        assert bytes_per_image(k, bits) == _bytes_brute_force(k, codebook_size), (codebook_size, k)


def test_bpp_and_lengths() -> None:
    assert bits_per_pixel(12, 32, 32) == pytest.approx(12 * 8 / 1024)
    assert default_lengths(32) == [1, 2, 4, 8, 16, 32]
    assert default_lengths(12) == [1, 2, 4, 8, 12]
    assert default_lengths(1) == [1]


@pytest.mark.parametrize("call", [lambda: bits_per_token(1), lambda: bytes_per_image(-1, 8.0),
                                  lambda: bytes_per_image(3, 0.0), lambda: default_lengths(0)])
def test_bad_input_is_one_clear_error(call) -> None:
    with pytest.raises(ValueError, match="must be|need"):
        call()
