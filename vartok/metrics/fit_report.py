"""The end-of-fit evaluation of `vartok-train fit`: the exported tokenizer on the trainer's devices.

Every rank takes part: each evaluates its share of the validation subset (`vartok.metrics.subset`: the first
`num_images` samples of the validation shards in shard order, or all of them) with
:func:`vartok.metrics.evaluation.evaluate`, JPEG / WebP / thumbnails included, on the same images; so the
codec sweep is split over the ranks like the tokenizer's work, and its PSNR/SSIM run on the rank's device. The
figures are synced over ranks; rank 0 writes report.json (with the subset it was measured on), rd.png and
grid.png, and prints the table. The frozen networks of an `EvaluationCallback` in the trainer are reused (its
weights files and feature layer); without one, LPIPS and rFID look for their weights in the torch hub cache
and are reported unavailable when a file is missing.
"""

from __future__ import annotations

import os
import time
from typing import Any

from torch import nn

from vartok.distributed import rank_world
from vartok.metrics.evaluation import evaluate
from vartok.metrics.plan import EvalPlan, Networks
from vartok.metrics.subset import validation_subset


def callback_networks(trainer: Any) -> dict[str, nn.Module | None]:
    """The frozen LPIPS and Inception networks of the trainer's EvaluationCallback (None if it has none)."""
    from vartok.metrics.callbacks import EvaluationCallback

    found: dict[str, nn.Module | None] = {"lpips": None, "inception": None}
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, EvaluationCallback):
            found = {name: found[name] or net for name, net in callback.networks.items() if name in found}
    return found


def evaluate_after_fit(trainer: Any, tokenizer: Any, lengths: list[int], out_dir: str | os.PathLike,
                       metrics: list[str], num_images: int | None = None,
                       batch_size: int | None = None) -> dict:
    """Evaluate `tokenizer` on the trainer's validation subset; call on every rank after fit.

    Args:
        trainer: the Lightning trainer that ran fit (its data module, devices and callbacks).
        tokenizer: the exported tokenizer (the same weights on every rank).
        lengths: token counts k to evaluate.
        out_dir: where rank 0 writes report.json, rd.png and grid.png.
        metrics: any of "psnr", "ssim", "lpips", "rfid".
        num_images: size of the subset over all ranks (None = every validation image).
        batch_size: images per batch (default: the data module's val_batch_size, else 32).
    Returns:
        The report (identical on every rank), or {} when the trainer has no validation data.
    """
    rank, world = rank_world()
    datamodule = getattr(trainer, "datamodule", None)
    size = batch_size or getattr(datamodule, "val_batch_size", None) or 32
    subset = validation_subset(trainer, num_images, size, rank, world)
    if subset is None:
        if rank == 0:
            print("no validation data: skipping the end-of-fit report")
        return {}
    networks = callback_networks(trainer)
    started = time.perf_counter()
    plan = EvalPlan(lengths=lengths, metrics=metrics, device=trainer.strategy.root_device,
                    networks=Networks(inception=networks["inception"], lpips=networks["lpips"]),
                    baselines=True, show=True, distributed=True, subset=subset.describe())
    report = evaluate(tokenizer, subset, plan, out_dir)
    if rank == 0:
        print(f"end-of-fit evaluation: {report['num_images']} images on {world} rank(s) "
              f"({trainer.strategy.root_device}) in {time.perf_counter() - started:.1f} s")
    return report
