"""make-shards: round trip against the planted files, manifest reasons, resume, refusals, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.data_fuzz import encode, expected_counts, photo, plant_folder
from vartok.cli.data import main as data_main
from vartok.data import DataError, make_shards
from vartok.data import shard_writer as shard_writer_module
from vartok.data.decode import IMAGE_EXTENSIONS


def read_shards(folder: Path) -> list[dict]:
    """Every sample of every shard listed in the manifest, with tarfile (not our reader)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        grouped: dict[str, dict] = {}
        for name, data in members:
            key, ext = name.split(".", 1)
            grouped.setdefault(key, {"__key__": key, "__shard__": shard["name"]})[ext] = data
        assert len(grouped) == shard["count"]
        samples.extend(grouped.values())
    return samples


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "images"
    return root, plant_folder(root)


def test_round_trip_every_good_image_once_every_bad_one_listed(planted, tmp_path):
    root, files = planted
    manifest = make_shards(str(root), str(tmp_path / "out"), maxcount=5, progress=False)
    samples = read_shards(tmp_path / "out")
    skipped, converted, good = expected_counts(files)

    # Keys: unique, no dots (webdataset would split them), as many as good files.
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == good == manifest["total_images"]
    assert all("." not in key for key in keys)
    # Same bytes (hence same pixels) and same class for every good file, each exactly once.
    classes = manifest["classes"]
    stored = Counter()
    for sample in samples:
        image_ext = [e for e in sample if e in IMAGE_EXTENSIONS]
        assert len(image_ext) == 1
        stored[(sha(sample[image_ext[0]]), classes[int(sample["cls"])])] += 1
    expected = Counter((sha((root / rel).read_bytes()), rel.split("/")[0])
                       for rel, (kind, _) in files.items() if kind == "ok")
    assert stored == expected
    # Every bad file is listed with the reason it was planted for; counts per reason match.
    listed = {entry["path"]: entry["reason"] for entry in manifest["bad_files"]}
    assert listed == {rel: what for rel, (kind, what) in files.items() if kind == "skip"}
    assert manifest["skipped"] == skipped
    assert manifest["converted"] == converted
    assert sum(s["count"] for s in manifest["shards"]) == good
    assert all(s["count"] <= 5 for s in manifest["shards"])


def test_wrong_extension_is_stored_under_the_real_format(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "really_png.jpg").write_bytes(encode(photo(), "PNG"))
    make_shards(str(tmp_path / "in"), str(tmp_path / "out"), progress=False)
    (sample,) = read_shards(tmp_path / "out")
    assert "png" in sample and "jpg" not in sample


def test_interrupted_run_resumes_to_the_same_bytes(planted, tmp_path, monkeypatch):
    root, _ = planted
    make_shards(str(root), str(tmp_path / "fresh"), maxcount=4, progress=False)

    original = shard_writer_module._Run._store
    calls = {"n": 0}

    def failing_store(self, writer, source, result):
        calls["n"] += 1
        if calls["n"] == 23:
            raise KeyboardInterrupt
        return original(self, writer, source, result)

    monkeypatch.setattr(shard_writer_module._Run, "_store", failing_store)
    with pytest.raises(KeyboardInterrupt):
        make_shards(str(root), str(tmp_path / "resumed"), maxcount=4, progress=False)
    left = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert "manifest.json" not in left and shard_writer_module.STATE_NAME in left
    assert not any(name.endswith(".tmp") for name in left)  # no half shard left behind
    assert sum(name.startswith("shard-") for name in left) >= 2  # it did stop midway
    monkeypatch.setattr(shard_writer_module._Run, "_store", original)
    make_shards(str(root), str(tmp_path / "resumed"), maxcount=4, progress=False)

    fresh = {p.name: p.read_bytes() for p in (tmp_path / "fresh").iterdir()}
    resumed = {p.name: p.read_bytes() for p in (tmp_path / "resumed").iterdir()}
    assert resumed == fresh


def test_parallel_verification_writes_the_same_bytes(planted, tmp_path):
    root, _ = planted
    make_shards(str(root), str(tmp_path / "one"), maxcount=6, workers=1, progress=False)
    make_shards(str(root), str(tmp_path / "two"), maxcount=6, workers=2, progress=False)
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    assert one == {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}


