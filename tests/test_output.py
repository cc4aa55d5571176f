"""What people read: progress lines in log files (demo build, PCA start, evaluation), the evaluation table's
"—" explained and the --target-psnr line, rd.png panels for measured metrics only, labelled training grids in
the PNG and in TensorBoard. Imports of new names sit inside the tests, so that each test fails on its own."""

from __future__ import annotations

import copy
import io
import struct
import types
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from rich.console import Console

from tests.fixtures.doubles import ThumbnailTokenizer, photo_crops


def _batches(images: torch.Tensor, size: int) -> list[dict]:
    return [{"image": images[i : i + size], "valid": torch.ones(len(images[i : i + size]), dtype=torch.bool),
             "key": [str(j) for j in range(i, i + len(images[i : i + size]))]} for i in range(0, len(images), size)]


# ---------------------------------------------------------------------------------------------- progress lines
def test_progress_prints_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch) -> None:
    from vartok.metrics import progress as progress_module

    ticks = iter(range(10_000))
    monkeypatch.setattr(progress_module, "_clock", lambda: float(next(ticks)))  # 1 s per call
    batches = _batches(torch.zeros(200, 3, 4, 4, dtype=torch.uint8), 2)  # 100 batches of 2 images
    assert list(progress_module.progress(batches, show=True)) == batches
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "evaluating: 0 of 100 batches (0 %), 0.0 s"
    assert lines[-1].startswith("evaluating: done, 100 of 100 batches (100 %), ")
    assert lines[-1].endswith(", 200 images")
    assert "evaluating: 50 of 100 batches (50 %), " in "\n".join(lines) and "100 images" in lines[5]
    assert len(lines) == 11  # the start, each further 10 % (9), the end: no line per batch


def test_short_loops_print_only_their_ends_and_other_ranks_nothing(capsys) -> None:
    from vartok.metrics.progress import progress

    batches = _batches(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), 2)
    list(progress(batches, show=True))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[1].startswith("evaluating: done, 4 of 4 batches (100 %)")
    list(progress(batches, show=False))  # rank != 0
    assert capsys.readouterr().err == ""


def test_evaluate_prints_progress_lines_and_the_table(capsys) -> None:
    from vartok.metrics import EvalPlan, evaluate

    loader = _batches(photo_crops(6, 16, seed=1), 4)
    evaluate(ThumbnailTokenizer(16), loader, EvalPlan([1, 12], ["psnr"], grid_images=0))
    out, err = capsys.readouterr()
    assert "evaluating: done, 2 of 2 batches (100 %)" in err and "6 images" in err
    assert "PSNR" in out and "evaluating" not in out


def _fake_module(tokenizer, loader, rank_zero: bool) -> types.SimpleNamespace:
    trainer = types.SimpleNamespace(datamodule=types.SimpleNamespace(train_dataloader=lambda: loader),
                                    is_global_zero=rank_zero,
                                    strategy=types.SimpleNamespace(broadcast=lambda obj, src=0: obj))
    return types.SimpleNamespace(trainer=trainer, tokenizer=tokenizer, ema=types.SimpleNamespace(
        module=copy.deepcopy(tokenizer)), tokenizer_config=tokenizer.config)


@pytest.mark.parametrize("rank_zero", [True, False])
def test_pca_start_prints_progress_lines_on_rank_zero(capsys, rank_zero) -> None:
    from vartok.tokenizers import Tokenizer
    from vartok.training.pca_start import start_linear_path

    tokenizer = Tokenizer.from_preset("demo_tiny", global_linear=True)
    loader = _batches(photo_crops(48, 16, seed=3), 16)
    start_linear_path(_fake_module(tokenizer, loader, rank_zero), 40)
    err = capsys.readouterr().err
    if rank_zero:
        assert "global linear path: reading training images for its PCA: 0 of 40 images (0 %)" in err
        assert "global linear path: reading training images for its PCA: done, 40 of 40 images (100 %)" in err
        assert "global linear path: PCA of 40 images of 768 values (an SVD) ..." in err
        assert "global linear path: PCA done, " in err.splitlines()[-1]
    else:
        assert err == ""


