"""vartok-eval and vartok-export on the mistakes and surprises a user meets: broken samples (--max-skip-fraction,
report["skipped"]), runs that measure nothing (exit 1), an --out that is a file, a --device the machine lacks
(all before any loading), where the evaluated and the measuring weights came from (report["provenance"]), how
many images meet a target PSNR, and vartok-export given an export folder or a file as --out."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

import vartok.tokenizers
from tests.fixtures import commands
from tests.fixtures.doubles import ThumbnailTokenizer, photo_crops
from vartok.cli.evaluate import main
from vartok.cli.export import main as export_main
from vartok.data.tar_writer import ShardWriter
from vartok.pixels import psnr_per_image, to_uint8
from vartok.tokenizers import Tokenizer
from vartok.tokenizers.choose_length import choose_length

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 16


class ChoosingThumbnails(ThumbnailTokenizer):
    """The thumbnail stand-in with the package's own choose_length (bisection on the 8-bit PSNR)."""

    def choose_length(self, images: torch.Tensor, target_psnr: float) -> torch.Tensor:
        return choose_length(self, images, target_psnr=target_psnr)


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(folder: Path, good: int, broken: int = 0) -> str:
    """One shard of `good` photo crops (SIZE px PNG) followed by `broken` samples that are not images."""
    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(folder, maxcount=10**9) as writer:
        for i, image in enumerate(photo_crops(good, SIZE, seed=5) if good else []):
            writer.write(f"good{i:03d}", {"png": _png(image)})
        for i in range(broken):
            writer.write(f"broken{i:03d}", {"png": b"these bytes are not a PNG file"})
    return str(folder / "shard-000000.tar")


@pytest.fixture
def stand_in(monkeypatch, tmp_path) -> list:
    """vartok-eval loads a ChoosingThumbnails tokenizer (the calls are recorded); empty torch hub cache."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls: list = []

    def load(path, use_ema=True):
        calls.append((path, use_ema))
        return ChoosingThumbnails(SIZE)

    monkeypatch.setattr(vartok.tokenizers, "load_tokenizer", load)
    return calls


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return commands.run_main(main, capsys, *argv)


def quick(out: Path, data: str, *extra: str) -> list[str]:
    return ["--checkpoint", "ckpt", "--data", data, "--out", str(out), "--lengths", "4,12", "--metrics", "psnr",
            "--no-baselines", "--device", "cpu", *extra]


def assert_one_line(err: str, *parts: str) -> None:
    """The error is one line at the end of stderr (a progress line may come before it), with every part."""
    last = err.strip().splitlines()[-1]
    assert last.startswith("vartok-eval: error: ") and "Traceback" not in err and err.endswith(last + "\n"), err
    for part in parts:
        assert part in last, err


# ---------------------------------------------------------------------------------------------- 1. broken samples
def test_too_many_broken_samples_name_the_flag_that_exists(stand_in, tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "shards", good=12, broken=1)
    code, _, err = run_cli(quick(tmp_path / "o", shard), capsys)
    assert code == 2
    assert_one_line(err, "1 of 13 samples", "--max-skip-fraction=0.01", "raise --max-skip-fraction")


def test_max_skip_fraction_flag_and_skipped_samples_in_the_report(stand_in, tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "shards", good=12, broken=2)
    code, _, err = run_cli(quick(tmp_path / "o", shard, "--max-skip-fraction", "0.2"), capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["num_images"] == 12 and report["skipped"] == {"not_an_image": 2}
    code, _, err = run_cli(quick(tmp_path / "o2", shard, "--max-skip-fraction", "1.5"), capsys)
    assert code == 2 and "--max-skip-fraction=1.5" in err


# ------------------------------------------------------------------------------------------- 2. nothing measured
def test_every_requested_metric_unavailable_exits_1_before_reading_data(stand_in, tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "shards", good=4)
    argv = quick(tmp_path / "o", shard)
    argv[argv.index("psnr")] = "lpips,rfid"  # neither weights file is in the (empty) hub cache
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert_one_line(err, "none of the requested metrics (lpips,rfid) can be computed", "vgg16-397923af.pth",
                    "weights-inception-2015-12-05-6726825d.pth")
    assert not (tmp_path / "o" / "report.json").exists()


def test_no_image_read_exits_1(stand_in, tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "shards", good=0, broken=3)
    code, _, err = run_cli(quick(tmp_path / "o", shard, "--max-skip-fraction", "1"), capsys)
    assert code == 1
    assert_one_line(err, "no image could be read", "not_an_image=3")


# ----------------------------------------------------------------------------------- 3. and 4. checked up front
def test_out_that_is_a_file_fails_before_loading(stand_in, tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "shards", good=4)
    (tmp_path / "taken").write_text("not a folder")
    code, _, err = run_cli(quick(tmp_path / "taken", shard), capsys)
    assert code == 2 and stand_in == []
    assert_one_line(err, f"--out {tmp_path / 'taken'} is a file")


@pytest.mark.parametrize(("device", "available", "count", "message"), [
    ("cuda", False, 0, "torch.cuda.is_available() is False"),
    ("cuda:3", True, 2, "this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"),
    ("gpu", True, 1, "'gpu' is not a device name"),
])
def test_device_the_machine_lacks_fails_before_loading(stand_in, tmp_path, capsys, monkeypatch, device, available,
                                                       count, message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    argv = quick(tmp_path / "o", "unused")
    argv[argv.index("--device") + 1] = device
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and stand_in == []
    assert_one_line(err, f"--device {device}" if device != "gpu" else "--device", message)


# ------------------------------------------------------------------------------------------------- 5. provenance
def random_vgg_file(path: Path) -> Path:
    """A VGG16 feature-layer file with torchvision's key names and shapes, random weights (not the official one)."""
    torch.manual_seed(3)
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, path)
    return path