def test_finished_folder_is_left_alone_and_other_input_is_refused(planted, tmp_path):
    root, _ = planted
    out = tmp_path / "out"
    first = make_shards(str(root), str(out), maxcount=8, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert make_shards(str(root), str(out), maxcount=8, progress=False) == first
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(DataError, match="other input or settings"):
        make_shards(str(root), str(out), maxcount=9, progress=False)


@pytest.mark.parametrize("maxcount", [0, -3])
def test_bad_maxcount_fails_before_any_work(planted, tmp_path, maxcount):
    root, _ = planted
    with pytest.raises(DataError, match=f"--maxcount={maxcount}"):
        make_shards(str(root), str(tmp_path / "out"), maxcount=maxcount, progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_input_and_output_are_refused(planted, tmp_path):
    root, _ = planted
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        make_shards(str(tmp_path / "empty"), str(tmp_path / "out"), progress=False)
    with pytest.raises(DataError, match="does not exist"):
        make_shards(str(tmp_path / "nothing_here"), str(tmp_path / "out"), progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="already holds other files"):
        make_shards(str(root), str(busy), progress=False)
    assert [p.name for p in busy.iterdir()] == ["thesis.tex"]


def test_list_file_with_labels_and_missing_entries(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(encode(photo(), "JPEG"))
    (tmp_path / "pics" / "b.png").write_bytes(encode(photo(30, 30), "PNG"))
    listing = tmp_path / "list.txt"
    listing.write_text("# images\npics/a.jpg\tcat\n\npics/b.png\tdog\npics/gone.jpg\tdog\n")
    manifest = make_shards(str(listing), str(tmp_path / "out"), progress=False)
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["total_images"] == 2
    assert manifest["bad_files"] == [{"path": "pics/gone.jpg", "reason": "missing_file",
                                      "detail": "file not found"}]
    labels = {s["__key__"]: manifest["classes"][int(s["cls"])] for s in read_shards(tmp_path / "out")}
    assert sorted(labels.values()) == ["cat", "dog"]


def test_cli_make_shards_and_one_line_errors(planted, tmp_path, capsys):
    root, files = planted
    assert data_main(["make-shards", "--input", str(root), "--output", str(tmp_path / "out"),
                      "--maxcount", "10", "--maxsize", "1M", "--no-progress"]) == 0
    out = capsys.readouterr().out
    _, _, good = expected_counts(files)
    assert f"{good} images in" in out and "shard-{000000.." in out
    assert data_main(["make-shards", "--input", str(root), "--output", str(tmp_path / "o2"),
                      "--maxcount", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--maxcount=0" in err


def test_cli_use_hint_pastes_into_bash_and_hidden_and_tiny_files_are_listed(planted, tmp_path, capsys):
    root, _ = planted  # holds class_a/.DS_Store and tiny images (1×1, 7×5, 300×2)
    (root / "class_b" / "._good_rgb.jpg").write_bytes(b"\x00\x05\x16\x07 macOS AppleDouble")
    out = tmp_path / "out"
    assert data_main(["make-shards", "--input", str(root), "--output", str(out), "--maxcount", "10",
                      "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    last = len(list(out.glob("shard-*.tar"))) - 1
    assert last > 0
    use = next(line for line in lines if line.startswith("use: --data.train_shards "))
    pasted = use.removeprefix("use: --data.train_shards ").split("   (or")[0]
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {pasted}"], capture_output=True, text=True,
                           check=True, timeout=30).stdout.splitlines()
    assert words == [f"{out}/shard-{{000000..{last:06d}}}.tar"]  # one word: the braces reach the loader
    assert "(12 files left out, 2 hidden files not read)" in lines[0]
    hidden = next(line for line in lines if line.startswith("  not read, hidden"))
    assert "class_a/.DS_Store: macOS folder metadata" in hidden
    assert "class_b/._good_rgb.jpg: macOS resource fork (AppleDouble), not an image" in hidden
    tiny = next(line for line in lines if line.startswith("  kept, tiny (shorter side < 32 px"))
    assert "tiny_1x1.png 1×1" in tiny and "small_7x5.jpg 7×5" in tiny and "thin_300x2.png 300×2" in tiny
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["path"] for entry in manifest["hidden"]] == ["class_a/.DS_Store", "class_b/._good_rgb.jpg"]
    assert {Path(entry["path"]).name for entry in manifest["tiny"]} >= {"tiny_1x1.png", "small_7x5.jpg"}
