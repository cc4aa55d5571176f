"""The evaluation loop: one encoder pass per batch, then a decoder pass for each length k.

For each k: PSNR, SSIM, LPIPS (when available), rFID (when available), bytes per image and bpp, and the
best JPEG / WebP / thumbnail at ≤ those bytes; over the set: codebook usage, perplexity and usage per token
position; optionally pFID of perturbed codes and, for a target PSNR, the smallest k per image that reaches it
and how many images do reach it at that k (choose_length answers N when no k does); with a token prior
(plan.generation, vartok.metrics.generation) the prior's bits per token on the images' own tokens and gFID of
decodes of its samples, in the same FIDBank as rFID.
Only samples with ``valid=True`` count, and every statistic is a torchmetrics state synced over ranks, so
under torch.distributed each image counts exactly once. A metric that cannot run (missing weights) is absent
from the numbers and listed under "unavailable". The report's "provenance" names the weights files of the
measuring networks (path, SHA-256, official or not, with a printed warning when not) and the plan's checkpoint.

The tokenizer is used through a duck type: ``encode(images) -> obj.indices`` (B,N[,G]) int64,
``decode(indices, length=k) -> (B,3,H,W)`` in [0,1], ``num_tokens``, ``image_size``, ``bits_per_token``,
``codebook_size`` (and ``choose_length`` for a target PSNR, ``quantizer`` for gfid / bits). Reconstructions
are clamped and rounded to 8 bits (as they would be saved) before every metric.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric, SumMetric

from vartok.data.batch import parse_batch
from vartok.distributed import gather_objects, rank_world
from vartok.metrics import fid as fid_lib
from vartok.metrics.baselines import BaselineStats
from vartok.metrics.codebook import CodebookStats
from vartok.metrics.generation import GENERATION_METRICS, GenerationMeter, batch_labels
from vartok.metrics.networks import build_networks, networks_provenance, provenance_warnings
from vartok.metrics.pfid import perturb
from vartok.metrics.plan import EvalPlan, ResolvedPlan
from vartok.metrics.progress import progress
from vartok.metrics.quality import QualityMeter
from vartok.metrics.rate import bits_per_pixel, bytes_per_image
from vartok.metrics.report import finish_report
from vartok.pixels import psnr_per_image, to_uint8


def _never() -> bool:
    return False


class Evaluation:
    """Accumulators of one evaluation pass over `tokenizer` following a resolved plan."""

    def __init__(self, tokenizer: Any, plan: EvalPlan, resolved: ResolvedPlan,
                 networks: dict[str, nn.Module | None]) -> None:
        self.tok, self.plan, self.lengths, self.device = tokenizer, plan, resolved.lengths, resolved.device
        self.budgets = [bytes_per_image(k, float(tokenizer.bits_per_token)) for k in self.lengths]
        self.rank, self.world = rank_world(plan.distributed)
        lpips_net = networks["lpips"].to(self.device) if networks["lpips"] is not None else None
        self.quality = {k: QualityMeter(resolved.metrics, lpips_net).to(self.device) for k in self.lengths}
        self.fid = fid_lib.FIDBank(networks["inception"], self.device) if networks["inception"] else None
        wants_pfid = self.fid is not None and "pfid" in resolved.metrics
        self.perturbations = dict(plan.perturbations or {}) if wants_pfid else {}
        self.pfid_seeds, self.pfid_lengths = list(plan.pfid_seeds), resolved.pfid_lengths
        self.codebook: CodebookStats | None = None
        image_size = int(tokenizer.image_size)
        self.baselines = BaselineStats(image_size, self.budgets).to(self.device) if plan.baselines else None
        self.baseline_quota = None if plan.baseline_images is None else -(-plan.baseline_images // self.world)
        self.images, self.padding = SumMetric().to(self.device), SumMetric().to(self.device)
        self.chosen: Counter[int] = Counter()  # target PSNR: images per chosen k
        self.met = 0  # target PSNR: images whose chosen k reaches it
        self.gen_unavailable: dict[str, str] = {}
        self.grid_images = plan.grid_images if self.rank == 0 else 0
        self.grid: dict[str, list[Tensor]] = {}
        wants_generation = plan.generation is not None and resolved.metrics & set(GENERATION_METRICS)
        self.gen = GenerationMeter(plan.generation, self.lengths, resolved.metrics, self.device, self.fid) \
            if wants_generation else None
        if self.fid is not None:
            for name in self.fid_set_names():
                self.fid.update(name, torch.zeros(0, 3, 8, 8, dtype=torch.uint8))  # same sets on every rank

    def fid_set_names(self) -> list[str]:
        names = [f"rfid/{k}" for k in self.lengths]
        for name in self.perturbations:
            names += [f"pfid/{name}/{s}/{k}" for s in self.pfid_seeds for k in self.pfid_lengths]
        return names + (self.gen.set_names if self.gen is not None else [])

    @torch.no_grad()
    def step(self, batch: dict, batch_index: int) -> None:
        """Encode the batch's valid images once and decode them at every length."""
        images, valid, keys = parse_batch(batch)
        keys = [k for k, ok in zip(keys, valid.tolist()) if ok] if keys else None
        self.padding.update(float((~valid).sum()))
        images = images[valid]
        self.images.update(float(images.shape[0]))
        if images.shape[0] == 0:
            return
        originals = images.to(self.device).float() / 255
        encoding = self.tok.encode(originals)
        indices = encoding.indices
        self._codebook(indices).update(indices)
        if self.gen is not None:
            self.gen.observe(indices, batch_labels(batch, valid))
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
                perturbed = perturb(fn, indices, seed, keys or None, batch_index, encoding)
                for k in self.pfid_lengths:
                    self.fid.update(f"pfid/{name}/{seed}/{k}", to_uint8(self.tok.decode(perturbed, length=k)))
        if self.plan.target_psnr is not None:
            self._choose(originals, images, indices)
        self._baselines(images)

    def _choose(self, originals: Tensor, images: Tensor, indices: Tensor) -> None:
        """Target PSNR: each image's chosen k, and whether the 8-bit reconstruction at that k reaches the target
        (not when choose_length fell back to N), with the PSNR choose_length itself uses.

        Args:
            originals: float (b,3,H,W) in [0,1] on the evaluation device; images: the same as uint8 (b,3,H,W).
            indices: their codes (b, N[, G]) from this batch's encoder pass.
        """
        chosen = self.tok.choose_length(originals, target_psnr=self.plan.target_psnr)
        chosen = torch.as_tensor(getattr(chosen, "lengths", chosen)).reshape(-1)  # (b,)
        self.chosen.update(int(k) for k in chosen)
        recon = to_uint8(self.tok.decode(indices, length=chosen.to(indices.device)))
        self.met += int((psnr_per_image(recon, images.to(recon.device)) >= self.plan.target_psnr).sum())

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
        found += self.gen.metrics() if self.gen is not None else []
        if self.fid is not None:
            found += [self.fid.reference, *self.fid.sets.values()]
        return found

    def keep_local(self) -> None:
        """With ``distributed=False``: no metric syncs over the process group (this process's images only)."""
        if not self.plan.distributed:
            for metric in self.metrics():
                metric.distributed_available_fn = _never

    def results(self) -> dict:
        """Every figure, synced over ranks (call on every rank, in the same order)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            num_images = int(self.images.compute())
            out: dict = {"num_images": num_images, "padding_samples": int(self.padding.compute()), "lengths": {}}
            size = int(self.tok.image_size)
            for k, budget in zip(self.lengths, self.budgets):
                entry = {"tokens": k, "bytes_per_image": budget, "bpp": bits_per_pixel(budget, size, size)}
                entry.update(self.quality[k].compute())
                if self.fid is not None and num_images >= 2:
                    entry["rfid"] = self.fid.compute(f"rfid/{k}")
                out["lengths"][str(k)] = entry
            if self.fid is not None and num_images >= 2:
                self._pfid(out["lengths"])
            if self.gen is not None:
                out["prior"], self.gen_unavailable = self.gen.results(out["lengths"], self.plan.distributed,
                                                                      self.fid is not None and num_images >= 2)
            codebook = self._shared_codebook()
            out["codebook"] = codebook.compute() if codebook is not None else {}
            if self.baselines is not None:
                base = self.baselines.compute()
                out["baselines"] = base["curves"]
                out["baseline_images"] = base["num_images"]
                for k, budget in zip(self.lengths, self.budgets):
                    out["lengths"][str(k)]["baselines"] = base["best"][budget]
        if self.plan.target_psnr is not None:
            out["target"] = self._target()
        return out

    def generate(self) -> None:
        """After the pass: gFID's samples (as many as the evaluated images unless the plan says), this rank's
        share decoded at every k into the FIDBank."""
        if self.gen is not None and self.fid is not None:
            samples = self.plan.generation.samples or int(self.images.compute())
            self.gen.generate(self.tok, samples, self.rank, self.world)

    def _shared_codebook(self) -> CodebookStats | None:
        """The codebook statistics, also on a rank that saw no image while others did (every rank must sync
        the same metrics in the same order, or the collectives would wait forever)."""
        shape = None if self.codebook is None else (self.codebook.num_tokens, self.codebook.groups)
        shape = next((tuple(s) for s in gather_objects(shape, self.plan.distributed) if s is not None), None)
        if self.codebook is None and shape is not None:
            self.codebook = CodebookStats(int(self.tok.codebook_size), *shape).to(self.device)
        return self.codebook

    def _pfid(self, lengths: dict) -> None:
        for name in self.perturbations:
            for k in self.pfid_lengths:
                per_seed = [self.fid.compute(f"pfid/{name}/{s}/{k}") for s in self.pfid_seeds]
                entry = {"mean": sum(per_seed) / len(per_seed), "per_seed": per_seed, "seeds": self.pfid_seeds}
                lengths[str(k)].setdefault("pfid", {})[name] = entry

    def _target(self) -> dict:
        """Per-image smallest k reaching the target PSNR, over every rank's images: distribution, mean bytes."""
        counts: Counter[int] = Counter()
        met = 0
        for part in gather_objects({"chosen": dict(self.chosen), "met": self.met}, self.plan.distributed):
            counts.update(part["chosen"])
            met += part["met"]
        total = sum(counts.values())
        bits = float(self.tok.bits_per_token)
        mean_bytes = sum(n * bytes_per_image(k, bits) for k, n in counts.items()) / max(total, 1)
        return {"target_psnr": self.plan.target_psnr, "images": total, "met": met, "mean_bytes": mean_bytes,
                "chosen_lengths": {str(k): counts[k] for k in sorted(counts)}}


