"""The evaluation report: report.json (schema below), the printed table, and the figures.

report.json::

    {"num_images", "image_size", "tokenizer": {...},
     "lengths": {"<k>": {"tokens", "bytes_per_image", "bpp", "psnr", "ssim", "lpips"?, "rfid"?, "pfid"?,
                         "baselines": {"jpeg"|"webp"|"thumbnail": {"bytes", "psnr", "ssim"} | "infeasible"}}},
     "codebook": {...}, "baselines": {"jpeg": [...], "webp": [...], "thumbnail": [...]},
     "target"? ({"target_psnr", "images", "mean_bytes", "chosen_lengths": {"<k>": images}}, with a target PSNR),
     "skipped": {reason: count}, "unavailable": {metric: reason}, "padding_samples",
     "baseline_images" (how many of the images the codecs were measured on),
     "subset"? (how the images were chosen: {"selection", "description", "limit", "samples", "available",
                "ranks"}, see vartok.metrics.subset)}

Non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import Tensor

from vartok.metrics.baselines import INFEASIBLE

KEY_ORDER = ("num_images", "subset", "image_size", "tokenizer", "lengths", "codebook", "baselines", "target",
             "skipped", "unavailable", "padding_samples", "baseline_images")


def tokenizer_info(tokenizer: Any) -> dict:
    """What identifies the evaluated tokenizer in the report."""
    return {
        "class": type(tokenizer).__name__,
        "num_tokens": int(tokenizer.num_tokens),
        "image_size": int(tokenizer.image_size),
        "bits_per_token": float(tokenizer.bits_per_token),
        "codebook_size": int(tokenizer.codebook_size),
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write `report` as JSON (non-finite numbers → null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report), indent=2) + "\n")
    return path


def finish_report(report: dict, tokenizer: Any, unavailable: dict[str, str], grid: dict[str, list[Tensor]],
                  out_dir: str | os.PathLike | None, show: bool, rank: int = 0) -> dict:
    """Complete the report, write report.json / rd.png / grid.png (rank 0) and print the table.

    Args:
        report: the figures from the evaluation pass.
        tokenizer: the evaluated tokenizer (for its description).
        unavailable: metric → reason it could not run.
        grid: row name ("original", "<k>") → list of uint8 (b,3,H,W) images.
        out_dir: output folder or None.
        show: print the table.
        rank: only rank 0 writes files.
    """
    report["image_size"] = int(tokenizer.image_size)
    report["tokenizer"] = tokenizer_info(tokenizer)
    report["unavailable"] = dict(unavailable)
    report.setdefault("skipped", {})
    report = {key: report[key] for key in KEY_ORDER if key in report} | {
        k: v for k, v in report.items() if k not in KEY_ORDER
    }
    if out_dir is not None and rank == 0:
        from vartok.metrics.plots import plot_grid, plot_rate_distortion

        out = Path(out_dir)
        write_report(report, out / "report.json")
        plot_rate_distortion(report, out / "rd.png")
        if grid.get("original"):
            plot_grid(grid, report, out / "grid.png")
    if show:
        print_table(report, out_dir)
    return report


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _baseline_cell(entry: Any) -> Text:
    if entry is None or entry == INFEASIBLE:
        return Text("—", style="dim")
    return Text(f"{entry['psnr']:.2f}")


def _margin_cell(psnr: float | None, thumb: Any) -> Text:
    if psnr is None or thumb is None or thumb == INFEASIBLE:
        return Text("n/a", style="dim")
    margin = psnr - thumb["psnr"]
    return Text(f"{margin:+.2f}", style="green" if margin > 0 else "red")


def results_table(report: dict) -> Table:
    """A rich table: per k the rate, the tokenizer's quality, and the best baselines at ≤ its bytes."""
    rows = report["lengths"]
    first = next(iter(rows.values()), {})
    extra = [m for m in ("lpips", "rfid") if m in first]
    table = Table(title=f"vartok evaluation — {report['num_images']} images, {report['image_size']} px",
                  caption="JPEG / WebP / thumbnail: best PSNR at ≤ the tokenizer's bytes per image "
                          "(— : no setting fits); margin = tokenizer PSNR − thumbnail PSNR")
    for name in ["tokens", "bytes", "bpp", "PSNR", "SSIM", *[m.upper() if m == "lpips" else "rFID" for m in extra],
                 "JPEG", "WebP", "thumbnail", "margin"]:
        table.add_column(name, justify="right", no_wrap=True)
    for k, entry in rows.items():
        base = entry.get("baselines", {})
        thumb = base.get("thumbnail")
        thumb_cell = _baseline_cell(thumb)
        if isinstance(thumb, dict):
            thumb_cell.append(f" ({thumb['width']}×{thumb['width']})", style="dim")
        cells = [k, str(entry["bytes_per_image"]), _num(entry["bpp"], 3), _num(entry.get("psnr")),
                 _num(entry.get("ssim"), 3), *[_num(entry.get(m), 3 if m == "lpips" else 2) for m in extra],
                 _baseline_cell(base.get("jpeg")), _baseline_cell(base.get("webp")), thumb_cell,
                 _margin_cell(entry.get("psnr"), thumb)]
        table.add_row(*cells)
    return table


def print_table(report: dict, out_dir: str | os.PathLike | None = None, console: Console | None = None) -> None:
    """Print the results table, the codebook usage, pFID, unavailable metrics and where the files are."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: wide enough for every column
            console = Console(width=max(console.width, 132))
    console.print(results_table(report))
    subset = report.get("subset") or {}
    bounded = subset.get("available") is None or subset.get("samples") != subset.get("available")
    if subset.get("limit") is not None and bounded:
        same = report.get("baselines") and report.get("baseline_images") == report["num_images"]
        same = " (codec baselines on the same images)" if same else ""
        console.print(f"images: {subset['description']}{same}")
    measured = report.get("baseline_images")
    if measured is not None and measured < report["num_images"]:
        console.print(f"codec baselines measured on the first {measured} of {report['num_images']} images")
    book = report.get("codebook", {})
    if "usage" in book:
        console.print(f"codebook: {book['distinct_codes']:.0f} of {book['codebook_size']} codes used "
                      f"({100 * book['usage']:.1f} %), perplexity {book['perplexity']:.1f}")
    for k, entry in report["lengths"].items():
        for name, pfid in entry.get("pfid", {}).items():
            console.print(f"pFID {name} at k={k}: {pfid['mean']:.3f} (rFID {_num(entry.get('rfid'), 3)})")
    target = report.get("target")
    if target:
        chosen = ", ".join(f"k={k}: {n}" for k, n in target["chosen_lengths"].items())
        console.print(f"target PSNR {target['target_psnr']:g} dB: {target['images']} images, mean "
                      f"{target['mean_bytes']:.1f} bytes per image (images per chosen k: {chosen})")
    for name, reason in report.get("unavailable", {}).items():
        console.print(f"[yellow]{name} unavailable:[/yellow] {reason}")
    if out_dir is not None:
        console.print(f"wrote {Path(out_dir) / 'report.json'}, rd.png, grid.png")
