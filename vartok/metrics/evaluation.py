"""The evaluation loop: one encoder pass per batch, then a decoder pass for each length k.

For each k: PSNR, SSIM, LPIPS (when available), rFID (when available), bytes per image and bpp, and the
best JPEG / WebP / thumbnail at ≤ those bytes; over the set: codebook usage, perplexity and usage per token
position; optionally pFID of perturbed codes. Only samples with ``valid=True`` count, and every statistic
is a torchmetrics state synced over ranks, so under torch.distributed each image counts exactly once.
A metric that cannot run (missing weights) is absent from the numbers and listed under "unavailable".

The tokenizer is used through a duck type: ``encode(images) -> obj.indices`` (B,N[,G]) int64,
``decode(indices, length=k) -> (B,3,H,W)`` in [0,1], ``num_tokens``, ``image_size``, ``bits_per_token``,
``codebook_size``. Reconstructions are clamped and rounded to 8 bits (as they would be saved) before
every metric, exactly as for rFID.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric, SumMetric

from vartok.metrics import fid as fid_lib
from vartok.metrics.baselines import BaselineStats
from vartok.metrics.codebook import CodebookStats
from vartok.metrics.eval_support import (
    build_networks,
    gather_skipped,
    progress,
    rank_world,
    reference_cache,
    save_reference,
)
from vartok.metrics.pfid import Perturbation, perturb
from vartok.metrics.quality import QualityMeter
from vartok.metrics.rate import bits_per_pixel, bytes_per_image
from vartok.metrics.report import finish_report

METRICS = ("psnr", "ssim", "lpips", "rfid", "pfid")


def _never() -> bool:
    return False


def to_uint8(images: Tensor) -> Tensor:
    """(B,3,H,W) float in [0,1] → uint8, clamped and rounded."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def check_lengths(lengths: Iterable[int], num_tokens: int) -> list[int]:
    """Sorted unique lengths, each an integer in [1, num_tokens]; otherwise one clear error."""
    lengths = list(lengths)
    bad = [k for k in lengths if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_tokens]
    if not lengths or bad:
        raise ValueError(
            f"lengths={lengths!r} is not allowed: give at least one integer k with 1 ≤ k ≤ {num_tokens} "
            f"(the tokenizer's number of tokens)."
        )
    return sorted(set(lengths))


def check_metrics(metrics: Iterable[str]) -> set[str]:
    """The requested metric names, each one of METRICS."""
    metrics = {m.strip().lower() for m in metrics if m.strip()}
    unknown = sorted(metrics - set(METRICS))
    if unknown:
        raise ValueError(f"metrics {unknown} are not known; choose from {', '.join(METRICS)}.")
    return metrics