def gather_skipped(loader: Any, distributed: bool) -> dict[str, int]:
    """The loader's skipped-sample counts by reason, summed over ranks."""
    total: Counter[str] = Counter()
    for counts in gather_objects(dict(loader.skipped()) if hasattr(loader, "skipped") else {}, distributed):
        total.update(counts)
    return dict(total)


def evaluate(tokenizer: Any, loader: Any, plan: EvalPlan | None = None,
             out_dir: str | os.PathLike | None = None) -> dict:
    """Evaluate a tokenizer at several token counts on a validation loader.

    Args:
        tokenizer: the duck-typed tokenizer (module docstring).
        loader: batches {"image": uint8 (B,3,H,W), "valid": bool (B,), "key": list[str]}.
        plan: what to measure and how (vartok.metrics.plan.EvalPlan; None = its defaults).
        out_dir: if given, rank 0 writes report.json, rd.png and grid.png there.
    Returns:
        The report dict (schema in vartok.metrics.report): identical on every rank.
    """
    plan = plan or EvalPlan()
    resolved = plan.resolve(int(tokenizer.num_tokens))
    if plan.generation is not None and resolved.metrics & set(GENERATION_METRICS):  # before any work
        named = (plan.provenance or {}).get("checkpoint", {}).get("path", f"({type(tokenizer).__name__})")
        plan.generation.check(tokenizer, named)
    unavailable = resolved.unavailable
    networks = build_networks(resolved.metrics, plan.networks, unavailable)
    run = Evaluation(tokenizer, plan, resolved, networks)
    provenance = {**(plan.provenance or {}), "networks": networks_provenance(networks)}
    provenance["warnings"] = provenance_warnings(provenance)
    if plan.show and run.rank == 0:
        for warning in provenance["warnings"]:  # before the pass: the user may stop and fix the file
            print(f"warning: {warning}", file=sys.stderr)
    cache = None
    if run.fid is not None:
        cache = fid_lib.open_reference_cache(run.fid, plan.fid_stats_dir, plan.data_id, int(tokenizer.image_size),
                                             run.rank)
    was_training = getattr(tokenizer, "training", False)
    if isinstance(tokenizer, nn.Module):
        tokenizer.to(resolved.device).eval()
    try:
        for index, batch in enumerate(progress(loader, plan.show and run.rank == 0)):
            run.step(batch, index)
    finally:
        if isinstance(tokenizer, nn.Module):
            tokenizer.train(was_training)
    run.keep_local()
    if run.fid is not None:
        stale = fid_lib.close_reference_cache(run.fid, cache, int(run.images.compute()), run.rank)
        if stale is not None:
            unavailable.update({"rfid": stale, "pfid": stale} | ({"gfid": stale} if run.gen is not None else {}))
            run.fid = None
    run.generate()
    report = run.results()
    unavailable.update(run.gen_unavailable)
    for name in ("rfid", "pfid", "gfid"):
        if name in resolved.metrics and name not in unavailable and run.fid is not None and report["num_images"] < 2:
            unavailable[name] = f"FID needs at least 2 images, the set has {report['num_images']}"
    report["skipped"] = gather_skipped(loader, plan.distributed)
    report["provenance"] = provenance
    if plan.subset is not None:
        report["subset"] = dict(plan.subset)
    return finish_report(report, tokenizer, unavailable, run.grid, out_dir, plan.show and run.rank == 0, run.rank)
