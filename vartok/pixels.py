"""The pixel conventions every fidelity figure shares: a reconstruction is judged as it would be saved (8 bits),
and PSNR is the per-image PSNR of that image against the original. Used by the evaluation (report.json's
`psnr`), the training module's `val/psnr` and `choose_length`'s target, so the three are the same number."""

from __future__ import annotations

import torch
from torch import Tensor

MSE_FLOOR = 1e-10  # of the range squared: an exact reconstruction gives 100 dB, not inf


def to_uint8(images: Tensor) -> Tensor:
    """(B,3,H,W) float in [0,1] → uint8, clamped and rounded: the image as it would be saved."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def psnr_per_image(images: Tensor, targets: Tensor) -> Tensor:
    """PSNR in dB with data range 1.0 (255 for uint8), per image; the MSE is floored at MSE_FLOOR.

    Args:
        images, targets: (B,3,H,W), each uint8 or float in [0,1]; both uint8: exact integer squared errors; a
            uint8 side paired with a float one is read as value/255.
    Returns:
        (B,) float64 when either side is uint8, else the dtype of `images`.
    """
    if images.dtype == torch.uint8 and targets.dtype == torch.uint8:
        squared = (images.int() - targets.int()).square().flatten(1).sum(1)  # int64, exact
        mse = (squared.double() / (squared.new_tensor(images[0].numel()).double() * 255.0**2)).clamp_min(MSE_FLOOR)
        return -10.0 * torch.log10(mse)
    dtype = torch.float64 if torch.uint8 in (images.dtype, targets.dtype) else images.dtype
    images, targets = (x.double() / 255 if x.dtype == torch.uint8 else x.double() for x in (images, targets))
    mse = (images - targets).square().flatten(1).mean(1).clamp_min(MSE_FLOOR)
    return (-10.0 * torch.log10(mse)).to(dtype)
