"""The evaluation loop against direct computations: one encoder pass per batch, padding never counted,
every figure equal to an independent computation over the valid images, pFID(identity) == rFID exactly,
missing weights listed as unavailable, the report files written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from tests.fixtures.doubles import ThumbnailTokenizer, TinyFeatureNet, photo_crops
from vartok.metrics import EvalPlan, Networks, evaluate
from vartok.metrics.fid import fid_from_features
from vartok.metrics.quality import ssim_per_image
from vartok.nets.lpips import LPIPS
from vartok.nets.weights import WeightsNotFoundError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 16


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return photo_crops(10, SIZE, seed=3)


@pytest.fixture(scope="module")
def lpips_net() -> LPIPS:
    return LPIPS(random_init=True)


@pytest.fixture(autouse=True)
def _empty_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def loader(images: torch.Tensor, batch: int, pad: bool = True) -> list[dict]:
    """Batches of `batch`; the last one padded with invalid copies of image 0 (as the val loader does)."""
    out = []
    for lo in range(0, images.shape[0], batch):
        chunk = images[lo : lo + batch]
        valid = torch.ones(chunk.shape[0], dtype=torch.bool)
        if pad and chunk.shape[0] < batch:
            filler = images[:1].expand(batch - chunk.shape[0], -1, -1, -1)
            chunk = torch.cat([chunk, filler])
            valid = torch.cat([valid, torch.zeros(filler.shape[0], dtype=torch.bool)])
        out.append({"image": chunk, "valid": valid, "key": [f"img{lo + i}" for i in range(chunk.shape[0])]})
    return out


def _decode_u8(tok: ThumbnailTokenizer, images: torch.Tensor, k: int) -> torch.Tensor:
    recon = tok.decode(tok.encode(images.float() / 255).indices, length=k)
    return (recon.clamp(0, 1) * 255).round().to(torch.uint8)


def test_figures_equal_direct_computation(images: torch.Tensor, lpips_net: LPIPS) -> None:
    tok, net = ThumbnailTokenizer(SIZE), TinyFeatureNet()
    lengths = [1, 4, 12]
    report = evaluate(tok, loader(images, 4), EvalPlan(lengths, {"psnr", "ssim", "lpips", "rfid"},
                                                       networks=Networks(net, lpips_net), show=False))
    assert tok.calls.tolist() == [3, 3 * len(lengths)]  # one encoder pass per batch, one decode per k
    assert report["num_images"] == 10 and report["padding_samples"] == 2 and not report["unavailable"]
    reference = tok.encode(images.float() / 255).indices.numpy()
    with torch.no_grad():
        real = net(images).double().numpy()
    for k in lengths:
        entry = report["lengths"][str(k)]
        recon = _decode_u8(ThumbnailTokenizer(SIZE), images, k)
        psnr = [peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=255) for a, b in zip(images, recon)]
        assert entry["psnr"] == pytest.approx(np.mean(psnr), rel=1e-6)
        ssim = ssim_per_image(recon.float() / 255, images.float() / 255).mean().item()
        assert entry["ssim"] == pytest.approx(ssim, rel=1e-5)
        with torch.no_grad():
            lp = lpips_net(recon.float() / 255, images.float() / 255).mean().item()
            fake = net(recon).double().numpy()
        assert entry["lpips"] == pytest.approx(lp, rel=1e-5)
        assert entry["rfid"] == pytest.approx(fid_from_features(real, fake), rel=1e-7)
        assert entry["bytes_per_image"] == k and entry["bpp"] == pytest.approx(8 * k / SIZE**2)
    assert report["lengths"]["1"]["psnr"] < report["lengths"]["12"]["psnr"]
    assert report["codebook"]["distinct_codes"] == len(np.unique(reference))
    assert report["codebook"]["distinct_per_position"] == [len(np.unique(c)) for c in reference.T]


def test_padding_and_batching_do_not_change_results(images: torch.Tensor) -> None:
    plan = EvalPlan([2, 12], {"psnr", "ssim", "rfid"}, networks=Networks(TinyFeatureNet()), show=False)
    padded = evaluate(ThumbnailTokenizer(SIZE), loader(images, 4), plan)
    plain = evaluate(ThumbnailTokenizer(SIZE), loader(images, 3, pad=False), plan)
    for k in ("2", "12"):
        for key in ("psnr", "ssim", "rfid"):
            assert padded["lengths"][k][key] == pytest.approx(plain["lengths"][k][key], rel=1e-6)
        assert padded["lengths"][k]["baselines"] == plain["lengths"][k]["baselines"]
    assert padded["baselines"]["webp"][0]["bytes"] == pytest.approx(plain["baselines"]["webp"][0]["bytes"])


def test_pfid_of_identity_equals_rfid_exactly(images: torch.Tensor) -> None:
    seeds_seen: list[int] = []

    def identity(indices: torch.Tensor, seed: int) -> torch.Tensor:
        seeds_seen.append(seed)
        return indices

    def scramble(indices: torch.Tensor, seed: int, encoding=None) -> torch.Tensor:
        assert encoding is not None and torch.equal(encoding.indices, indices)
        generator = torch.Generator().manual_seed(seed)
        flip = torch.rand(indices.shape, generator=generator) < 0.5
        return torch.where(flip, torch.randint(0, 256, indices.shape, generator=generator), indices)

    def run(batch: int = 4) -> dict:
        plan = EvalPlan([4, 12], {"rfid", "pfid"}, networks=Networks(TinyFeatureNet()),
                        perturbations={"identity": identity, "scramble": scramble}, pfid_seeds=[0, 1],
                        baselines=False, show=False)
        return evaluate(ThumbnailTokenizer(SIZE), loader(images, batch), plan)

    report = run()
    entry = report["lengths"]["12"]
    assert "pfid" not in report["lengths"]["4"]  # default: pFID at the full length N only
    assert entry["pfid"]["identity"]["mean"] == entry["rfid"]
    assert entry["pfid"]["identity"]["per_seed"] == [entry["rfid"], entry["rfid"]]
    assert entry["pfid"]["scramble"]["mean"] > 2 * entry["rfid"]
    assert len(set(seeds_seen)) == len(seeds_seen) == 10 * 2  # one seed per (image key, seed)
    again = run(batch=3)["lengths"]["12"]["pfid"]["scramble"]  # fixed seeds, whatever the batching
    assert again["per_seed"] == pytest.approx(entry["pfid"]["scramble"]["per_seed"], rel=1e-6)


def test_missing_weights_are_listed_unavailable_never_substituted(images: torch.Tensor, tmp_path) -> None:
    report = evaluate(ThumbnailTokenizer(SIZE), loader(images, 4), EvalPlan(
        [12], {"psnr", "lpips", "rfid", "pfid"}, perturbations={"identity": lambda i, s: i}, baselines=False, show=False))
    entry = report["lengths"]["12"]
    assert "psnr" in entry and not {"lpips", "rfid", "pfid"} & set(entry)
    assert "vgg16-397923af.pth" in report["unavailable"]["lpips"]
    assert "--inception-weights" in report["unavailable"]["rfid"] and "pfid" in report["unavailable"]
    with pytest.raises(WeightsNotFoundError, match="typo.pth"):
        evaluate(ThumbnailTokenizer(SIZE), loader(images, 4),
                 EvalPlan([12], {"rfid"}, networks=Networks(inception_weights=tmp_path / "typo.pth"), show=False))


def test_writes_report_json_rd_and_grid(images: torch.Tensor, tmp_path) -> None:
    tok = ThumbnailTokenizer(SIZE, groups=2)
    report = evaluate(tok, loader(images, 4), EvalPlan([1, 2, 12], {"psnr", "ssim"}, grid_images=3, show=True),
                      tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert list(saved)[:8] == ["num_images", "image_size", "tokenizer", "lengths", "codebook", "baselines",
                               "skipped", "unavailable"]
    assert saved["tokenizer"]["codebook_size"] == 256 and saved["codebook"]["groups"] == 2
    assert set(saved["baselines"]) == {"jpeg", "webp", "thumbnail"}
    assert saved["lengths"]["1"]["baselines"]["jpeg"] == "infeasible"
    assert saved["lengths"]["12"]["baselines"]["thumbnail"]["width"] == 2
    assert saved["lengths"] == json.loads(json.dumps(report["lengths"]))
    for name in ("rd.png", "grid.png"):
        with Image.open(tmp_path / name) as png:
            assert png.format == "PNG" and png.size[0] > 200


def test_reference_statistics_cache(images: torch.Tensor, tmp_path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights identity for the cache key")

    def run(batch_images: torch.Tensor) -> tuple[dict, TinyFeatureNet]:
        net = TinyFeatureNet()
        net.weights_path = str(weights)
        plan = EvalPlan([12], {"rfid"}, networks=Networks(net), fid_stats_dir=tmp_path / "cache", data_id="photos",
                        baselines=False, show=False)
        report = evaluate(ThumbnailTokenizer(SIZE), loader(batch_images, 4), plan)
        return report, net

    first, net1 = run(images)
    second, net2 = run(images)
    assert net1.images_seen == 20 and net2.images_seen == 10  # the originals' features came from the cache
    assert second["lengths"]["12"]["rfid"] == pytest.approx(first["lengths"]["12"]["rfid"], rel=1e-12)
    third, _ = run(images[:6])  # same data id, other images: detected, reported, cache dropped
    assert "rfid" not in third["lengths"]["12"] and "cached" in third["unavailable"]["rfid"]
    assert not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("lengths", [[], [0], [13], [1.5]])
def test_bad_lengths_are_one_clear_error(images: torch.Tensor, lengths: list) -> None:
    with pytest.raises(ValueError, match=r"lengths=.*1 ≤ k ≤ 12"):
        evaluate(ThumbnailTokenizer(SIZE), loader(images, 4), EvalPlan(lengths, {"psnr"}, show=False))


def test_unknown_metric_is_one_clear_error(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="'fdi'.*psnr, ssim, lpips, rfid, pfid"):
        evaluate(ThumbnailTokenizer(SIZE), loader(images, 4), EvalPlan([1], {"psnr", "fdi"}, show=False))