def test_demo_build_prints_a_line_per_photo(tmp_path, capsys) -> None:
    from vartok.data import build_demo
    from vartok.data.demo import TRAIN_PHOTOS, VAL_PHOTOS

    build_demo(tmp_path / "demo", num_train=130, num_val=8)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("vartok demo data: building 130 training and 8 validation crops of 17")
    assert f"vartok demo data: train photo 13 of 13 ({TRAIN_PHOTOS[-1]}), 130 train crops, " in lines[13]
    assert f"vartok demo data: val photo 4 of 4 ({VAL_PHOTOS[-1]}), 8 val crops, " in lines[-1]
    build_demo(tmp_path / "quiet", num_train=130, num_val=8, show=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------- the table
def _report(**extra) -> dict:
    infeasible = {"jpeg": "infeasible", "webp": "infeasible"}
    thumb = {"bytes": 3.0, "psnr": 19.0, "ssim": 0.4, "width": 1}
    report = {
        "num_images": 10, "image_size": 32,
        "tokenizer": {"class": "T", "num_tokens": 32, "image_size": 32, "bits_per_token": 10.0, "codebook_size": 1024},
        "lengths": {"1": {"tokens": 1, "bytes_per_image": 2, "bpp": 0.016, "psnr": 18.8,
                          "baselines": infeasible | {"thumbnail": "infeasible"}},
                    "2": {"tokens": 2, "bytes_per_image": 3, "bpp": 0.023, "psnr": 20.0,
                          "baselines": infeasible | {"thumbnail": thumb}}},
        "baselines": {"jpeg": [{"quality": 1, "bytes": 651.0, "psnr": 20.6, "ssim": 0.58}],
                      "webp": [{"quality": 0, "bytes": 80.4, "psnr": 25.4, "ssim": 0.71}],
                      "thumbnail": [{"width": 1, "bytes": 3.0, "psnr": 19.0, "ssim": 0.4}]},
        "codebook": {}, "skipped": {}, "unavailable": {"lpips": "no VGG16 weights in /hub (give --lpips-weights)"},
    }
    return report | extra


def _printed(report: dict) -> str:
    from vartok.metrics.report import print_table

    buffer = io.StringIO()
    print_table(report, console=Console(file=buffer, width=200))
    return buffer.getvalue()


def test_every_dash_in_the_table_is_explained() -> None:
    text = _printed(_report())
    header = next(line for line in text.splitlines() if "tokens" in line)
    names = [cell.strip() for cell in header.strip("┃ ").split("┃")]
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in text.splitlines() if line.startswith("│")]
    legend = [line for line in text.splitlines() if line.startswith(("— ", "n/a "))]

    def explained(mark: str, name: str, k: str) -> bool:
        for line in legend:
            head = line.split(":")[0]
            columns = head.removeprefix(mark + " ").split(" (")[0].split(", ")
            ks = head.split(" (k = ")[1].rstrip(")").split(", ") if " (k = " in head else None  # None: every k
            if line.startswith(mark + " ") and name in columns and (ks is None or k in ks):
                return True
        return False

    seen = 0
    for row in rows:
        for name, cell in zip(names, row):
            if cell in ("—", "n/a"):
                seen += 1
                assert explained(cell, name, row[0]), (name, row[0], legend)
    assert seen == 10
    assert ("— JPEG, WebP (every k): infeasible, no setting fits every image in these bytes (smallest mean file: "
            "JPEG 651, WebP 80 bytes)") in legend
    assert ("— thumbnail (k = 1): infeasible, no setting fits every image in these bytes (smallest mean file: 1×1 "
            "thumbnail 3 bytes)") in legend
    assert "— SSIM: not requested (not among the metrics asked for)" in legend
    assert "— LPIPS: unavailable (reason below the table)" in legend
    assert "n/a margin (k = 1): no thumbnail fits in those bytes, nothing to compare with" in legend
    assert "lpips unavailable: no VGG16 weights in /hub (give --lpips-weights)" in text
    assert "rFID" not in header  # neither asked for nor unavailable: no column


def test_a_missing_value_and_a_missing_psnr_are_told_apart() -> None:
    report = _report()
    report["lengths"]["2"]["psnr"] = float("nan")
    legend = [line for line in _printed(report).splitlines() if line.startswith(("— ", "n/a "))]
    assert "— PSNR (k = 2): no finite value" in legend
    assert "n/a margin (k = 2): no tokenizer PSNR to compare with" in legend
    assert "n/a margin (k = 1): no thumbnail fits in those bytes, nothing to compare with" in legend


def test_target_line_says_how_many_images_met_the_target() -> None:
    target = {"target_psnr": 24.0, "images": 10, "mean_bytes": 31.5, "chosen_lengths": {"8": 2, "16": 1, "32": 7}}
    lines = _printed(_report(target=target | {"met": 6})).splitlines()
    assert ("target PSNR 24 dB (per image the smallest k that meets it): met by 6 of 10 images; the other 4 miss "
            "it even with all 32 tokens") in lines
    assert "  mean 31.5 bytes per image (all 32 tokens: 40); images per chosen k: k=8: 2, k=16: 1, k=32: 7" in lines
    text = _printed(_report(target=target))  # without "met" nothing is claimed about it
    assert "target PSNR 24 dB (per image the smallest k that meets it, else k = 32): 10 images" in text.splitlines()
    assert "met by" not in text