class Evaluation:
    """Accumulators of one evaluation pass (see :func:`evaluate` for the arguments)."""

    def __init__(self, tokenizer: Any, lengths: list[int], metrics: set[str], device: torch.device,
                 networks: dict[str, nn.Module | None], perturbations: dict[str, Perturbation],
                 pfid_seeds: list[int], pfid_lengths: list[int], baselines: bool,
                 baseline_images: int | None, grid_images: int, distributed: bool = True) -> None:
        self.tok, self.lengths, self.device = tokenizer, lengths, device
        self.bits = float(tokenizer.bits_per_token)
        self.budgets = [bytes_per_image(k, self.bits) for k in lengths]
        self.rank, self.world = rank_world(distributed)
        self.distributed = distributed
        lpips_net = networks.get("lpips")
        lpips_net = lpips_net.to(device) if lpips_net is not None else None
        self.quality = {k: QualityMeter(metrics, lpips_net).to(device) for k in lengths}
        self.fid = fid_lib.FIDBank(networks["inception"], device) if networks.get("inception") else None
        self.perturbations = perturbations if self.fid is not None else {}
        self.pfid_seeds, self.pfid_lengths = pfid_seeds, pfid_lengths
        self.codebook: CodebookStats | None = None
        self.baselines = BaselineStats(int(tokenizer.image_size), self.budgets).to(device) if baselines else None
        self.baseline_quota = None if baseline_images is None else -(-baseline_images // self.world)
        self.images, self.padding = SumMetric().to(device), SumMetric().to(device)
        self.grid_images = grid_images if self.rank == 0 else 0
        self.grid: dict[str, list[Tensor]] = {}
        if self.fid is not None:
            for name in self.fid_set_names():
                self.fid.update(name, torch.zeros(0, 3, 8, 8, dtype=torch.uint8))  # same sets on every rank

    def fid_set_names(self) -> list[str]:
        names = [f"rfid/{k}" for k in self.lengths]
        for name in self.perturbations:
            names += [f"pfid/{name}/{s}/{k}" for s in self.pfid_seeds for k in self.pfid_lengths]
        return names

    @torch.no_grad()
    def step(self, batch: dict, batch_index: int) -> None:
        """Encode the batch's valid images once and decode them at every length."""
        images: Tensor = batch["image"]
        valid = batch.get("valid")
        valid = torch.ones(images.shape[0], dtype=torch.bool, device=images.device) if valid is None \
            else torch.as_tensor(valid, device=images.device).bool()  # (B,), beside the batch (host side)
        keys = [k for k, ok in zip(batch.get("key", []), valid.tolist()) if ok] or None
        self.padding.update(float((~valid).sum()))
        images = images[valid.to(images.device)]
        self.images.update(float(images.shape[0]))
        if images.shape[0] == 0:
            return
        originals = images.to(self.device).float() / 255
        encoding = self.tok.encode(originals)
        indices = encoding.indices
        self._codebook(indices).update(indices)
        if self.fid is not None:
            self.fid.update_reference(images)
        self._collect_grid("original", images)
        for k in self.lengths:
            recon = to_uint8(self.tok.decode(indices, length=k))
            self.quality[k].update(recon.float() / 255, originals)
            if self.fid is not None:
                self.fid.update(f"rfid/{k}", recon)
            self._collect_grid(str(k), recon)
        for name, fn in self.perturbations.items():
            for seed in self.pfid_seeds:
                perturbed = perturb(fn, indices, seed, keys, batch_index, encoding)
                for k in self.pfid_lengths:
                    self.fid.update(f"pfid/{name}/{seed}/{k}", to_uint8(self.tok.decode(perturbed, length=k)))
        self._baselines(images)

    def _codebook(self, indices: Tensor) -> CodebookStats:
        if self.codebook is None:
            groups = indices.shape[2] if indices.dim() == 3 else 1
            with torch.device(self.device):  # built on the evaluation's device (its states are sized by the codes)
                self.codebook = CodebookStats(int(self.tok.codebook_size), indices.shape[1], groups)
        return self.codebook

    def _collect_grid(self, row: str, images: Tensor) -> None:
        have = sum(t.shape[0] for t in self.grid.get(row, []))
        if have < self.grid_images:
            self.grid.setdefault(row, []).append(images[: self.grid_images - have].cpu())

    def _baselines(self, images: Tensor) -> None:
        if self.baselines is None:
            return
        if self.baseline_quota is not None:
            images = images[: max(0, self.baseline_quota - int(self.baselines.count))]
        self.baselines.update(images.cpu())

    def metrics(self) -> list[Metric]:
        """Every torchmetrics state holder of this pass."""
        found = [m for meter in self.quality.values() for m in meter.modules() if isinstance(m, Metric)]
        found += [self.images, self.padding] + [m for m in (self.codebook, self.baselines) if m is not None]
        if self.fid is not None:
            found += [self.fid.reference, *self.fid.sets.values()]
        return found

    def keep_local(self) -> None:
        """With ``distributed=False``: no metric syncs over the process group (this process's images only)."""
        if not self.distributed:
            for metric in self.metrics():
                metric.distributed_available_fn = _never

    def results(self) -> dict:
        """Every figure, synced over ranks (call on every rank, in the same order)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            num_images = int(self.images.compute())
            out: dict = {"num_images": num_images, "padding_samples": int(self.padding.compute()), "lengths": {}}
            for k, budget in zip(self.lengths, self.budgets):
                entry = {"tokens": k, "bytes_per_image": budget}
                entry["bpp"] = bits_per_pixel(budget, int(self.tok.image_size), int(self.tok.image_size))
                entry.update(self.quality[k].compute())
                if self.fid is not None and num_images >= 2:
                    entry["rfid"] = self.fid.compute(f"rfid/{k}")
                out["lengths"][str(k)] = entry
            if self.fid is not None and num_images >= 2:
                self._pfid(out["lengths"])
            codebook = self._shared_codebook()
            out["codebook"] = codebook.compute() if codebook is not None else {}
            if self.baselines is not None:
                base = self.baselines.compute()
                out["baselines"] = base["curves"]
                out["baseline_images"] = base["num_images"]
                for k, budget in zip(self.lengths, self.budgets):
                    out["lengths"][str(k)]["baselines"] = base["best"][budget]
        return out

    def _shared_codebook(self) -> CodebookStats | None:
        """The codebook statistics, also on a rank that saw no image while others did (every rank must sync
        the same metrics in the same order, or the collectives would wait forever)."""
        shape = None if self.codebook is None else (self.codebook.num_tokens, self.codebook.groups)
        if self.world > 1:
            everyone: list[tuple[int, int] | None] = [None] * self.world
            torch.distributed.all_gather_object(everyone, shape)
            shape = next((tuple(s) for s in everyone if s is not None), None)
        if self.codebook is None and shape is not None:
            self.codebook = CodebookStats(int(self.tok.codebook_size), *shape).to(self.device)
        return self.codebook

    def _pfid(self, lengths: dict) -> None:
        for name in self.perturbations:
            for k in self.pfid_lengths:
                per_seed = [self.fid.compute(f"pfid/{name}/{s}/{k}") for s in self.pfid_seeds]
                entry = {"mean": sum(per_seed) / len(per_seed), "per_seed": per_seed, "seeds": self.pfid_seeds}
                lengths[str(k)].setdefault("pfid", {})[name] = entry


def evaluate(
    tokenizer: Any,
    loader: Iterable[dict],
    lengths: list[int],
    metrics: Iterable[str] = ("psnr", "ssim"),
    device: str | torch.device = "cpu",
    out_dir: str | os.PathLike | None = None,
    *,
    perturbations: dict[str, Perturbation] | None = None,
    pfid_seeds: Iterable[int] = (0, 1),
    pfid_lengths: list[int] | None = None,
    inception_weights: str | os.PathLike | None = None,
    lpips_weights: str | os.PathLike | None = None,
    allow_download: bool = False,
    fid_network: nn.Module | None = None,
    lpips_net: nn.Module | None = None,
    fid_feature: int = 2048,
    fid_stats_dir: str | os.PathLike | None = None,
    data_id: str | None = None,
    baselines: bool = True,
    baseline_images: int | None = None,
    grid_images: int = 8,
    show: bool = True,
    distributed: bool = True,
    subset: dict | None = None,
) -> dict:
    """Evaluate a tokenizer at several token counts on a validation loader.

    Args:
        tokenizer: the duck-typed tokenizer (module docstring).
        loader: batches {"image": uint8 (B,3,H,W), "valid": bool (B,), "key": list[str]}.
        lengths: token counts k to decode at, each in [1, N].
        metrics: any of "psnr", "ssim", "lpips", "rfid", "pfid" (rate figures are always computed).
        device: where the tokenizer and the measuring networks run.
        out_dir: if given, rank 0 writes report.json, rd.png and grid.png there.
        perturbations: pFID variants, name → callable(indices (B,N[,G]), seed) → perturbed indices
            (a callable with an ``encoding`` keyword also receives the encoder's output).
        pfid_seeds: seeds; each variant's pFID is the mean over them.
        pfid_lengths: lengths at which pFID is measured (default: the full length N, if evaluated).
        inception_weights, lpips_weights: explicit weight files (else the torch hub cache).
        allow_download: download missing weights into the hub cache.
        fid_network, lpips_net: prebuilt frozen networks (tests use randomly initialised ones).
        fid_feature: Inception feature layer for FID (2048 = standard).
        fid_stats_dir: cache folder for the originals' Inception statistics (needs `data_id`).
        data_id: what identifies the data (e.g. the shard URLs), for the statistics cache key.
        baselines: measure JPEG / WebP / thumbnails on the same images.
        baseline_images: measure the baselines on at most this many images (all when None).
        grid_images: originals shown in grid.png.
        show: print the table and show a progress bar (rank 0 only).
        distributed: sync the figures over the torch.distributed group when there is one (every rank must
            call `evaluate` with its share of the data); False = this process's images only, e.g. when only
            rank 0 evaluates after a DDP fit (syncing would then wait for the other ranks forever).
        subset: how the loader's images were chosen (vartok.metrics.subset), written as the report's "subset".
    Returns:
        The report dict (schema in vartok.metrics.report): identical on every rank.
    """
    metrics = check_metrics(metrics)
    num_tokens = int(tokenizer.num_tokens)
    lengths = check_lengths(lengths, num_tokens)
    pfid_lengths = check_lengths(pfid_lengths or [num_tokens if num_tokens in lengths else lengths[-1]], num_tokens)
    if not set(pfid_lengths) <= set(lengths):
        raise ValueError(f"pfid_lengths={pfid_lengths} must be among the evaluated lengths {lengths}.")
    device = torch.device(device)
    unavailable: dict[str, str] = {}
    if "pfid" in metrics and not perturbations:
        unavailable["pfid"] = "no latent perturbation was given (pfid needs perturbations=...)"
    opts = {"lpips_net": lpips_net, "fid_network": fid_network, "lpips_weights": lpips_weights,
            "inception_weights": inception_weights, "allow_download": allow_download, "fid_feature": fid_feature}
    networks = build_networks(metrics, unavailable, opts)
    variants = dict(perturbations or {}) if "pfid" in metrics else {}
    run = Evaluation(tokenizer, lengths, metrics, device, networks, variants, list(pfid_seeds), pfid_lengths,
                     baselines, baseline_images, grid_images, distributed)
    stats_file = reference_cache(run, fid_stats_dir, data_id)
    was_training = getattr(tokenizer, "training", False)
    if isinstance(tokenizer, nn.Module):
        tokenizer.to(device).eval()
    try:
        for index, batch in enumerate(progress(loader, show and run.rank == 0)):
            run.step(batch, index)
    finally:
        if isinstance(tokenizer, nn.Module):
            tokenizer.train(was_training)
    run.keep_local()
    save_reference(run, stats_file, unavailable)
    report = run.results()
    for name in ("rfid", "pfid"):
        if name in metrics and name not in unavailable and run.fid is not None and report["num_images"] < 2:
            unavailable[name] = f"FID needs at least 2 images, the set has {report['num_images']}"
    report["skipped"] = gather_skipped(loader, distributed)
    if subset is not None:
        report["subset"] = dict(subset)
    return finish_report(report, tokenizer, unavailable, run.grid, out_dir, show and run.rank == 0, run.rank)