def training_checkpoint(path: Path) -> Path:
    """A vartok training checkpoint of the demo_tiny tokenizer whose EMA weights differ from its raw ones."""
    tok = Tokenizer.from_preset("demo_tiny")
    raw = tok.state_dict()
    ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    state = {**{f"tokenizer.{k}": v for k, v in raw.items()}, **{f"ema.module.{k}": v for k, v in ema.items()}}
    torch.save({"vartok": {"tokenizer": tok.config.to_dict()}, "state_dict": state}, path)
    return path


def test_report_records_checkpoint_weights_and_network_files(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    shard = write_shard(tmp_path / "shards", good=6)
    ckpt = training_checkpoint(tmp_path / "last.ckpt")
    vgg = random_vgg_file(tmp_path / "my-vgg.pth")
    reports = {}
    for weights in ("raw", "ema"):
        argv = ["--checkpoint", str(ckpt), "--weights", weights, "--data", shard, "--out", str(tmp_path / weights),
                "--metrics", "psnr,lpips", "--lpips-weights", str(vgg), "--no-baselines", "--device", "cpu"]
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        reports[weights] = json.loads((tmp_path / weights / "report.json").read_text())
        assert f"warning: VGG16 ImageNet weights for LPIPS (torchvision): {vgg} is not the official" in err
    provenance = reports["raw"]["provenance"]
    assert provenance["checkpoint"] == {"path": str(ckpt.resolve()), "kind": "checkpoint", "weights": "raw"}
    assert reports["ema"]["provenance"]["checkpoint"]["weights"] == "ema"
    assert reports["raw"]["lengths"]["4"]["psnr"] != reports["ema"]["lengths"]["4"]["psnr"]  # other weights
    lpips = provenance["networks"]["lpips"]
    assert lpips["path"] == str(vgg.resolve()) and lpips["official"] is False
    assert lpips["sha256"] == hashlib.sha256(vgg.read_bytes()).hexdigest()
    assert lpips["heads"]["official"] is True  # the v0.1 heads shipped in the lpips wheel
    assert provenance["warnings"] == [lpips["warning"]] and "--lpips-weights" in lpips["warning"]


def test_official_file_is_recognised_by_its_hash(tmp_path) -> None:
    from dataclasses import replace

    from vartok.nets.weights import VGG16, describe_weights

    path = tmp_path / "vgg16-397923af.pth"
    path.write_bytes(b"stand-in bytes")
    official = replace(VGG16, sha256=hashlib.sha256(b"stand-in bytes").hexdigest())
    assert describe_weights(path, official) == {"path": str(path.resolve()), "sha256": official.sha256,
                                                "official": True}
    assert describe_weights(path, VGG16)["official"] is False


def test_weights_choice_with_an_export_folder_is_a_mistake(tmp_path, capsys) -> None:
    export = Tokenizer.from_preset("demo_tiny").save_pretrained(tmp_path / "export")
    code, _, err = run_cli(["--checkpoint", str(export), "--weights", "raw", "--data", "demo", "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line(err, f"{export} is an export folder", "leave --weights out")


# ------------------------------------------------------------------------------------------------ 6. target met
def test_target_reports_how_many_images_meet_it(stand_in, tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "shards", good=12)
    images = photo_crops(12, SIZE, seed=5)
    tok = ThumbnailTokenizer(SIZE)
    indices = tok.encode(images.float() / 255).indices
    at_n = psnr_per_image(to_uint8(tok.decode(indices)), images)
    target = float(at_n.median())  # some images reach it at some k, the others never (choose_length says N)
    code, _, err = run_cli(quick(tmp_path / "o", shard, "--target-psnr", str(target)), capsys)
    assert code == 0, err
    chosen = choose_length(tok, images.float() / 255, target_psnr=target)
    met = int((psnr_per_image(to_uint8(tok.decode(indices, length=chosen)), images) >= target).sum())
    assert 0 < met < 12
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["target"]["met"] == met and report["target"]["images"] == 12


# ----------------------------------------------------------------------------------------------- 7. vartok-export
def export_cli(argv: list[str], capsys) -> tuple[int, str]:
    code, _, err = commands.run_main(export_main, capsys, *argv)
    return code, err


def test_export_of_an_export_folder_says_it_is_already_one(tmp_path, capsys) -> None:
    export = Tokenizer.from_preset("demo_tiny").save_pretrained(tmp_path / "export")
    code, err = export_cli(["--checkpoint", str(export), "--out", str(tmp_path / "again")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"vartok-export: error: {export} is an export folder" in err and "already exported" in err
    assert not (tmp_path / "again").exists()


def test_export_to_an_existing_file_is_one_sentence(tmp_path, capsys) -> None:
    ckpt = training_checkpoint(tmp_path / "last.ckpt")
    (tmp_path / "out.txt").write_text("taken")
    code, err = export_cli(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out.txt")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"vartok-export: error: --out {tmp_path / 'out.txt'} is a file; give a folder" in err
    assert export_cli(["--checkpoint", str(ckpt), "--out", str(tmp_path / "ok")], capsys)[0] == 0
    assert Tokenizer.from_pretrained(tmp_path / "ok").num_tokens == 4


def test_pfid_lengths_outside_the_lengths_fail_before_loading(stand_in, tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "shards", good=4)
    argv = [*quick(tmp_path / "out", shard), "--lengths", "1,2", "--pfid-lengths", "2,4"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and stand_in == []
    assert_one_line(err, "--pfid-lengths 2,4 must be among --lengths 1,2")
