"""vartok's FID equals torch-fidelity's FID on the same images with the same Inception weights file, and a
plain numpy/scipy FID of the same features. The weights are random (no download) but informative: He-init
convolutions and batch-norm statistics estimated on photographs (tests/fixtures/doubles.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch_fidelity
from torch.utils.data import Dataset

from tests.fixtures.doubles import make_random_inception_weights, photo_crops
from vartok.metrics.fid import FIDBank, fid_from_features
from vartok.nets.inception import build_inception

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Images(Dataset):
    """uint8 (3,H,W) tensors, what torch-fidelity reads."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    return str(make_random_inception_weights(path, photo_crops(12, 64, seed=99), seed=0))


def _two_sets(count: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Originals and a degraded copy (8-pixel thumbnail upsampled, plus noise), like coarse reconstructions."""
    originals = photo_crops(count, size, seed=1)
    small = torch.nn.functional.interpolate(originals.float(), size=8, mode="area")
    coarse = torch.nn.functional.interpolate(small, size=size, mode="bilinear", align_corners=False)
    noise = torch.randn(coarse.shape, generator=torch.Generator().manual_seed(2)) * 8
    return originals, (coarse + noise).round().clamp(0, 255).to(torch.uint8)


def _vartok_fid(weights: str, feature: int, originals: torch.Tensor, recons: torch.Tensor):
    """vartok's FID, and the features its network produced (recorded by a hook) for the numpy oracle."""
    bank = FIDBank(build_inception(weights, feature))
    seen: list[torch.Tensor] = []
    bank.network.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    for start in range(0, originals.shape[0], 25):  # batches of uneven size: 25, 25, ..., rest
        bank.update_reference(originals[start : start + 25])
        bank.update("recon", recons[start : start + 25])
    features_a, features_b = torch.cat(seen[0::2]).numpy(), torch.cat(seen[1::2]).numpy()
    return bank.compute("recon"), features_a, features_b


def _fidelity_fid(weights: str, feature: int, originals: torch.Tensor, recons: torch.Tensor) -> float:
    metrics = torch_fidelity.calculate_metrics(
        input1=_Images(recons), input2=_Images(originals), fid=True, feature_layer_fid=str(feature),
        feature_extractor_weights_path=weights, cuda=False, cache=False, verbose=False, batch_size=32,
        save_cpu_ram=True,
    )
    return metrics["frechet_inception_distance"]


def _check(weights: str, feature: int, count: int, rel: float) -> None:
    originals, recons = _two_sets(count)
    ours, features_a, features_b = _vartok_fid(weights, feature, originals, recons)
    reference = _fidelity_fid(weights, feature, originals, recons)
    print(f"FID {feature}: vartok {ours!r} torch-fidelity {reference!r}")
    assert ours > 0  # informative features: the sets differ
    assert ours == pytest.approx(reference, rel=rel)
    assert np.std(features_a, axis=0).mean() > 1e-3  # not constant features
    assert ours == pytest.approx(fid_from_features(features_a, features_b), rel=rel)


def test_fid_equals_torch_fidelity_64_features(weights: str) -> None:
    _check(weights, 64, count=72, rel=1e-6)  # more images than feature dimensions


@pytest.mark.slow
def test_fid_equals_torch_fidelity_2048_features(weights: str) -> None:
    _check(weights, 2048, count=300, rel=1e-3)