# ---------------------------------------------------------------------------------------------- rd.png
def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_rd_png_has_a_panel_per_measured_metric_only(tmp_path) -> None:
    from vartok.metrics.plots import plot_rate_distortion

    report = _report()
    for k, (lpips, rfid) in zip(report["lengths"], ((0.4, 80.0), (0.3, 60.0))):
        report["lengths"][k] |= {"lpips": lpips, "rfid": rfid}
    plot_rate_distortion(report, tmp_path / "all.png")  # PSNR, LPIPS, rFID: no SSIM panel
    plot_rate_distortion(_report(), tmp_path / "psnr.png")  # PSNR alone: one panel
    width, height = _png_size(tmp_path / "all.png")
    assert (width, height) == (1320, 1008)  # 2 × 2 at 5.5 × 4.2 in, 120 dpi
    assert _png_size(tmp_path / "psnr.png") == (660, 504)
    # The figure itself: which axes, and that none is empty.
    from vartok.metrics.plots import rate_distortion_figure

    fig = rate_distortion_figure(report)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["PSNR (dB, higher is better)", "LPIPS (lower is better)", "rFID (lower is better)"]
    assert all(ax.lines for ax in fig.axes)
    assert [tuple(line.get_ydata()) for line in fig.axes[2].lines] == [(80.0, 60.0)]
    nothing = _report()
    for row in nothing["lengths"].values():
        row.pop("psnr")
    assert rate_distortion_figure(nothing) is None
    assert plot_rate_distortion(nothing, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


# ---------------------------------------------------------------------------------------------- training grids
@pytest.mark.timeout(120)
def test_training_grid_rows_are_labelled_in_the_png_and_in_tensorboard(tmp_path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.fixtures.photo_shards import photo_shards
    from vartok.data import ImageDataModule
    from vartok.training.callbacks import ReconstructionGrid
    from vartok.training.module import TokenizerModule
    from vartok.training.settings import Optimization

    train = photo_shards(tmp_path / "train", count=16, size=16, shards=2, seed=1)
    val = photo_shards(tmp_path / "val", count=6, size=16, shards=2, seed=2)
    data = ImageDataModule(train_shards=train, val_shards=val, image_size=16, batch_size=4, val_batch_size=3,
                           num_workers=0, epoch_size=8, shuffle_buffer=4)
    module = TokenizerModule(preset="demo_tiny", optim=Optimization(lr=1e-3, warmup_steps=1))
    logger = TensorBoardLogger(tmp_path / "run", name="logs")
    # No validation loop runs in this fit: the grid reads its fixed batch from the data module.
    trainer = pl.Trainer(default_root_dir=tmp_path / "run", accelerator="cpu", max_steps=2, limit_val_batches=0,
                         logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[ReconstructionGrid(every_n_steps=2, num_images=3)])
    trainer.fit(module, datamodule=data)
    logger.experiment.flush()

    saved = np.asarray(Image.open(tmp_path / "run" / "grids" / "step_0000002.png").convert("RGB"))
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["reconstructions"]
    [logged] = events.Images("reconstructions")
    assert logged.step == 2
    logged = np.asarray(Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB"))
    assert logged.shape == saved.shape and np.abs(logged.astype(int) - saved.astype(int)).max() <= 1

    rows = ["original"] + [f"k = {k}" for k in module.val_lengths]  # demo_tiny: 1, 2, 4
    height, width = 16, 3 * (16 + 1) + 1  # three 16 px images per row, 1 px padding
    margin = saved.shape[1] - width
    assert saved.shape[0] == len(rows) * (height + 1) + 1 and margin > 0
    for i in range(len(rows)):  # each row's label: dark pixels in the margin beside it
        band = saved[1 + i * (height + 1) : 1 + i * (height + 1) + height, :margin]
        assert (band.min(axis=2) < 128).sum() > 10, rows[i]


def test_labelled_grid_draws_each_label_beside_its_row() -> None:
    from vartok.training.callbacks import labelled_grid

    rows = [torch.full((2, 3, 20, 20), v) for v in (0.0, 0.5, 1.0)]
    grid = labelled_grid(rows, ["original", "k = 16", ""])
    margin = grid.shape[2] - (2 * 21 + 1)
    assert grid.shape[:2] == (3, 3 * 21 + 1) and margin > 0
    assert torch.equal(grid[:, 1:21, margin + 1 : margin + 21], torch.zeros(3, 20, 20))  # the images, unchanged
    inked = [(grid[:, 1 + i * 21 : 21 + i * 21, :margin] < 0.5).any(0).sum().item() for i in range(3)]
    assert inked[0] > inked[1] > 0 and inked[2] == 0  # the longer label has more ink; an empty label none
    with pytest.raises(ValueError, match="one label per row"):
        labelled_grid(rows, ["original"])


def test_training_progress_is_plain_lines_when_output_goes_to_a_log_file(tmp_path, capsys, monkeypatch) -> None:
    """Under pytest stdout is not a terminal, as with `vartok-train ... > run.log`: the step bar then writes
    plain lines (every VARTOK_PROGRESS_SECONDS; 0 here: every step after the first)."""
    import pytorch_lightning as pl

    from tests.fixtures.photo_shards import photo_shards
    from tests.fixtures.resume_fit import tiny_data, tiny_module
    from vartok.cli.logs import StepProgressBar

    monkeypatch.setenv("VARTOK_PROGRESS_SECONDS", "0")
    shards = photo_shards(tmp_path / "shards", count=32, size=16)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=4, accelerator="cpu", devices=1, logger=False,
                         limit_val_batches=0, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[StepProgressBar()])
    trainer.fit(tiny_module(), datamodule=tiny_data(shards))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(",")[0] for line in lines] == ["step 2/4 (50 %)", "step 3/4 (75 %)", "step 4/4 (100 %)"]
    assert all("steps/s" in line and "loss" in line for line in lines)
