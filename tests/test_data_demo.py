"""The embedded demo dataset: deterministic bytes, disjoint photos, atomic cache, uint8 32 px batches."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vartok.cli.data import main as data_main
from vartok.data import DataError, ImageDataModule, build_demo, demo_shards
from vartok.data import demo as demo_module
from vartok.data.demo import RECIPE, TRAIN_PHOTOS, VAL_PHOTOS

SMALL = {"num_train": 650, "num_val": 40}


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def member_names(shards: list[str]) -> list[str]:
    names = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            names.extend(tar.getnames())
    return names


def test_demo_is_byte_identical_when_built_twice(tmp_path):
    build_demo(tmp_path / "a", **SMALL)
    build_demo(tmp_path / "b", **SMALL)
    first, second = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
    assert first == second
    assert sum(name.endswith(".tar") for name in first) >= 2


def test_parallel_and_serial_builds_are_byte_identical(tmp_path, monkeypatch):
    size = {"num_train": 2000, "num_val": 8}  # large enough for the process pool
    build_demo(tmp_path / "parallel", **size)
    monkeypatch.setattr(demo_module.os, "cpu_count", lambda: 1)
    build_demo(tmp_path / "serial", **size)
    assert folder_bytes(tmp_path / "parallel") == folder_bytes(tmp_path / "serial")


def test_train_and_validation_photos_are_disjoint(tmp_path):
    info = demo_shards(tmp_path / "demo", **SMALL)
    assert not set(TRAIN_PHOTOS) & set(VAL_PHOTOS)
    hashes = demo_module._photo_hashes()  # no photo is a byte copy of another across the split
    assert not {hashes[p] for p in TRAIN_PHOTOS} & {hashes[p] for p in VAL_PHOTOS}
    stems = {split: {name.split(".")[0].rsplit("_", 1)[0] for name in member_names(info[split])}
             for split in ("train", "val")}
    assert stems["train"] == {p.rsplit(".", 1)[0] for p in TRAIN_PHOTOS}
    assert stems["val"] == {p.rsplit(".", 1)[0] for p in VAL_PHOTOS}
    assert (info["num_train"], info["num_val"]) == (SMALL["num_train"], SMALL["num_val"])


def test_crops_are_32px_rgb_and_come_from_their_photo(tmp_path):
    info = demo_shards(tmp_path / "demo", **SMALL)
    with tarfile.open(info["val"][0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("chelsea"))
        crop = Image.open(tar.extractfile(member))
        crop.load()
    assert crop.size == (32, 32) and crop.mode == "RGB"
    # Oracle: the crop's mean colour is one of the photo's local mean colours (not e.g. black or noise).
    photo = np.asarray(Image.open(demo_module.skimage_data_dir() / "chelsea.png").convert("RGB"), np.float64)
    lo, hi = photo.reshape(-1, 3).min(0), photo.reshape(-1, 3).max(0)
    mean = np.asarray(crop, np.float64).reshape(-1, 3).mean(0)
    assert np.all(mean >= lo) and np.all(mean <= hi) and np.asarray(crop).std() >= RECIPE["min_std"]


def test_cache_is_reused_and_follows_vartok_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VARTOK_CACHE", str(tmp_path / "cache"))
    info = demo_shards(**SMALL)
    assert info["root"] == str(tmp_path / "cache" / "demo")
    stamp = Path(info["train"][0]).stat().st_mtime_ns
    assert demo_shards(**SMALL) == info and Path(info["train"][0]).stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["demo"]  # no staging left over


def test_killed_build_leaves_no_half_cache(tmp_path, monkeypatch):
    real = demo_module._write_split

    def dies_on_val(folder, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        return real(folder, split, *args)

    monkeypatch.setattr(demo_module, "_write_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        demo_shards(tmp_path / "cache" / "demo", **SMALL)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(demo_module, "_write_split", real)
    assert demo_shards(tmp_path / "cache" / "demo", **SMALL)["num_val"] == SMALL["num_val"]


def test_a_folder_with_other_files_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a vartok demo dataset"):
        demo_shards(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_demo_datamodule_yields_uint8_32px_batches(tmp_path, monkeypatch):
    monkeypatch.setitem(RECIPE, "num_train", SMALL["num_train"])
    monkeypatch.setitem(RECIPE, "num_val", SMALL["num_val"])
    dm = ImageDataModule(train_shards="demo", demo_dir=str(tmp_path / "demo"), batch_size=16, num_workers=1,
                         epoch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 4
    for batch in train:
        assert batch["image"].dtype.is_floating_point is False and str(batch["image"].dtype) == "torch.uint8"
        assert batch["image"].shape == (16, 3, 32, 32) and bool(batch["valid"].all())
    val = list(dm.val_dataloader())
    assert sum(int(b["valid"].sum()) for b in val) == SMALL["num_val"]
    assert dm.skipped() == {} and dm.converted() == {}


def test_cli_demo_writes_the_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(RECIPE, "num_train", SMALL["num_train"])
    monkeypatch.setitem(RECIPE, "num_val", SMALL["num_val"])
    assert data_main(["demo", "--output", str(tmp_path / "d")]) == 0
    assert "650 train crops" in capsys.readouterr().out
    info = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert info["num_val"] == SMALL["num_val"] and (tmp_path / "d" / "val" / "manifest.json").is_file()


@pytest.mark.slow
def test_full_default_demo_build(tmp_path):
    info = demo_shards(tmp_path / "demo")
    assert (info["num_train"], info["num_val"]) == (RECIPE["num_train"], RECIPE["num_val"])
    assert len(info["train"]) >= 4 and len(info["val"]) >= 4  # enough shards for 2 ranks x 2 workers
