"""PSNR / SSIM against scikit-image, and the running means over batches against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vartok.metrics.quality import QualityMeter, ssim_per_image
from vartok.pixels import psnr_per_image


def _pair(seed: int, batch: int = 5, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 3, size, size, generator=g)
    noisy = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return noisy.double(), target.double()


def test_psnr_matches_skimage() -> None:
    images, targets = _pair(0)
    ours = psnr_per_image(images, targets)
    for i in range(images.shape[0]):
        ref = peak_signal_noise_ratio(targets[i].numpy(), images[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-10)


def test_psnr_of_uint8_images_is_exact() -> None:
    g = torch.Generator().manual_seed(7)
    targets = torch.randint(0, 256, (4, 3, 20, 20), generator=g, dtype=torch.uint8)
    images = (targets.int() + torch.randint(-9, 10, targets.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    ours = psnr_per_image(images, targets)
    for i in range(4):
        ref = peak_signal_noise_ratio(targets[i].numpy(), images[i].numpy(), data_range=255)
        assert ours[i].item() == pytest.approx(ref, rel=1e-12)
    assert ours.tolist() == pytest.approx(psnr_per_image(images / 255, targets / 255).tolist(), rel=1e-5)


def test_psnr_of_identical_images_is_finite() -> None:
    images, _ = _pair(1)
    assert torch.isfinite(psnr_per_image(images, images)).all()


def _ssim_map_numpy(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM map (C,H,W) from scipy Gaussian filters (σ 1.5, radius 5, mirrored borders), full image."""
    def blur(x: np.ndarray) -> np.ndarray:
        return np.stack([gaussian_filter(c, sigma=1.5, mode="mirror", truncate=5 / 1.5) for c in x])

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(image), blur(target)
    var_x = np.maximum(blur(image * image) - mu_x**2, 0)
    var_y = np.maximum(blur(target * target) - mu_y**2, 0)
    cov = blur(image * target) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def test_ssim_matches_scipy_oracle_and_skimage_inside_the_border() -> None:
    images, targets = _pair(2, size=32)
    ours = ssim_per_image(images, targets)
    for i in range(images.shape[0]):
        ssim_map = _ssim_map_numpy(images[i].numpy(), targets[i].numpy())
        # torchmetrics averages the whole map (mirrored borders)
        assert ours[i].item() == pytest.approx(ssim_map.mean(), abs=1e-9)
        # the oracle itself: skimage averages the same map without a 5-pixel border
        ref = structural_similarity(targets[i].numpy(), images[i].numpy(), data_range=1.0, channel_axis=0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ssim_map[:, 5:-5, 5:-5].mean() == pytest.approx(ref, abs=1e-9)


def test_meter_means_over_batches_equal_numpy_over_all_images() -> None:
    parts = [_pair(s, batch=b) for s, b in ((3, 4), (4, 1), (5, 3))]
    meter = QualityMeter({"psnr", "ssim"})
    for images, targets in parts:
        meter.update(images.float(), targets.float())
    meter.update(torch.zeros(0, 3, 24, 24), torch.zeros(0, 3, 24, 24))  # an all-padding batch adds nothing
    images = torch.cat([p[0] for p in parts])
    targets = torch.cat([p[1] for p in parts])
    psnr = [peak_signal_noise_ratio(t.numpy(), i.numpy(), data_range=1.0) for i, t in zip(images, targets)]
    ssim = [_ssim_map_numpy(i.numpy(), t.numpy()).mean() for i, t in zip(images, targets)]
    out = meter.compute()
    assert set(out) == {"psnr", "ssim"}
    assert out["psnr"] == pytest.approx(np.mean(psnr), rel=1e-5)
    assert out["ssim"] == pytest.approx(np.mean(ssim), rel=1e-5)
