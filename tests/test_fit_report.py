"""The end-of-fit evaluation at one process (the 2-process run is tests/test_fit_report_ddp.py).

- `ShardSubset`: the subset is the first N samples of the validation shards in shard order, the same images
  whatever the number of ranks (each once), an undecodable sample or one the manifest lists but the shard
  lacks is counted and left out, and a rank does not open the shards before its share;
- `export_and_report` bounded to N images: the report counts N images, states the subset, and its JPEG /
  WebP / thumbnail figures are those of exactly the same N images (a hand-built BaselineStats on them), not
  of the whole validation set; every tokenizer figure equals `evaluate` on those images;
- `--report_images` (a positive integer) and `--report_metrics` are checked when the config is parsed,
  before any training.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from vartok.data.tar_writer import ShardWriter

ROOT = Path(__file__).resolve().parents[1]
BROKEN = "s1_b"


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def shards(tmp_path) -> tuple[list[str], list[str]]:
    """Shards of 4, 3 and 5 samples; the 6th sample (position 5) is not an image. Returns (urls, keys)."""
    urls, keys = [], []
    (tmp_path / "val").mkdir()
    for shard, count in enumerate((4, 3, 5)):
        with ShardWriter(tmp_path / "val", maxcount=10**9, start_index=shard) as writer:
            for i in range(count):
                key = BROKEN if (shard, i) == (1, 1) else f"s{shard}_{i}"
                writer.write(key, {"png": b"not a png" if key == BROKEN else _png(len(keys))})
                keys.append(key)
        urls.append(str(tmp_path / "val" / f"shard-{shard:06d}.tar"))
    return urls, keys


def _close(a: object, b: object, rel: float = 1e-9, path: str = "") -> bool:
    """Nested dicts / lists equal, floats to `rel` (sums taken in other batch groupings)."""
    if isinstance(a, dict):
        same_keys = isinstance(b, dict) and a.keys() == b.keys()
        return same_keys and all(_close(a[k], b[k], rel, f"{path}/{k}") for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, rel, path) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == pytest.approx(b, rel=rel)
    return a == b


def _by_key(urls: list[str], size: int) -> dict[str, torch.Tensor]:
    """Oracle pixels: the validation loader of one process."""
    from vartok.data import val_loader

    out = {}
    for batch in val_loader(urls, size, 4, num_workers=0, rank=0, world_size=1, max_skip_fraction=None):
        out.update({k: image for k, image, ok in zip(batch["key"], batch["image"], batch["valid"]) if ok})
    return out


@pytest.mark.timeout(60)
def test_shard_subset_is_the_first_samples_in_shard_order_whatever_the_ranks(shards, monkeypatch) -> None:
    from vartok.data import manifest, stream
    from vartok.metrics.subset import ShardSubset

    urls, keys = shards
    pixels = _by_key(urls, 8)
    expected = [k for k in keys[:9] if k != BROKEN]
    opened: list[str] = []
    original = stream.unit_samples

    def recording(unit, counter):
        opened.append(unit.url)
        return original(unit, counter)

    monkeypatch.setattr(stream, "unit_samples", recording)
    for world in (1, 2, 3, 4):
        got, skipped = [], 0
        for rank in range(world):
            opened.clear()
            subset = ShardSubset(urls, 8, 2, num_images=9, rank=rank, world=world)
            batches = list(subset)
            assert all(b["image"].dtype == torch.uint8 and b["valid"].all() for b in batches)
            for batch in batches:
                got += batch["key"]
                for key, image in zip(batch["key"], batch["image"]):
                    assert torch.equal(image, pixels[key]), key
            skipped += sum(subset.skipped().values())
            if world == 4 and rank == 3:  # positions 6..8: the end of shard 1 and shard 2; shard 0 unopened
                assert opened == urls[1:]
            assert subset.describe() == {
                "selection": "first_in_shard_order", "limit": 9, "samples": 9, "available": 12,
                "ranks": world,
                "description": "the first 9 of 12 samples of the 3 validation shards, in shard order"}
        assert got == expected, world  # the same images in the same order, each once
        assert skipped == 1, world  # the broken sample at position 5, counted once
    # A manifest that lists 4 samples for the 3-sample shard 1: position 7 is missing, shard 2 starts at 8.
    monkeypatch.setattr(manifest, "shard_counts", lambda urls: [4, 4, 5])
    for world in (1, 2):
        shares = [ShardSubset(urls, 8, 2, num_images=9, rank=rank, world=world) for rank in range(world)]
        assert [k for subset in shares for b in subset for k in b["key"]] == expected[:6] + ["s2_0"]
        skipped = Counter()
        for subset in shares:
            skipped.update(subset.skipped())
        assert skipped == {"not_an_image": 1, "missing_sample": 1}, world
    monkeypatch.undo()
    everything = ShardSubset(urls, 8, 5, num_images=None)
    assert [k for b in everything for k in b["key"]] == [k for k in keys if k != BROKEN]
    assert ShardSubset(urls, 8, 5, num_images=100).describe()["description"] == \
        "all 12 samples of the 3 validation shards"
    with pytest.raises(ValueError, match="num_images must be an integer >= 1"):
        ShardSubset(urls, 8, 5, num_images=0)


@pytest.mark.timeout(180)
def test_bounded_end_of_fit_report_measures_baselines_on_the_same_images(tmp_path, capsys) -> None:
    from tests.fixtures.photo_shards import photo_shards
    from vartok.cli.train import export_and_report
    from vartok.data import ImageDataModule
    from vartok.metrics import EvalPlan, evaluate
    from vartok.metrics.baselines import BaselineStats
    from vartok.tokenizers import Tokenizer
    from vartok.training.module import TokenizerModule
    from vartok.training.settings import Optimization

    train = photo_shards(tmp_path / "train", count=16, size=16, shards=2, seed=1)
    val = photo_shards(tmp_path / "val", count=13, size=16, shards=3, seed=2)
    data = ImageDataModule(train_shards=train, val_shards=val, image_size=16, batch_size=4, val_batch_size=3,
                           num_workers=0, epoch_size=8, shuffle_buffer=4)
    module = TokenizerModule(preset="demo_tiny", optim=Optimization(lr=1e-3, warmup_steps=1))
    trainer = pl.Trainer(default_root_dir=tmp_path / "run", accelerator="cpu", max_steps=2,
                         limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    capsys.readouterr()
    report = export_and_report(trainer, module, tmp_path / "run", ["psnr", "ssim"], num_images=5)
    printed = capsys.readouterr().out
    assert ("images: the first 5 of 13 samples of the 3 validation shards, in shard order (codec baselines "
            "on the same images)") in printed
    assert json.loads((tmp_path / "run" / "report" / "report.json").read_text())["num_images"] == 5
    assert report["num_images"] == report["baseline_images"] == 5
    assert report["subset"]["limit"] == 5 and report["subset"]["available"] == 13

    # Oracle: the first 5 validation images of one process's loader, the exported tokenizer, plain evaluate.
    pixels = _by_key(val, 16)
    images = torch.stack(list(pixels.values())[:5])
    tok = Tokenizer.from_pretrained(tmp_path / "run" / "export")
    batch = [{"image": images, "valid": torch.ones(5, dtype=torch.bool), "key": list(pixels)[:5]}]
    single = evaluate(tok, batch, EvalPlan([1, 2, 4], ["psnr", "ssim"], baselines=False, grid_images=0, show=False))
    budgets = [report["lengths"][k]["bytes_per_image"] for k in ("1", "2", "4")]
    for k in ("1", "2", "4"):
        for name in ("psnr", "ssim"):
            expected = single["lengths"][k][name]
            assert report["lengths"][k][name] == pytest.approx(expected, rel=1e-6), (k, name)
    assert report["codebook"] == single["codebook"]
    # The codec baselines: exactly those 5 images (the whole set gives other figures).
    same = BaselineStats(16, budgets)
    same.update(images)
    same = same.compute()
    whole = BaselineStats(16, budgets)
    whole.update(torch.stack(list(pixels.values())))
    whole = whole.compute()
    assert _close(report["baselines"], same["curves"]) and not _close(report["baselines"], whole["curves"])
    for k, budget in zip(("1", "2", "4"), budgets):
        assert _close(report["lengths"][k]["baselines"], same["best"][budget]), k


@pytest.mark.timeout(60)
def test_report_settings_are_checked_when_the_config_is_parsed(tmp_path, monkeypatch, capsys) -> None:
    from vartok.cli.train import VartokCLI
    from vartok.data import ImageDataModule
    from vartok.training.module import TokenizerModule

    monkeypatch.chdir(tmp_path)

    def parse(*extra: str) -> VartokCLI:
        return VartokCLI(TokenizerModule, ImageDataModule, run=False,
                         args=["--config", str(ROOT / "configs" / "demo.yaml"), *extra])

    assert parse("--report_images", "5").config["report_images"] == 5
    assert parse().config["report_images"] is None  # the demo: all 512 held-out crops
    for extra in (["--report_images", "0"], ["--report_metrics", "[psnr, fvd]"]):
        with pytest.raises(SystemExit):
            parse(*extra)
        assert f'Parser key "{extra[0][2:]}"' in capsys.readouterr().err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["titok_s128", "titok_s128_gan", "titok_s128_gq", "titok_s128_lfq18"])
def test_imagenet_recipes_measure_psnr_and_rfid_and_bound_the_end_of_fit_report(name, tmp_path,
                                                                                 monkeypatch) -> None:
    from tests.test_configs import fake_shards
    from vartok.cli.train import VartokCLI
    from vartok.data import ImageDataModule
    from vartok.metrics.callbacks import EvaluationCallback
    from vartok.training.module import TokenizerModule

    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs" / "imagenet" / f"{name}.yaml"), *fake_shards(tmp_path),
            "--trainer.default_root_dir", str(tmp_path / "run"),
            "--model.tokenizer", '{"depth": 1, "image_size": 32}', "--data.image_size", "32"]
    cli = VartokCLI(TokenizerModule, ImageDataModule, run=False, args=args,
                    save_config_kwargs={"overwrite": True})
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, EvaluationCallback)]
    assert len(callbacks) == 1
    assert {"psnr", "rfid"} <= callbacks[0].metrics and callbacks[0].num_images == 10000
    assert cli.config["report_images"] == 10000 and "rfid" in cli.config["report_metrics"]
