"""Robust image decoding: bytes -> loaded RGB PIL image, or the reason it cannot be used.

Every image file a user collection can contain goes through `decode_image`. Nothing raises: the result says
either what was converted on the way to RGB (`notes`, e.g. ``"cmyk"``) or why the image is skipped
(`reason`, e.g. ``"truncated"``). The reason and note names are the keys of the counts reported to users.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Skip reasons (the image is left out).
EMPTY = "empty"  # zero bytes
NOT_AN_IMAGE = "not_an_image"  # PIL does not recognise the bytes
TRUNCATED = "truncated"  # the header is fine, the pixel data ends early
CORRUPT = "corrupt"  # recognised but undecodable (bad header, broken stream, zero size)
TOO_LARGE = "too_large"  # more pixels than max_pixels (decompression-bomb guard)
UNSUPPORTED_MODE = "unsupported_mode"  # a pixel mode we cannot turn into RGB
MISSING_IMAGE = "missing_image"  # a shard sample without any image member
SHARD_ERROR = "shard_error"  # an unreadable or truncated tar shard (counted once per event)

# Conversion notes (the image is used after converting it).
GRAYSCALE, PALETTE, ALPHA, CMYK = "grayscale", "palette", "alpha", "cmyk"
HIGH_BIT_DEPTH, BILEVEL, OTHER_MODE = "high_bit_depth", "bilevel", "other_mode"
WRONG_EXTENSION, EXIF_ROTATED, MULTI_FRAME, UPSCALED = "wrong_extension", "exif_rotated", "multi_frame", "upscaled"

# File extension -> the PIL formats that may legitimately carry it.
EXTENSION_FORMATS: dict[str, tuple[str, ...]] = {
    "jpg": ("JPEG", "MPO"), "jpeg": ("JPEG", "MPO"), "png": ("PNG",), "webp": ("WEBP",), "bmp": ("BMP",),
    "gif": ("GIF",), "tif": ("TIFF",), "tiff": ("TIFF",), "ppm": ("PPM",), "pgm": ("PPM",), "pbm": ("PPM",),
    "pnm": ("PPM",), "jp2": ("JPEG2000",),
}
# Extensions a shard member may have to be read as the sample's image, most preferred first.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(EXTENSION_FORMATS) + ("img", "image")
# PIL format -> the extension make-shards stores it under (other formats are re-encoded as PNG).
FORMAT_EXTENSION: dict[str, str] = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif",
    "PPM": "ppm",
}
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Decoded:
    """The outcome of decoding one image.

    Args:
        image: the loaded RGB image, or None when skipped.
        reason: why it was skipped (one of the skip reasons above), or None.
        notes: conversions applied on the way to RGB.
        detail: a short human explanation (the PIL message) for logs and manifests.
        format: the PIL format name ("JPEG", "PNG", ...) when recognised.
    """

    image: Image.Image | None
    reason: str | None = None
    notes: tuple[str, ...] = ()
    detail: str = ""
    format: str | None = None


def decode_image(data: bytes, ext: str | None = None, max_pixels: int | None = None,
                 draft_size: int | None = None) -> Decoded:
    """Decode image bytes into an RGB image, never raising.

    Args:
        data: the encoded file.
        ext: the file or member extension (without dot), used only to note a mismatch with the content.
        max_pixels: images with more pixels are skipped as ``too_large``; default PIL's MAX_IMAGE_PIXELS.
        draft_size: when set, a large JPEG is decoded at a reduced DCT scale that keeps its shorter side at
            least this many pixels (much faster, same result after the final resize).
    """
    if len(data) == 0:
        return Decoded(None, EMPTY, detail="zero bytes")
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF and palette warnings
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            return Decoded(None, NOT_AN_IMAGE, detail="not a recognised image format")
        except Image.DecompressionBombError as err:
            return Decoded(None, TOO_LARGE, detail=str(err)[:200])
        except Exception as err:  # noqa: BLE001 - PIL raises SyntaxError, OSError, ValueError, struct.error...
            return _failed(err, None)
        fmt = im.format
        width, height = im.size
        if width <= 0 or height <= 0:
            return Decoded(None, CORRUPT, detail=f"image size {width}x{height}", format=fmt)
        if limit and width * height > limit:
            return Decoded(None, TOO_LARGE, detail=f"{width}x{height} pixels exceeds max_pixels={limit}",
                           format=fmt)
        notes = []
        if ext is not None and ext.lower() in EXTENSION_FORMATS and fmt not in EXTENSION_FORMATS[ext.lower()]:
            notes.append(WRONG_EXTENSION)
        if getattr(im, "n_frames", 1) > 1:
            notes.append(MULTI_FRAME)
        if draft_size and fmt == "JPEG":
            _draft(im, draft_size)
        try:
            im.load()
        except Exception as err:  # noqa: BLE001
            return _failed(err, fmt)
        return _finish(im, notes, fmt)


def _failed(err: Exception, fmt: str | None) -> Decoded:
    """A decoding exception -> ``truncated`` (data ends early) or ``corrupt`` (anything else)."""
    text = f"{type(err).__name__}: {err}"[:200]
    return Decoded(None, TRUNCATED if "truncated" in text.lower() else CORRUPT, detail=text, format=fmt)


def _draft(im: Image.Image, min_side: int) -> None:
    """Ask libjpeg for a 1/2, 1/4 or 1/8 scale decode that keeps the shorter side >= min_side."""
    width, height = im.size
    scale = min_side / min(width, height)
    if scale < 0.5:
        im.draft(im.mode if im.mode in ("RGB", "L") else None, (int(width * scale) + 1, int(height * scale) + 1))


def _finish(im: Image.Image, notes: list[str], fmt: str | None) -> Decoded:
    """Apply EXIF orientation and the mode conversion, turning failures into a skip reason."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if fmt in ("JPEG", "MPO", "TIFF", "WEBP", "PNG") else 1
        if orientation not in (1, None):
            im = ImageOps.exif_transpose(im)
            notes.append(EXIF_ROTATED)
        rgb, note = to_rgb(im)
    except Exception as err:  # noqa: BLE001
        return Decoded(None, UNSUPPORTED_MODE, detail=f"mode {im.mode}: {type(err).__name__}: {err}"[:200],
                       format=fmt)
    if note:
        notes.append(note)
    return Decoded(rgb, None, tuple(notes), format=fmt)


def to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to 8-bit RGB; return the image and the conversion note (None if already RGB).

    Transparent pixels are composited over white. 16-bit, 32-bit integer and float images are rescaled to
    8 bits (16-bit: value/257; float in [0, 1]: value*255; anything else: min-max) rather than clipped.

    Args:
        im: a loaded PIL image of any mode.
    """
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode == "L":
        return im.convert("RGB"), GRAYSCALE
    if mode == "1":
        return im.convert("L").convert("RGB"), BILEVEL
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in im.info:
            return _over_white(im.convert("RGBA")), PALETTE
        return im.convert("RGB"), PALETTE
    if mode in ("RGBA", "LA", "La", "RGBa"):
        return _over_white(im.convert("RGBA")), ALPHA
    if mode == "CMYK":
        return im.convert("RGB"), CMYK
    if mode.startswith("I") or mode == "F":
        return _rescale_deep(im), HIGH_BIT_DEPTH
    return im.convert("RGB"), OTHER_MODE


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _rescale_deep(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image -> RGB uint8 (see `to_rgb`)."""
    values = np.asarray(im).astype(np.float64)  # (H, W)
    if values.ndim == 3:
        values = values[..., 0]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and low >= 0 and high <= 65535 and high > 255):
        scaled = values / 257.0
    elif im.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")
