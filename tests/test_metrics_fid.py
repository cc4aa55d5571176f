"""FID accumulation, the Inception weights resolution and its errors, the network being torchmetrics' own."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torchmetrics.image.fid import FrechetInceptionDistance

from tests.fixtures.doubles import TinyFeatureNet, make_random_inception_weights
from vartok.metrics.fid import (
    FIDBank,
    fid_from_features,
    load_reference_stats,
    reference_stats_path,
    save_reference_stats,
)
from vartok.nets.inception import build_inception
from vartok.nets.weights import WeightsFileError, WeightsNotFoundError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inc") / "weights-inception-2015-12-05-6726825d.pth"
    return str(make_random_inception_weights(path, seed=1))


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path / "hub" / "checkpoints"


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_bank_equals_numpy_and_torch_fidelity_formulas_on_the_same_features() -> None:
    net = TinyFeatureNet()
    real, fake_a, fake_b = _images(40, 0), _images(30, 1), (_images(35, 2) // 2)
    bank = FIDBank(net)
    for lo, hi in ((0, 7), (7, 8), (8, 40)):
        bank.update_reference(real[lo:hi])
    bank.update("a", fake_a)
    for lo in range(0, 35, 10):
        bank.update("b", fake_b[lo : lo + 10])
    with torch.no_grad():
        f_real, f_a, f_b = (net(x).double().numpy() for x in (real, fake_a, fake_b))
    for name, feats in (("a", f_a), ("b", f_b)):
        ours = bank.compute(name)
        assert isinstance(ours, float)
        assert ours == pytest.approx(fid_from_features(f_real, feats), rel=1e-9)
        stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (f_real, feats)]
        fidelity = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
        assert ours == pytest.approx(fidelity, rel=1e-9)
    assert bank.compute("a") != pytest.approx(bank.compute("b"))


def test_reference_stats_round_trip(tmp_path, weights: str) -> None:
    net = TinyFeatureNet()
    bank = FIDBank(net)
    bank.update_reference(_images(20, 3))
    bank.update("x", _images(20, 4))
    expected = bank.compute("x")
    path = reference_stats_path(tmp_path, "shards-a", 16, "all", weights, 6)
    assert path != reference_stats_path(tmp_path, "shards-b", 16, "all", weights, 6)
    assert path != reference_stats_path(tmp_path, "shards-a", 32, "all", weights, 6)
    save_reference_stats(path, bank.reference_state())
    cached = FIDBank(net)
    cached.load_reference(load_reference_stats(path))
    cached.update_reference(_images(5, 9))  # ignored: the reference came from the cache
    cached.update("x", _images(20, 4))
    assert cached.compute("x") == pytest.approx(expected, rel=1e-12)
    path.write_bytes(b"garbage")
    assert load_reference_stats(path) is None


def test_network_is_torchmetrics_fid_inception_frozen(weights: str) -> None:
    net = build_inception(weights, 64)
    net.train()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    reference = FrechetInceptionDistance(feature=64, antialias=False, normalize=False,
                                         feature_extractor_weights_path=weights).inception
    images = _images(3, 5)
    with torch.no_grad():
        assert torch.equal(net(images), reference(images))


def test_missing_inception_weights_error_names_file_folder_and_flag(empty_hub, tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        build_inception(None, 2048)
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and str(empty_hub) in message
    assert "--inception-weights" in message
    with pytest.raises(WeightsNotFoundError, match="typo.pth"):
        build_inception(tmp_path / "typo.pth")


def test_found_in_hub_cache(empty_hub, weights: str) -> None:
    empty_hub.mkdir(parents=True)
    os.symlink(weights, empty_hub / "weights-inception-2015-12-05-6726825d.pth")
    assert build_inception(None, 64).weights_path.startswith(str(empty_hub))


def test_wrong_weights_file_is_one_clear_error(tmp_path, weights: str) -> None:
    state = torch.load(weights, weights_only=True)
    state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(3, 3, 1, 1)
    bad = tmp_path / "bad-shape.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsFileError, match=r"bad-shape.pth.*Mixed_7c.branch_pool.conv.weight.*--inception"):
        build_inception(bad, 64)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, bad)
    with pytest.raises(WeightsFileError, match="bad-shape.pth.*missing"):
        build_inception(bad, 64)
    bad.write_text("not weights")
    with pytest.raises(WeightsFileError, match="bad-shape.pth"):
        build_inception(bad, 64)
    with pytest.raises(ValueError, match="feature"):
        build_inception(weights, 100)


def test_fid_from_features_is_zero_for_identical_sets() -> None:
    feats = np.random.default_rng(0).normal(size=(50, 4))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
