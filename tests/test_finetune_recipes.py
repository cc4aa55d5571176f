"""The fine-tuning recipes (configs/finetune) run from the command line on a converted TiTok: the parity
fixtures' models, converted by `vartok-convert` from their released-format checkpoints (32 px, small ViTs), a
few steps each, scaled down by command-line overrides only (CPU, 32 px data, no downloads)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures import commands
from tests.fixtures.photo_shards import photo_shards
from tests.test_titok_parity import released_checkpoint
from vartok import Tokenizer
from vartok.convert.titok import convert_titok

ROOT = Path(__file__).resolve().parents[1]
STEPS = 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return photo_shards(tmp_path_factory.mktemp("shards"), count=16, size=32)


def converted(variant: str, folder: Path) -> Path:
    released_checkpoint(variant, folder / "released")
    convert_titok(folder / "released", folder / "export")
    return folder / "export"


def fit(recipe: str, export: Path, shards: list[str], run: Path, capfd, caplog, monkeypatch, *extra: str) -> str:
    from vartok.cli.train import main

    args = ["fit", "--config", str(ROOT / "configs" / "finetune" / recipe), "--model.init_from", str(export),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32",
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--trainer.default_root_dir", str(run), "--model.lpips_random_init", "true",
            "--model.optim.warmup_steps", "1", "--model.optim.lr", "0.001",
            "--data.train_shards", shards[0], "--data.val_shards", shards[1], "--data.image_size", "32",
            "--data.batch_size", "2", "--data.val_batch_size", "2", "--data.num_workers", "0",
            "--report_images", "2", "--report_metrics", "[psnr]", *extra]
    monkeypatch.setattr(sys, "argv", ["vartok-train"])
    with caplog.at_level(logging.INFO):
        code, out, err = commands.run_main(main, capfd, *args)
    assert code == 0, f"exit {code}: {(out + err)[-3000:]}"
    return out + err + "\n".join(r.getMessage() for r in caplog.records)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_tail_drop_recipe_fine_tunes_a_converted_single_stage_titok(tmp_path, shards, capfd, caplog, monkeypatch):
    export = converted("single_stage", tmp_path)
    text = fit("titok_tail_drop.yaml", export, shards, tmp_path / "run", capfd, caplog, monkeypatch)
    assert "start from the export" in text
    before = Tokenizer.from_pretrained(export).state_dict()
    after = Tokenizer.from_pretrained(tmp_path / "run" / "export").state_dict()  # the fit's own export (EMA)
    for part in ("encoder.", "quantizer.", "decoder."):  # the whole tokenizer trains
        assert changed(before, after, part), part


def test_robust_decoder_recipe_trains_only_the_decoder_of_a_two_stage_titok(tmp_path, shards, capfd, caplog,
                                                                              monkeypatch):
    export = converted("two_stage", tmp_path)
    text = fit("titok_robust_decoder.yaml", export, shards, tmp_path / "run", capfd, caplog, monkeypatch,
               "--model.perturbation.end_step", "1")
    assert "frozen: encoder, quantizer)" in text
    before = Tokenizer.from_pretrained(export).state_dict()
    after = Tokenizer.from_pretrained(tmp_path / "run" / "export").state_dict()
    assert not changed(before, after, "encoder.") and not changed(before, after, "quantizer.")
    assert changed(before, after, "decoder.pixel_decoder.")


def test_data_of_another_size_than_the_export_is_one_sentence(tmp_path, shards, capfd, caplog, monkeypatch):
    export = converted("single_stage", tmp_path)
    with pytest.raises(AssertionError, match="exit 2") as failure:
        fit("titok_tail_drop.yaml", export, shards, tmp_path / "run", capfd, caplog, monkeypatch,
            "--data.image_size", "64")
    assert (f"data.image_size=64 does not match the image size 32 of the tokenizer in model.init_from {export}"
            in str(failure.value))
    assert "Traceback" not in str(failure.value)
