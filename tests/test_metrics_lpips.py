"""The frozen LPIPS wrapper: no download, equals the lpips package on the same weights, frozen in
training loops, gradients only to the input, and clear errors for missing or wrong weight files."""

from __future__ import annotations

import os

import lpips
import pytest
import torch
import torchvision

from vartok.nets.lpips import LPIPS, LPIPSLoss
from vartok.nets.weights import WeightsFileError, WeightsNotFoundError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """An empty torch hub cache, and any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)


def _vgg16_features_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG16 state dict (features only: the classifier is not used by LPIPS)."""
    torch.manual_seed(seed)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def _images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_random_init_equals_the_lpips_package_with_the_same_weights() -> None:
    ours = LPIPS(random_init=True, seed=3)
    reference = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False, use_dropout=True)
    reference.load_state_dict(ours.net.state_dict())
    reference.eval()
    x, y = _images(0), _images(1)
    expected = reference(x, y, normalize=True).flatten()
    assert torch.allclose(ours(x, y), expected, rtol=1e-5, atol=1e-7)
    assert (ours(x, y) > 0).all() and torch.allclose(ours(x, x), torch.zeros(2), atol=1e-6)


def test_same_seed_same_network_and_frozen_in_training() -> None:
    loss = LPIPSLoss(random_init=True, seed=5)
    other = LPIPS(random_init=True, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(loss.state_dict().values(), other.state_dict().values()))
    loss.train()
    assert not loss.training and not any(m.training for m in loss.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in loss.modules())
    x = _images(2).requires_grad_(True)
    y = _images(3)
    first, second = loss(x, y), loss(x, y)
    assert first.dim() == 0 and torch.equal(first, second)
    first.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())


def test_loads_a_torchvision_vgg16_file_into_the_backbone(tmp_path) -> None:
    state = _vgg16_features_state()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    net = LPIPS(vgg_weights=path)
    assert torch.equal(net.net.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(net.net.net.slice3, "14").weight, state["features.14.weight"])
    assert torch.equal(getattr(net.net.net.slice5, "28").bias, state["features.28.bias"])
    shipped = torch.load(lpips.__path__[0] + "/weights/v0.1/vgg.pth", map_location="cpu", weights_only=True)
    assert torch.equal(net.net.lin2.model[1].weight, shipped["lin2.model.1.weight"])


def test_found_in_the_hub_cache(tmp_path) -> None:
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(_vgg16_features_state(), cache / "vgg16-397923af.pth")
    LPIPS()


def test_missing_weights_error_names_file_folder_and_flag(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        LPIPS()
    message = str(err.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--lpips-weights" in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        LPIPS(vgg_weights=tmp_path / "typo.pth")


def test_wrong_shape_weights_name_the_file(tmp_path) -> None:
    state = _vgg16_features_state()
    state["features.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsFileError, match="bad.pth.*features|bad.pth.*slice1.0.weight"):
        LPIPS(vgg_weights=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsFileError, match="bad.pth"):
        LPIPS(vgg_weights=path)
