"""Per-image fidelity: PSNR and SSIM (torchmetrics, data_range=1.0) and LPIPS, averaged over images.

Every statistic is a torchmetrics sum state (MeanMetric, StructuralSimilarityIndexMeasure), so under
torch.distributed each image counts exactly once over all ranks. PSNR is the MEAN OVER IMAGES of the
per-image PSNR (not the PSNR of the pooled MSE), `vartok.pixels.psnr_per_image`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import StructuralSimilarityIndexMeasure

from vartok.pixels import psnr_per_image


def ssim_per_image(images: Tensor, targets: Tensor, chunk: int = 16) -> Tensor:
    """SSIM (torchmetrics: Gaussian window 11, σ 1.5, data range 1.0), per image.

    Args:
        images, targets: (B,3,H,W) float in [0,1].
        chunk: images per call (bounds memory on large images).
    Returns:
        (B,) in the input dtype.
    """
    parts = [structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
             for x, y in zip(images.split(chunk), targets.split(chunk))]
    return torch.cat(parts) if parts else images.new_zeros(0)


class QualityMeter(nn.Module):
    """Running means of PSNR, SSIM and (optionally) LPIPS over valid images, for one reconstruction set.

    Args:
        metrics: which of "psnr", "ssim", "lpips" to accumulate.
        lpips_net: the frozen LPIPS network (required when "lpips" is in `metrics`).
    """

    def __init__(self, metrics: set[str], lpips_net: nn.Module | None = None) -> None:
        super().__init__()
        self.psnr = MeanMetric() if "psnr" in metrics else None
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0) if "ssim" in metrics else None
        self.lpips = MeanMetric() if "lpips" in metrics and lpips_net is not None else None
        self._lpips_net = [lpips_net]  # a list: not registered as a submodule, never moved or saved twice

    @torch.no_grad()
    def update(self, images: Tensor, targets: Tensor) -> None:
        """Add reconstructions `images` of `targets`, both (B,3,H,W) float in [0,1]; B may be 0."""
        if images.shape[0] == 0:
            return
        if self.psnr is not None:
            self.psnr.update(psnr_per_image(images, targets).double())
        if self.ssim is not None:
            self.ssim.update(images, targets)
        if self.lpips is not None:
            self.lpips.update(self._lpips_net[0](images, targets).double())

    def compute(self) -> dict[str, float]:
        """Means over all images seen (synced over ranks): {"psnr", "ssim", "lpips"} as requested."""
        out = {}
        for name in ("psnr", "ssim", "lpips"):
            metric = getattr(self, name)
            if metric is not None:
                out[name] = float(metric.compute())
        return out
