"""The evaluation report: report.json (schema below), the printed table, and the figures.

report.json::

    {"num_images", "image_size", "tokenizer": {...},
     "lengths": {"<k>": {"tokens", "bytes_per_image", "bpp", "psnr", "ssim", "lpips"?, "rfid"?, "pfid"?,
                         "gfid"?, "bits_per_token"? (a token prior's, vartok.metrics.generation),
                         "baselines": {"jpeg"|"webp"|"thumbnail": {"bytes", "psnr", "ssim"} | "infeasible"}}},
     "codebook": {...}, "baselines": {"jpeg": [...], "webp": [...], "thumbnail": [...]},
     "target"? ({"target_psnr", "images", "met"? (images whose chosen k reaches the target), "mean_bytes",
                 "chosen_lengths": {"<k>": images}}, with a target PSNR),
     "skipped": {reason: count}, "unavailable": {metric: reason}, "padding_samples",
     "baseline_images" (how many of the images the codecs were measured on),
     "subset"? (how the images were chosen: {"selection", "description", "limit", "samples", "available",
                "ranks"}, see vartok.metrics.subset),
     "provenance"? (what was measured with what: {"checkpoint": {"path", "kind", "weights": "ema"|"raw"|...},
                    "networks": {"inception"|"lpips": {"path", "sha256", "official", "warning"?}},
                    "warnings": [...]}),
     "prior"? (the token prior behind gfid / bits_per_token: {"path", "spec", "num_classes", "sampling",
               "samples"})}

Non-finite numbers are written as null. The printed table explains each "—" under it (a codec that cannot make a
file that small, a metric not requested, a metric that could not run and why).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from torch import Tensor

from vartok.metrics.baselines import INFEASIBLE
from vartok.metrics.rate import bytes_per_image

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
    written = []
    if out_dir is not None and rank == 0:
        from vartok.metrics.plots import plot_grid, plot_rate_distortion

        out = Path(out_dir)
        written.append(write_report(report, out / "report.json").name)
        if plot_rate_distortion(report, out / "rd.png") is not None:
            written.append("rd.png")
        if grid.get("original"):
            written.append(plot_grid(grid, report, out / "grid.png").name)
    if show:
        print_table(report, out_dir, written=written)
    return report


DASH = "—"
METRIC_COLUMNS = {"psnr": ("PSNR", 2), "ssim": ("SSIM", 3), "lpips": ("LPIPS", 3), "rfid": ("rFID", 2),
                  "gfid": ("gFID", 2), "bits_per_token": ("bits/token", 3)}
UNAVAILABLE_KEYS = {"bits_per_token": "bits"}  # the report key of a column -> its metric name in "unavailable"
CODEC_COLUMNS = {"jpeg": "JPEG", "webp": "WebP", "thumbnail": "thumbnail"}


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _num(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if _finite_number(value) else DASH


def _metric_columns(report: dict) -> dict[str, str]:
    """Metric → why its cells are empty ("" when measured): PSNR and SSIM always get a column, LPIPS and rFID
    when they were measured or asked for and unavailable."""
    rows = list(report["lengths"].values())
    unavailable = report.get("unavailable", {})
    columns = {}
    for metric in METRIC_COLUMNS:
        measured = any(metric in row for row in rows)
        if measured:
            columns[metric] = ""
        elif UNAVAILABLE_KEYS.get(metric, metric) in unavailable:
            columns[metric] = "unavailable (reason below the table)!"
        elif metric in ("psnr", "ssim"):
            columns[metric] = "not requested (not among the metrics asked for)!"
    return columns


INFEASIBLE_TEXT = "infeasible, no setting fits every image in these bytes"


def _smallest_files(report: dict, columns: list[str]) -> str:
    """" (smallest mean file: JPEG 651, WebP 80 bytes)": each codec's smallest mean file size over its settings."""
    names = {name: codec for codec, name in CODEC_COLUMNS.items()}
    sizes = [f"{'1×1 ' if name == 'thumbnail' else ''}{name} {min(p['bytes'] for p in points):.0f}"
             for name in columns if (points := report.get("baselines", {}).get(names[name]))]
    return f" (smallest mean file: {', '.join(sizes)} bytes)" if sizes else ""


def _legend(report: dict, dashes: dict[tuple[str, str, str], list[str]]) -> list[str]:
    """What each "—" (and "n/a") of the table means: one line per meaning and set of rows, naming the columns.

    Args:
        report: the report (for the codecs' smallest files).
        dashes: (mark, column, meaning) → the k of the rows where the cell shows it; a meaning that ends in
            "!" holds for the whole column (no k listed).
    """
    every = tuple(report["lengths"])
    groups: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for (mark, column, meaning), ks in dashes.items():
        whole = meaning.endswith("!")
        groups.setdefault((mark, meaning.rstrip("!"), () if whole else tuple(ks)), []).append(column)
    lines = []
    for (mark, meaning, ks), columns in groups.items():
        where = ", ".join(columns) + (" (every k)" if ks == every and len(ks) > 1 else
                                      f" (k = {', '.join(ks)})" if ks else "")
        extra = _smallest_files(report, columns) if meaning == INFEASIBLE_TEXT else ""
        lines.append(f"{mark} {where}: {meaning}{extra}")
    return lines


