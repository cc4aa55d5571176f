"""`vartok-eval` on a converted TiTok export, like on any other export (issue 16, item 4): every metric the
command offers (PSNR, SSIM, LPIPS, rFID, pFID) at several lengths, on both reference variants.

The released-format checkpoints come from the parity fixtures (`released_checkpoint`: single-stage, 32 px,
patch 8, 8 tokens, 64 codes; two-stage, 32 px, patch 16, the VQGAN pixel decoder, 8 tokens, 256 codes), and
`vartok-convert titok` turns them into export folders. Nothing is downloaded: LPIPS reads a random VGG16 file
of the official shapes, and the FID network is tests/fixtures/doubles.py's TinyFeatureNet (16 features), since
with Inception's 2048 features each FID's matrix square root alone takes ~7 s on two CPU cores (the Inception
path itself is tested in test_metrics_fid.py and test_configs_ddp.py). The figures are checked for being
finite and, for PSNR, against a computation of our own from the export's `decode` on the same images. pFID
must run through titok_vq's `symbol_latents` / `nearest_codes`; at α = 0 the perturbation is the identity, so
its pFID must equal the rFID at N. `--target-psnr` (choose_length on the converted model) runs too.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vartok.metrics.networks
from tests.fixtures.doubles import TinyFeatureNet
from tests.fixtures.photo_shards import photo_shards
from tests.test_titok_parity import released_checkpoint
from vartok import Tokenizer
from vartok.cli.convert import main as convert_main
from vartok.cli.evaluate import main as eval_main
from vartok.pixels import psnr_per_image, to_uint8

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE, IMAGES, TOKENS = 32, 6, 8
LENGTHS = (1, 3, 8)
METRICS = ("psnr", "ssim", "lpips", "rfid", "pfid")
ALPHAS = ("0", "0.5")  # α = 0: the identity (pFID = rFID at N); α = 0.5: half the tokens moved to neighbours
CODEBOOK = {"single_stage": 64, "two_stage": 256}
PSNR_TOLERANCE = 1e-5  # dB


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """One shard of IMAGES 32 px photo crops and a random LPIPS VGG16 file of the official shapes."""
    from vartok.nets.lpips import LPIPS

    root = tmp_path_factory.mktemp("titok_eval")
    shards = photo_shards(root / "shards", count=IMAGES, size=SIZE, shards=1, seed=3)
    lpips = root / "vgg16.pth"
    torch.save(LPIPS(random_init=True, seed=0).net.state_dict(), lpips)
    (root / "inception.pth").write_bytes(b"never read: the FID network is a stand-in")
    return {"root": root, "shard": shards[0], "inception": str(root / "inception.pth"), "lpips": str(lpips)}


@pytest.fixture
def one_thread():
    """One CPU thread for this test: on a shared two-core machine two threads spin-wait on each other's
    convolutions (the two-stage pixel decoder), which made the test 4x slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stand_ins(monkeypatch, tmp_path) -> list:
    """An empty torch hub cache, and vartok-eval's FID network replaced by TinyFeatureNet (the files it was
    asked to build from are recorded)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    asked: list = []

    def build_inception(path, *args, **kwargs):
        asked.append(path)
        return TinyFeatureNet(num_features=16)

    monkeypatch.setattr(vartok.metrics.networks, "build_inception", build_inception)
    return asked


def shard_images(shard: str) -> torch.Tensor:
    """The shard's PNGs read with PIL, not with vartok's data path: uint8 (B, 3, H, W)."""
    images = []
    with tarfile.open(shard) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.name.endswith(".png"):
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    return torch.stack(images)


def converted_export(variant: str, root: Path) -> Path:
    """The fixture's released checkpoint, converted on the command line as a user would."""
    released_checkpoint(variant, root / "released")
    convert_main(["titok", "--checkpoint", str(root / "released"), "--out", str(root / "export")])
    return root / "export"


