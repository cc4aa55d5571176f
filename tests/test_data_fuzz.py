"""Broken and unusual files through make-shards and through the DataModule: no crash, counts per reason match
what was planted, and too many broken samples stop the run with one clear sentence."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures.data_fuzz import encode, expected_counts, fuzz_files, photo, plant_folder
from tests.fixtures.data_shards import write_shards
from vartok.data import DataError, ImageDataModule, make_shards, train_loader, val_loader
from vartok.data.decode import IMAGE_EXTENSIONS
from vartok.data.tar_writer import ShardWriter

SIZE = 16
JPG = encode(photo(), "JPEG")
# Samples that only exist inside shards: (members, expected outcome at the loader).
SHARD_ONLY = {
    "only_json": ({"json": b"{}"}, ("skip", "missing_image")),
    "jpeg_as_xyz": ({"xyz": JPG}, ("skip", "missing_image")),
    "label_only": ({"cls": b"3"}, ("skip", "missing_image")),
    "with_metadata": ({"jpg": JPG, "json": b'{"a": 1}', "txt": b"caption"}, ("ok", ())),
    "empty_member": ({"png": b""}, ("skip", "empty")),
}


def loader_expectation(name: str, data: bytes, expected: tuple) -> tuple:
    """What the loader should report for a planted file stored under its own extension."""
    ext = name.rsplit(".", 1)[-1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return ("skip", "missing_image")  # e.g. notes.txt: a sample without an image member
    return expected


def min_side(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return min(image.size)


def write_fuzz_shards(folder: Path) -> tuple[list[str], dict, dict]:
    """Every fuzz file and shard-only sample as raw members, 6 samples per shard; returns (urls, expected
    outcome per key, min side per good key)."""
    folder.mkdir()
    expected, sides, samples = {}, {}, []
    for i, (name, (data, outcome)) in enumerate(sorted(fuzz_files().items())):
        key = f"file{i:03d}"
        samples.append((key, {name.rsplit(".", 1)[-1].lower(): data}))
        expected[key] = loader_expectation(name, data, outcome)
        if expected[key][0] == "ok":
            sides[key] = min_side(data)
    for key, (members, outcome) in SHARD_ONLY.items():
        key = key.replace("_", "-")
        samples.append((key, members))
        expected[key] = outcome
        if outcome[0] == "ok":
            sides[key] = min_side(members["jpg"])
    with ShardWriter(folder, maxcount=6) as writer:
        for key, members in samples:
            writer.write(key, members)
    return sorted(str(p) for p in folder.glob("shard-*.tar")), expected, sides


def counts_with_upscale(expected: dict, sides: dict) -> tuple[dict, dict, int]:
    skipped, converted, good = expected_counts(expected)
    upscaled = sum(side < SIZE for side in sides.values())
    if upscaled:
        converted["upscaled"] = upscaled
    return skipped, converted, good


def test_fuzz_shards_through_the_datamodule_match_planted_counts(tmp_path):
    urls, expected, sides = write_fuzz_shards(tmp_path / "shards")
    assert len(expected) >= 30 + len(SHARD_ONLY)
    skipped, converted, good = counts_with_upscale(expected, sides)
    dm = ImageDataModule(train_shards=urls, val_shards=urls, image_size=SIZE, batch_size=4, num_workers=2,
                         resampled=False, max_skip_fraction=1.0, shuffle_buffer=4)
    dm.setup("fit")
    seen = Counter()
    for batch in dm.val_dataloader():
        assert batch["image"].dtype.is_floating_point is False and batch["image"].shape[1:] == (3, SIZE, SIZE)
        seen.update(k for k, v in zip(batch["key"], batch["valid"].tolist()) if v)
    assert seen == Counter(k for k, (kind, _) in expected.items() if kind == "ok")
    assert dm.skipped("val") == skipped
    assert dm.converted("val") == converted

    train_keys = Counter(k for batch in dm.train_dataloader() for k in batch["key"])
    assert sum(train_keys.values()) == good and set(train_keys) == set(seen)
    assert dm.skipped("train") == skipped
    assert dm.skipped() == {reason: 2 * count for reason, count in skipped.items()}


def test_too_many_broken_samples_stop_with_one_sentence(tmp_path):
    urls, _, _ = write_fuzz_shards(tmp_path / "shards")
    loader = val_loader(urls, SIZE, 4, num_workers=2, max_skip_fraction=0.05)
    with pytest.raises(DataError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert "max_skip_fraction=0.05" in message and "Traceback" not in message and "\n" not in message


def test_fuzz_folder_through_make_shards_then_the_datamodule(tmp_path):
    files = plant_folder(tmp_path / "images")
    manifest = make_shards(str(tmp_path / "images"), str(tmp_path / "out"), maxcount=7, progress=False)
    skipped, converted, good = expected_counts(files)
    assert manifest["skipped"] == skipped and manifest["converted"] == converted
    dm = ImageDataModule(train_shards=str(tmp_path / "out"), val_shards=str(tmp_path / "out"), image_size=SIZE,
                         batch_size=5, num_workers=0, max_skip_fraction=0.0)
    dm.setup("validate")
    valid = sum(int(batch["valid"].sum()) for batch in dm.val_dataloader())
    assert valid == good and dm.skipped() == {}
    # Verified shards carry no wrong extension any more; everything else is converted by the loader again.
    sides = {rel: min_side((tmp_path / "images" / rel).read_bytes()) for rel, (k, _) in files.items() if k == "ok"}
    expected_notes = {k: v for k, v in converted.items() if k != "wrong_extension"}
    expected_notes["upscaled"] = sum(side < SIZE for side in sides.values())
    assert dm.converted() == expected_notes


def test_truncated_shard_is_counted_and_validation_stays_aligned(tmp_path):
    urls, keys = write_shards(tmp_path / "shards", [8, 8, 8])
    data = Path(urls[1]).read_bytes()
    # 8 samples x 2 members x 1024 bytes: cut inside the image data of the 6th sample (index 5).
    Path(urls[1]).write_bytes(data[: 5 * 2048 + 700])
    loaders = [val_loader(urls, 8, 3, num_workers=2, rank=rank, world_size=2, max_skip_fraction=1.0)
               for rank in range(2)]
    ranks = [list(loader) for loader in loaders]
    assert len(ranks[0]) == len(ranks[1]) == len(loaders[0])
    seen = Counter(k for batches in ranks for b in batches for k, v in zip(b["key"], b["valid"]) if v)
    assert seen == Counter(keys[:13] + keys[16:])  # shard 1 delivers its first 5 samples
    total = Counter()
    for loader in loaders:
        total.update(loader.skipped())
    # The scan lists the 6th sample's header, the reader cannot deliver it: one tar error, one missing sample.
    assert total == {"shard_error": 1, "missing_sample": 1}


def test_error_raised_inside_a_worker_reaches_the_user_as_one_sentence(tmp_path):
    (tmp_path / "bad").mkdir()
    with ShardWriter(tmp_path / "bad", maxcount=100) as writer:
        for i in range(300):
            writer.write(f"broken{i:04d}", {"jpg": b"\xff\xd8 not really a jpeg"})
    loader = train_loader(str(tmp_path / "bad"), SIZE, 4, num_workers=1, epoch_size=40,
                          max_skip_fraction=0.5)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith("train: ") and "Traceback" not in message and "\n" not in message
