"""Decoding and resizing against brute-force oracles: mode conversions, resize+crop, JPEG draft, skip limits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.data_fuzz import encode, photo
from vartok.data import DataError, decode_image, to_rgb
from vartok.data.skips import MIN_SAMPLES_FOR_CHECK, SkipCounter
from vartok.data.transforms import resize_crop


def brute_force_resize_then_crop(image: Image.Image, size: int) -> np.ndarray:
    """The textbook pipeline: resize the whole image (shorter side = size), then crop, all offsets."""
    w, h = image.size
    scale = size / min(w, h)
    full = image.resize((size if w <= h else max(size, round(w * scale)),
                         size if h <= w else max(size, round(h * scale))), Image.BICUBIC)
    return np.asarray(full).astype(int)  # (H', W', 3)


@pytest.mark.parametrize(("shape", "size"), [((48, 40), 32), ((40, 48), 16), ((300, 2), 16), ((7, 5), 32),
                                             ((64, 64), 64), ((123, 77), 50)])
def test_centre_crop_equals_resize_then_crop(shape, size):
    image = photo(*shape)
    full = brute_force_resize_then_crop(image, size)
    top, left = (full.shape[0] - size) // 2, (full.shape[1] - size) // 2
    out, upscaled = resize_crop(image, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - full[top:top + size, left:left + size]).max() <= 1
    assert upscaled == (min(shape) < size)


def test_random_crops_are_crops_of_the_resized_image_and_flips_happen():
    image = photo(90, 40)
    full = brute_force_resize_then_crop(image, 32)
    rng = np.random.default_rng(0)
    offsets, flips = set(), 0
    for _ in range(40):
        out, _ = resize_crop(image, 32, rng, flip=True)
        candidates = []
        for left in range(full.shape[1] - 31):
            window = full[:, left:left + 32]
            for flipped, view in ((False, window), (True, window[:, ::-1])):
                candidates.append((np.abs(out.astype(int) - view).max(), left, flipped))
        err, left, flipped = min(candidates)
        assert err <= 1
        offsets.add(left)
        flips += flipped
    assert len(offsets) > 5 and 5 < flips < 35


def test_sixteen_bit_and_float_are_rescaled_not_clipped():
    values = np.arange(0, 65536, 257 * 5, dtype=np.uint16).reshape(4, -1)[:, :10]  # (4, 10)
    rgb, note = to_rgb(Image.fromarray(values))
    assert note == "high_bit_depth"
    assert np.array_equal(np.asarray(rgb)[..., 0], np.rint(values / 257).astype(np.uint8))
    floats = np.linspace(0, 1, 40, dtype=np.float32).reshape(4, 10)
    rgb, _ = to_rgb(Image.fromarray(floats, mode="F"))
    assert np.array_equal(np.asarray(rgb)[..., 1], np.rint(floats * 255).astype(np.uint8))


def test_alpha_is_composited_over_white():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    rgb, note = to_rgb(Image.fromarray(rgba, mode="RGBA"))
    alpha = rgba[..., 3:4] / 255.0
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
    assert note == "alpha" and np.abs(np.asarray(rgb) - expected).max() <= 1


def test_transparent_palette_entry_becomes_white():
    palette_image = photo().convert("P")
    index = np.asarray(palette_image)[0, 0]
    decoded = decode_image(encode(palette_image, "PNG", transparency=int(index)), "png")
    pixels = np.asarray(decoded.image)
    assert decoded.notes == ("palette",)
    assert (pixels[np.asarray(palette_image) == index] == 255).all()


def test_jpeg_draft_decoding_matches_full_decoding_after_the_resize():
    big = photo(1024, 768)
    data = encode(big, "JPEG", quality=95)
    fast = decode_image(data, "jpg", draft_size=64)
    full = decode_image(data, "jpg")
    assert fast.image.size[0] < full.image.size[0]  # the draft really decoded fewer pixels
    a, _ = resize_crop(fast.image, 64)
    b, _ = resize_crop(full.image, 64)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_max_pixels_limit_and_exif_rotation():
    assert decode_image(encode(photo(), "PNG"), "png", max_pixels=100).reason == "too_large"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(photo(48, 40), "JPEG", exif=exif.tobytes()), "jpg")
    assert decoded.image.size == (40, 48) and "exif_rotated" in decoded.notes


def test_skip_fraction_waits_for_enough_samples_then_stops():
    counter = SkipCounter("train", max_skip_fraction=0.1)
    for _ in range(5):
        counter.record_skip("corrupt", "k", "shard.tar", "bad")
    counter.check()  # 5 of 5 skipped, but too few samples to judge mid-stream
    with pytest.raises(DataError, match="5 of 5 samples"):
        counter.check(final=True)
    counter = SkipCounter("train", max_skip_fraction=0.1)
    for i in range(MIN_SAMPLES_FOR_CHECK):
        if i % 10:
            counter.record_ok()
        else:
            counter.record_skip("empty")
    counter.check()  # exactly 10 %: allowed
    counter.record_skip("empty")
    with pytest.raises(DataError, match="max_skip_fraction=0.1"):
        counter.check()
    assert counter.take()["skipped"] == {"empty": MIN_SAMPLES_FOR_CHECK // 10 + 1}
