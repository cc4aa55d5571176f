"""Codec baselines on the same images: Pillow JPEG, Pillow WebP, bicubic thumbnails.

- JPEG and WebP: Pillow's encoder at a sweep of qualities; the rate is the WHOLE FILE as written (headers
  included), decoded back with Pillow.
- Thumbnail: a w×w 8-bit RGB image (Pillow bicubic downsample, which is antialiased) upsampled back with
  bicubic; its rate is w²·3 bytes (no container).
For a byte budget, each image takes the setting with the best PSNR (and, separately, the best SSIM) among
those whose file fits in ≤ budget bytes — an oracle rate control; a codec is "infeasible" at a budget if
any image has no setting that fits. All sums are torchmetrics states: exact over DDP ranks.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from vartok.metrics.quality import ssim_per_image
from vartok.pixels import psnr_per_image

CODECS = ("jpeg", "webp", "thumbnail")
JPEG_QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
INFEASIBLE = "infeasible"


class Setting(NamedTuple):
    """One point of a codec sweep: codec name and its parameter (quality, or thumbnail width)."""

    codec: str
    param: int


def thumbnail_widths(image_size: int) -> list[int]:
    """Thumbnail sides w: every w up to 16, then a few larger ones, all below the image side."""
    widths = list(range(1, 17)) + [20, 24, 32, 48, 64, 96, 128, 192]
    return [w for w in widths if w < image_size]


def codec_settings(image_size: int) -> list[Setting]:
    """The full sweep for images of side `image_size`, codec by codec."""
    return (
        [Setting("jpeg", q) for q in JPEG_QUALITIES]
        + [Setting("webp", q) for q in WEBP_QUALITIES]
        + [Setting("thumbnail", w) for w in thumbnail_widths(image_size)]
    )


def encode_decode(image: Image.Image, setting: Setting) -> tuple[np.ndarray, int]:
    """Compress and decompress one RGB image.

    Args:
        image: an RGB Pillow image.
        setting: codec and parameter.
    Returns:
        (decoded uint8 array (H, W, 3), bytes of the compressed representation).
    """
    if setting.codec == "thumbnail":
        side = setting.param
        small = image.resize((side, side), Image.Resampling.BICUBIC)
        return np.asarray(small.resize(image.size, Image.Resampling.BICUBIC)), side * side * 3
    buffer = io.BytesIO()
    image.save(buffer, format=setting.codec.upper(), quality=setting.param)
    nbytes = buffer.tell()
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")), nbytes


def baseline_table(images: Tensor, settings: list[Setting], device: str | torch.device = "cpu") -> Tensor:
    """Bytes, PSNR and SSIM of every image under every setting.

    Args:
        images: uint8 (B,3,H,W).
        settings: the sweep (see :func:`codec_settings`).
        device: where PSNR and SSIM are computed (codecs always run on the CPU; SSIM of the whole sweep is
            the costly part at large sizes, cheap on a GPU).
    Returns:
        float64 (B, S, 3) on `device`: [bytes, psnr, ssim].
    """
    rows = []
    for image in images.cpu():
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        decoded, nbytes = zip(*(encode_decode(pil, s) for s in settings))
        recon = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(device)  # uint8 (S, 3, H, W)
        target = image.to(device).expand_as(recon)
        psnr = psnr_per_image(recon, target)  # exact integer MSE
        ssim = ssim_per_image(recon.float() / 255, target.float() / 255).double()
        rows.append(torch.stack([torch.tensor(nbytes, dtype=torch.float64, device=device), psnr, ssim], dim=1))
    return torch.stack(rows)


class BaselineStats(Metric):
    """Codec curves and best-at-budget figures, accumulated over images.

    Args:
        image_size: image side (sets the thumbnail sweep).
        budgets: byte budgets (the tokenizer's bytes per image at each evaluated length).
    """

    full_state_update = False

    def __init__(self, image_size: int, budgets: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = codec_settings(image_size)
        self.budgets = [int(b) for b in budgets]
        num_settings, num_budgets = len(self.settings), len(self.budgets)
        self.codec_of = torch.tensor([CODECS.index(s.codec) for s in self.settings])
        self.add_state("curve_sum", torch.zeros(num_settings, 3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # [best-psnr setting's bytes, best psnr, best ssim], summed over images where the codec fits
        self.add_state("best_sum", torch.zeros(num_budgets, len(CODECS), 3, dtype=torch.float64), "sum")
        self.add_state("feasible", torch.zeros(num_budgets, len(CODECS), dtype=torch.float64), "sum")

    def update(self, images: Tensor) -> None:
        """Add uint8 (B,3,H,W) images (B may be 0)."""
        if images.shape[0] == 0:
            return
        table = baseline_table(images, self.settings, self.curve_sum.device)  # (B, S, 3)
        self.curve_sum += table.sum(0)
        self.count += table.shape[0]
        for b, budget in enumerate(self.budgets):
            for c in range(len(CODECS)):
                cols = table[:, (self.codec_of == c).to(table.device)]  # (B, S_c, 3)
                fits = cols[..., 0] <= budget  # (B, S_c)
                ok = fits.any(1)  # (B,)
                if not ok.any():
                    continue
                psnr = cols[..., 1].masked_fill(~fits, -torch.inf)
                ssim = cols[..., 2].masked_fill(~fits, -torch.inf)
                pick = psnr.argmax(1, keepdim=True)
                best = torch.stack(
                    [cols[..., 0].gather(1, pick)[:, 0], psnr.max(1).values, ssim.max(1).values], dim=1
                )
                self.best_sum[b, c] += best[ok].sum(0)
                self.feasible[b, c] += ok.sum()

    def compute(self) -> dict:
        """{"curves": {codec: [{"quality"|"width", "bytes", "psnr", "ssim"}...]},
        "best": {budget: {codec: {"bytes", "psnr", "ssim"[, "width"]} | "infeasible"}},
        "num_images": images measured} (means over images)."""
        count = float(self.count)
        curves: dict[str, list[dict]] = {c: [] for c in CODECS}
        for setting, sums in zip(self.settings, (self.curve_sum / max(count, 1.0)).tolist()):
            key = "width" if setting.codec == "thumbnail" else "quality"
            curves[setting.codec].append({key: setting.param, "bytes": sums[0], "psnr": sums[1], "ssim": sums[2]})
        best: dict[int, dict] = {}
        for b, budget in enumerate(self.budgets):
            best[budget] = {}
            for c, codec in enumerate(CODECS):
                if count == 0 or float(self.feasible[b, c]) < count:
                    best[budget][codec] = INFEASIBLE
                    continue
                sums = (self.best_sum[b, c] / count).tolist()
                entry = {"bytes": sums[0], "psnr": sums[1], "ssim": sums[2]}
                if codec == "thumbnail":
                    entry["width"] = max(s.param for s in self.settings if s.codec == codec and 3 * s.param**2 <= budget)
                best[budget][codec] = entry
        return {"curves": curves, "best": best, "num_images": int(count)}