def _baseline_cell(entry: Any) -> tuple[Text, str]:
    if entry is None or entry == INFEASIBLE:
        return Text(DASH, style="dim"), INFEASIBLE_TEXT
    return Text(f"{entry['psnr']:.2f}"), ""


def _margin_cell(psnr: float | None, thumb: Any) -> tuple[Text, str]:
    if not isinstance(thumb, dict):
        return Text("n/a", style="dim"), "no thumbnail fits in those bytes, nothing to compare with"
    if not _finite_number(psnr):
        return Text("n/a", style="dim"), "no tokenizer PSNR to compare with"
    margin = psnr - thumb["psnr"]
    return Text(f"{margin:+.2f}", style="green" if margin > 0 else "red"), ""


def _metric_cell(value: Any, metric: str, empty: str) -> tuple[Text, str]:
    text = _num(value, METRIC_COLUMNS[metric][1])
    return Text(text), (empty or "no finite value") if text == DASH else ""


def results_table(report: dict) -> tuple[Table, list[str]]:
    """A rich table: per k the rate, the tokenizer's quality, and the best baselines at ≤ its bytes; and the
    lines to print under it: what the codec columns hold, and what each "—" (and "n/a") in it means."""
    metrics = _metric_columns(report)
    codecs = "baselines" in report
    table = Table(title=f"vartok evaluation — {report['num_images']} images, {report['image_size']} px")
    names = ["tokens", "bytes", "bpp", *[METRIC_COLUMNS[m][0] for m in metrics]]
    names += [*CODEC_COLUMNS.values(), "margin"] if codecs else []
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    dashes: dict[tuple[str, str, str], list[str]] = {}
    for k, entry in report["lengths"].items():
        cells = [(Text(str(k)), ""), (Text(str(entry["bytes_per_image"])), ""), (Text(_num(entry["bpp"], 3)), "")]
        cells += [_metric_cell(entry.get(m), m, empty) for m, empty in metrics.items()]
        if codecs:
            base = entry.get("baselines", {})
            cells += [_baseline_cell(base.get(codec)) for codec in CODEC_COLUMNS]
            thumb = base.get("thumbnail")
            if isinstance(thumb, dict):
                cells[-1][0].append(f" ({thumb['width']}×{thumb['width']})", style="dim")
            cells.append(_margin_cell(entry.get("psnr"), thumb))
        for name, (cell, meaning) in zip(names, cells):
            if meaning:
                dashes.setdefault((cell.plain, name, meaning), []).append(str(k))
        table.add_row(*[cell for cell, _ in cells])
    codec_note = ("JPEG / WebP / thumbnail: best PSNR at ≤ the tokenizer's bytes per image; margin = tokenizer "
                  "PSNR − thumbnail PSNR")
    notes = [codec_note] if codecs else []
    return table, notes + _legend(report, dashes)


def target_lines(target: dict, report: dict) -> list[str]:
    """The --target-psnr result in words: how many images met it (when the report says), the mean bytes
    against all N tokens, and how many images each chosen k got."""
    info = report.get("tokenizer") or {}
    full, met, images = info.get("num_tokens"), target.get("met"), target["images"]
    head = f"target PSNR {target['target_psnr']:g} dB (per image the smallest k that meets it"
    if met is not None:
        head += f"): met by {met} of {images} images"
        if met < images and full:
            head += f"; the other {images - met} miss it even with all {full} tokens"
    else:
        head += f"{f', else k = {full}' if full else ''}): {images} images"
    rate = f"  mean {target['mean_bytes']:.1f} bytes per image"
    if full and info.get("bits_per_token"):
        rate += f" (all {full} tokens: {bytes_per_image(int(full), float(info['bits_per_token']))})"
    chosen = ", ".join(f"k={k}: {n}" for k, n in target["chosen_lengths"].items())
    return [head, f"{rate}; images per chosen k: {chosen}"]


def print_table(report: dict, out_dir: str | os.PathLike | None = None, console: Console | None = None,
                written: list[str] | None = None) -> None:
    """Print the results table and what its "—" mean, the codebook usage, pFID, the target PSNR result,
    unavailable metrics and which files were written.

    Args:
        report: the evaluation report.
        out_dir: where the files were written (None: no files).
        console: where to print (default: standard output).
        written: the files written into `out_dir` (default: report.json, rd.png, grid.png).
    """
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: wide enough for every column
            console = Console(width=max(console.width, 132))
    table, legend = results_table(report)
    console.print(table)
    for line in legend:
        console.print(line, markup=False, highlight=False)
    if "baselines" not in report:
        console.print("codec baselines: not measured (switched off)")
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
    for line in target_lines(report["target"], report) if report.get("target") else []:
        console.print(line, markup=False, highlight=False)
    for name, reason in report.get("unavailable", {}).items():
        console.print(f"[yellow]{name} unavailable:[/yellow] {escape(str(reason))}")
    if out_dir is not None:
        names = ["report.json", "rd.png", "grid.png"] if written is None else written
        if names:
            console.print(f"wrote {Path(out_dir) / names[0]}" + "".join(f", {n}" for n in names[1:]))
