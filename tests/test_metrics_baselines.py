"""Codec baselines: whole-file bytes as Pillow writes them, quality from scikit-image, best-at-budget by
brute force, and a sanity check against docs/calibration.md's 32-pixel figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from tests.fixtures.doubles import photo_crops
from vartok.metrics.baselines import INFEASIBLE, BaselineStats, Setting, baseline_table, encode_decode


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return photo_crops(12, 32, seed=5)


@pytest.mark.parametrize("setting", [Setting("jpeg", 1), Setting("jpeg", 75), Setting("webp", 0), Setting("webp", 80)])
def test_bytes_are_the_whole_file_pillow_writes(tmp_path, crops: torch.Tensor, setting: Setting) -> None:
    image = Image.fromarray(crops[0].permute(1, 2, 0).numpy())
    decoded, nbytes = encode_decode(image, setting)
    path = tmp_path / f"x.{setting.codec}"
    image.save(path, quality=setting.param)
    assert nbytes == path.stat().st_size
    with Image.open(path) as reread:
        assert np.array_equal(decoded, np.asarray(reread.convert("RGB")))


def test_table_matches_skimage_psnr_and_thumbnail_bytes(crops: torch.Tensor) -> None:
    settings = [Setting("jpeg", 50), Setting("thumbnail", 3), Setting("webp", 10)]
    table = baseline_table(crops[:3], settings)
    assert table.shape == (3, 3, 3) and table.dtype == torch.float64
    for i in range(3):
        image = Image.fromarray(crops[i].permute(1, 2, 0).numpy())
        for j, setting in enumerate(settings):
            decoded, nbytes = encode_decode(image, setting)
            assert table[i, j, 0] == nbytes
            ref = peak_signal_noise_ratio(crops[i].permute(1, 2, 0).numpy(), decoded, data_range=255)
            assert table[i, j, 1].item() == pytest.approx(ref, rel=1e-5)
    assert (table[:, 1, 0] == 27).all()


def _best_brute_force(table: torch.Tensor, settings: list[Setting], codec: str, budget: int):
    rows = []
    for image_rows in table.tolist():
        fitting = [r for r, s in zip(image_rows, settings) if s.codec == codec and r[0] <= budget]
        if not fitting:
            return INFEASIBLE
        best = max(fitting, key=lambda r: r[1])
        rows.append((best[0], best[1], max(r[2] for r in fitting)))
    return {"bytes": np.mean([r[0] for r in rows]), "psnr": np.mean([r[1] for r in rows]),
            "ssim": np.mean([r[2] for r in rows])}


def test_best_at_budget_and_curves_equal_brute_force(crops: torch.Tensor) -> None:
    budgets = [2, 12, 48, 100, 700, 5000]
    stats = BaselineStats(32, budgets)
    for lo, hi in ((0, 5), (5, 6), (6, 12)):
        stats.update(crops[lo:hi])
    stats.update(crops[:0])
    out = stats.compute()
    table = baseline_table(crops, stats.settings)
    for budget in budgets:
        for codec in ("jpeg", "webp", "thumbnail"):
            expected = _best_brute_force(table, stats.settings, codec, budget)
            got = out["best"][budget][codec]
            if expected == INFEASIBLE:
                assert got == INFEASIBLE, (budget, codec)
            else:
                for key in ("bytes", "psnr", "ssim"):
                    assert got[key] == pytest.approx(expected[key], rel=1e-9), (budget, codec, key)
    assert out["best"][2]["thumbnail"] == INFEASIBLE and out["best"][12]["thumbnail"]["width"] == 2
    jpeg_curve = out["curves"]["jpeg"]
    assert [p["quality"] for p in jpeg_curve] == [s.param for s in stats.settings if s.codec == "jpeg"]
    first = next(j for j, s in enumerate(stats.settings) if s.codec == "jpeg")
    assert jpeg_curve[0]["psnr"] == pytest.approx(table[:, first, 1].mean().item(), rel=1e-9)


def test_sanity_against_calibration_figures_at_32px() -> None:
    """docs/calibration.md (held-out 32 px crops): 1×1 thumbnail 17.87 dB, 2×2 19.62 dB, smallest WebP 62–126 B,
    smallest JPEG ≈ 640 B. Other photos here, so only the ballpark is checked."""
    stats = BaselineStats(32, [3])
    stats.update(photo_crops(30, 32, seed=11))
    curves = stats.compute()["curves"]
    thumbs = {p["width"]: p for p in curves["thumbnail"]}
    assert 16.0 < thumbs[1]["psnr"] < 20.0 and thumbs[1]["psnr"] < thumbs[2]["psnr"] < thumbs[4]["psnr"]
    assert 40 < curves["webp"][0]["bytes"] < 160
    assert 550 < curves["jpeg"][0]["bytes"] < 750
