"""Stand-ins for offline tests: randomly initialised FID weights and a tiny deterministic tokenizer.

Nothing here downloads. The random Inception file has exactly the shapes of torch-fidelity's
weights-inception-2015-12-05-6726825d.pth, so every code path that loads the real file can be exercised.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3


class _UnloadedInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's FID Inception with its weight loading skipped (fresh random parameters)."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return None


def _smooth_random_images(count: int, size: int, generator: torch.Generator) -> Tensor:
    low = torch.rand(count, 3, 4, 4, generator=generator)
    images = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    images = images + 0.1 * torch.randn(count, 3, size, size, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def make_random_inception_weights(path: str | os.PathLike, images: Tensor | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised FID Inception-v3 weights file that gives informative features.

    Convolutions get a variance-preserving (He, fan-in) init; every batch norm's running mean and variance
    are estimated on `images` in one training-mode pass (cumulative average), so that in eval mode each
    layer's activations are normalised — without it the deep features would be nearly constant.

    Args:
        path: where to write the state dict (torch.save of plain tensors).
        images: uint8 (B,3,H,W) calibration images, B ≥ 2; smooth random images when None.
        seed: seed of the initialisation.
    """
    generator = torch.Generator().manual_seed(seed)
    if images is None:
        images = _smooth_random_images(8, 64, generator)
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        net = _UnloadedInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average: one pass gives the batch statistics
        net.train()
        net(images)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


class TinyFeatureNet(nn.Module):
    """A cheap deterministic stand-in for the FID network: uint8 (B,3,H,W) → (B, num_features), a fixed
    random projection of 4×4 mean colours through tanh. Counts its calls and the images it saw."""

    def __init__(self, num_features: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.num_features = num_features
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(48, num_features, generator=generator))
        self.images_seen = 0

    def forward(self, images: Tensor) -> Tensor:
        self.images_seen += images.shape[0]
        pooled = F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)  # (B, 48)
        return torch.tanh(pooled @ self.proj)


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo_crops(count: int, size: int = 32, seed: int = 0) -> Tensor:
    """Random crops of photographs shipped inside scikit-image (no download), uint8 (count,3,size,size).

    Args:
        count: number of crops.
        size: crop side; photos are first shrunk to a 128-pixel width so crops hold whole objects.
        seed: crop positions.
    """
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()[..., :3]).convert("RGB")
        width = max(128, size)
        photos.append(np.asarray(photo.resize((width, max(size, photo.height * width // photo.width)))))
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - size + 1)
        x = rng.integers(0, photo.shape[1] - size + 1)
        crops.append(photo[y : y + size, x : x + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


class FakeEncoding(NamedTuple):
    """What ``encode`` returns: indices int64 (B, N) or (B, N, G)."""

    indices: Tensor


class ThumbnailTokenizer(nn.Module):
    """A deterministic stand-in tokenizer: the tokens are the 8-bit values of a g×g RGB thumbnail.

    N = 3·g² tokens, ordered pixel by pixel (R, G, B); token values are 8-bit (256 codes, 8 bits per token).
    ``decode`` with k tokens fills the missing values with the mean of the known ones and upsamples
    bilinearly, so quality grows with k. With ``groups=2`` each token is two 4-bit symbols (B, N, 2),
    like grouped codes. Every operation is per sample, so results do not depend on the batch.

    Args:
        image_size: side of the square images (H = W).
        grid: thumbnail side g.
        groups: 1 (indices (B, N)) or 2 (indices (B, N, 2) of 4-bit symbols).
    """

    def __init__(self, image_size: int = 16, grid: int = 2, groups: int = 1) -> None:
        super().__init__()
        if groups not in (1, 2):
            raise ValueError(f"groups must be 1 or 2, got {groups!r}.")
        self.image_size, self.grid, self.groups = image_size, grid, groups
        self.num_tokens = 3 * grid * grid
        self.codebook_size = 256
        self.bits_per_token = 8.0
        self.register_buffer("calls", torch.zeros(2, dtype=torch.long))  # [encode, decode] counters

    def encode(self, images: Tensor) -> FakeEncoding:
        """images float (B,3,H,W) in [0,1] → FakeEncoding(indices)."""
        self.calls[0] += 1
        thumb = F.adaptive_avg_pool2d(images.float(), self.grid)  # (B, 3, g, g)
        values = (thumb.clamp(0, 1) * 255).round().long()
        tokens = values.permute(0, 2, 3, 1).reshape(images.shape[0], self.num_tokens)  # (B, N)
        if self.groups == 2:
            tokens = torch.stack([tokens // 16, tokens % 16], dim=-1)  # (B, N, 2)
        return FakeEncoding(tokens)

    def decode(self, indices: Tensor, length: int | Tensor | None = None) -> Tensor:
        """indices (B, N[, G]) → images (B,3,H,W) in [0,1] from the first `length` tokens."""
        self.calls[1] += 1
        if self.groups == 2:
            indices = indices[..., 0] * 16 + indices[..., 1]
        batch = indices.shape[0]
        keep = torch.full((batch,), self.num_tokens) if length is None else torch.as_tensor(length)
        keep = keep.expand(batch) if keep.dim() == 0 else keep
        if int(keep.min()) < 1 or int(keep.max()) > self.num_tokens:
            raise ValueError(f"length must be in [1, {self.num_tokens}], got {length!r}.")
        values = indices.float() / 255  # (B, N)
        known = torch.arange(self.num_tokens, device=indices.device)[None] < keep.to(indices.device)[:, None]
        mean = (values * known).sum(1, keepdim=True) / known.sum(1, keepdim=True)
        values = torch.where(known, values, mean)
        thumb = values.reshape(batch, self.grid, self.grid, 3).permute(0, 3, 1, 2)  # (B, 3, g, g)
        size = (self.image_size, self.image_size)
        return F.interpolate(thumb, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