def evaluate_export(export: Path, inputs: dict, out: Path, capsys) -> tuple[dict, str]:
    """Run vartok-eval on `export` with every metric; the report and the printed table."""
    argv = ["--checkpoint", str(export), "--data", inputs["shard"], "--out", str(out),
            "--lengths", ",".join(map(str, LENGTHS)), "--metrics", ",".join(METRICS),
            "--inception-weights", inputs["inception"], "--lpips-weights", inputs["lpips"],
            "--pfid-alpha", ",".join(ALPHAS), "--pfid-delta", "4", "--pfid-seeds", "1",
            "--pfid-lengths", ",".join(map(str, LENGTHS)),
            "--target-psnr", "6", "--batch-size", str(IMAGES), "--device", "cpu", "--baseline-images", "2",
            "--grid-images", "2"]
    code = eval_main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((out / "report.json").read_text()), captured.out


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.parametrize("variant", ["single_stage", "two_stage"])
def test_every_metric_at_every_length_on_a_converted_export(tmp_path, inputs, stand_ins, one_thread, capsys,
                                                           variant) -> None:
    export = converted_export(variant, tmp_path)
    report, printed = evaluate_export(export, inputs, tmp_path / "eval", capsys)
    assert stand_ins == [inputs["inception"]]

    assert report["num_images"] == IMAGES and report["unavailable"] == {} and report["skipped"] == {}
    assert report["tokenizer"]["num_tokens"] == TOKENS and report["tokenizer"]["codebook_size"] == CODEBOOK[variant]
    assert report["provenance"]["checkpoint"] == {"path": str(export.resolve()), "kind": "export",
                                                  "weights": "as exported"}
    assert list(report["lengths"]) == [str(k) for k in LENGTHS]
    for k in LENGTHS:
        entry = report["lengths"][str(k)]
        for metric in ("psnr", "ssim", "lpips", "rfid"):
            assert finite(entry.get(metric)), f"{variant}: {metric} at k={k} is {entry.get(metric)!r}"
    for k in LENGTHS:  # pFID at every evaluated length (--pfid-lengths)
        pfid = report["lengths"][str(k)]["pfid"]
        assert sorted(pfid) == [f"alpha={a},delta=4" for a in ALPHAS]
        for name, figure in pfid.items():
            assert finite(figure["mean"]) and all(finite(v) for v in figure["per_seed"]), f"{variant}: pFID {name}"
        rfid = report["lengths"][str(k)]["rfid"]
        assert pfid["alpha=0,delta=4"]["mean"] == pytest.approx(rfid, rel=1e-9, abs=1e-9)  # the identity
    assert report["lengths"][str(TOKENS)]["pfid"]["alpha=0.5,delta=4"]["mean"] != pytest.approx(
        report["lengths"][str(TOKENS)]["rfid"], rel=1e-6)  # tokens did move
    assert (tmp_path / "eval" / "rd.png").is_file() and (tmp_path / "eval" / "grid.png").is_file()
    assert "PSNR" in printed and "rFID" in printed
    target = report["target"]  # choose_length on the converted model: a chosen k for every image
    assert target["images"] == IMAGES and sum(target["chosen_lengths"].values()) == IMAGES

    # The report's PSNR at each k is the mean over images of the 8-bit reconstruction against the 8-bit original
    # (the report accumulates in float32: ~1e-6 dB from this float64 figure).
    tokenizer = Tokenizer.from_pretrained(export)
    originals = shard_images(inputs["shard"])
    assert originals.shape == (IMAGES, 3, SIZE, SIZE)
    with torch.no_grad():
        indices = tokenizer.encode(originals.float() / 255).indices
        ours = {k: psnr_per_image(to_uint8(tokenizer.decode(indices, length=k)), originals).mean().item()
                for k in LENGTHS}
    for k in LENGTHS:
        assert report["lengths"][str(k)]["psnr"] == pytest.approx(ours[k], abs=PSNR_TOLERANCE), f"{variant}: k={k}"
    spread = min(abs(ours[a] - ours[b]) for a in LENGTHS for b in LENGTHS if a < b)
    assert spread > 10 * PSNR_TOLERANCE  # the lengths decode differently, so a figure of the wrong k would fail
