"""Figures of the evaluation report (matplotlib, Agg backend): rd.png and grid.png."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

BASELINE_STYLE = {"jpeg": ("JPEG (Pillow)", "tab:orange", "s"), "webp": ("WebP (Pillow)", "tab:green", "^"),
                  "thumbnail": ("bicubic thumbnail", "tab:gray", "o")}


PANELS = {"psnr": "PSNR (dB, higher is better)", "ssim": "SSIM (higher is better)",
          "lpips": "LPIPS (lower is better)", "rfid": "rFID (lower is better)"}


def measured_metrics(report: dict) -> list[str]:
    """The metrics of PANELS with a finite value at some k: one panel each (never an empty axis)."""
    rows = report["lengths"].values()
    return [m for m in PANELS if any(isinstance(row.get(m), (int, float)) and math.isfinite(row[m]) for row in rows)]


def rate_distortion_figure(report: dict) -> plt.Figure | None:
    """One panel per measured metric against bytes per image (log x): the tokenizer at each k, and for PSNR and
    SSIM the JPEG / WebP / thumbnail curves; None when no metric was measured.

    Args:
        report: the evaluation report (its "lengths" and "baselines").
    """
    metrics = measured_metrics(report)
    if not metrics:
        return None
    columns = min(len(metrics), 2)
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    lengths = report["lengths"]
    for ax, metric in zip(axes.flat, metrics):
        for codec, points in report.get("baselines", {}).items():
            if metric not in ("psnr", "ssim"):
                break  # the codecs are measured by PSNR and SSIM only
            name, color, marker = BASELINE_STYLE.get(codec, (codec, None, "."))
            points = sorted(points, key=lambda p: p["bytes"])
            ax.plot([p["bytes"] for p in points], [p[metric] for p in points], marker=marker, markersize=3,
                    color=color, label=name, alpha=0.8)
        ks = [k for k in lengths if isinstance(lengths[k].get(metric), (int, float)) and math.isfinite(lengths[k][metric])]
        rates, values = [lengths[k]["bytes_per_image"] for k in ks], [lengths[k][metric] for k in ks]
        ax.plot(rates, values, marker="o", color="tab:blue", linewidth=2, label="vartok tokenizer")
        for k, x, y in zip(ks, rates, values):
            ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:blue")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image")
        ax.set_ylabel(PANELS[metric])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        fig.delaxes(ax)  # an odd number of panels: no empty axis in the corner
    fig.suptitle(f"quality vs bytes — {report['num_images']} images, {report['image_size']} px")
    return fig


def plot_rate_distortion(report: dict, path: str | os.PathLike) -> Path | None:
    """Write rd.png (see `rate_distortion_figure`); None, and no file, when no metric was measured.

    Args:
        report: the evaluation report.
        path: the PNG to write.
    """
    fig = rate_distortion_figure(report)
    return None if fig is None else _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Lay out, write the PNG (creating its folder) and close the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _row_strip(images: list[Tensor], columns: int, gap: int = 2) -> Tensor:
    """uint8 (b,3,H,W) pieces → one (H, columns·(W+gap), 3) strip, white where images are missing."""
    batch = torch.cat(images)[:columns]
    _, _, height, width = batch.shape
    strip = torch.full((height, columns * (width + gap), 3), 255, dtype=torch.uint8)
    for i, image in enumerate(batch):
        strip[:, i * (width + gap): i * (width + gap) + width] = image.permute(1, 2, 0)
    return strip


def plot_grid(grid: dict[str, list[Tensor]], report: dict, path: str | os.PathLike) -> Path:
    """Originals (top row) and their reconstructions at each k (one row per k), labelled.

    Args:
        grid: "original" and "<k>" → lists of uint8 (b,3,H,W) images (the same images in each row).
        report: the report (for each k's bytes in the labels).
        path: the PNG to write.
    """
    rows = ["original"] + [k for k in report["lengths"] if k in grid]
    columns = sum(t.shape[0] for t in grid["original"])
    size = report["image_size"]
    scale = max(0.6, min(1.6, 96 / size))
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.2 + columns * scale, len(rows) * scale * 1.05),
                             squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        ax.imshow(_row_strip(grid[row], columns).numpy(), interpolation="nearest")
        if row == "original":
            label = "original"
        else:
            entry = report["lengths"][row]
            label = f"k={row}\n{entry['bytes_per_image']} B" + (f"\n{entry['psnr']:.1f} dB" if "psnr" in entry else "")
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return _save(fig, path)
