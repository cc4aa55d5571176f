"""What one evaluation measures and how: `EvalPlan`, validated against the tokenizer before any work.

`evaluate(tokenizer, loader, plan, out_dir)` (vartok.metrics.evaluation) reads everything from the plan; the
command line (vartok-eval), the periodic training callback and the end-of-fit report each build one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vartok.metrics.generation import GENERATION_METRICS, Generation
from vartok.metrics.pfid import Perturbation
from vartok.metrics.rate import default_lengths

METRICS = ("psnr", "ssim", "lpips", "rfid", "pfid", *GENERATION_METRICS)
FID_METRICS = ("rfid", "pfid", "gfid")


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


@dataclass
class Networks:
    """The frozen measuring networks of an evaluation: prebuilt modules, or the files to build them from.

    Args:
        inception, lpips: prebuilt frozen networks (the training callback's, or tests' random ones); None =
            build from the files below when a requested metric needs them.
        inception_weights, lpips_weights: explicit weights files (None = the torch hub cache).
        allow_download: download a missing file into the hub cache.
        fid_feature: Inception feature layer of FID (2048 = the standard FID).
    """

    inception: nn.Module | None = None
    lpips: nn.Module | None = None
    inception_weights: str | os.PathLike | None = None
    lpips_weights: str | os.PathLike | None = None
    allow_download: bool = False
    fid_feature: int = 2048


@dataclass
class EvalPlan:
    """Args:
    lengths: token counts k to decode at (None = 1, 2, 4, ..., N and N).
    metrics: any of METRICS (rate figures are always computed).
    device: where the tokenizer and the measuring networks run.
    networks: the measuring networks or their files.
    perturbations: pFID variants, name → fn(indices (B, N[, G]), seed[, encoding=]) → perturbed indices.
    pfid_seeds: seeds; each variant's pFID is the mean over them.
    pfid_lengths: lengths at which pFID is measured (None = N if evaluated, else the largest length).
    fid_stats_dir, data_id: cache folder of the originals' Inception statistics and what identifies the data
        (e.g. the shard URLs) in its key; both needed for the cache.
    baselines: measure JPEG / WebP / thumbnails on the same images; baseline_images: on at most this many.
    target_psnr: also choose, per image, the smallest k reaching this PSNR (the tokenizer's choose_length).
    grid_images: originals shown in grid.png.
    show: print the table and a progress display (rank 0).
    distributed: sync the figures over the process group when there is one (every rank evaluates its share);
        False = this process's images only (syncing would wait for ranks that do not evaluate).
    subset: how the loader's images were chosen (vartok.metrics.subset), written as the report's "subset".
    unavailable: metric → reason it cannot run, known before the evaluation (written into the report).
    provenance: where the evaluated tokenizer came from, e.g. {"checkpoint": {"path", "kind", "weights"}}; the
        report's "provenance" is this plus "networks" (the measuring networks' weights files) and "warnings".
    generation: the token prior that metrics gfid and bits measure, and its sampling settings
        (vartok.metrics.generation.Generation); needed by those metrics.
    """

    lengths: list[int] | None = None
    metrics: Iterable[str] = ("psnr", "ssim")
    device: str | torch.device = "cpu"
    networks: Networks = field(default_factory=Networks)
    perturbations: dict[str, Perturbation] | None = None
    pfid_seeds: Sequence[int] = (0, 1)
    pfid_lengths: list[int] | None = None
    fid_stats_dir: str | os.PathLike | None = None
    data_id: str | None = None
    baselines: bool = True
    baseline_images: int | None = None
    target_psnr: float | None = None
    grid_images: int = 8
    show: bool = True
    distributed: bool = True
    subset: dict[str, Any] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None
    generation: Generation | None = None

    def resolve(self, num_tokens: int) -> ResolvedPlan:
        """The checked lengths, metrics and pFID lengths for a tokenizer of `num_tokens` tokens; metrics whose
        reason is already in `unavailable` are dropped."""
        metrics = check_metrics(self.metrics) - set(self.unavailable)
        lengths = check_lengths(default_lengths(num_tokens) if self.lengths is None else self.lengths, num_tokens)
        pfid_lengths = check_lengths(self.pfid_lengths or [num_tokens if num_tokens in lengths else lengths[-1]],
                                     num_tokens)
        if not set(pfid_lengths) <= set(lengths):
            raise ValueError(f"pfid_lengths={pfid_lengths} must be among the evaluated lengths {lengths}.")
        wanted = sorted(metrics & set(GENERATION_METRICS))
        if wanted and self.generation is None:
            raise ValueError(f"metrics {', '.join(wanted)} measure a token prior over the tokenizer's tokens; give "
                             "EvalPlan(generation=Generation(prior)) (vartok.metrics.generation), or on the "
                             "command line vartok-eval --prior PRIOR_DIR.")
        unavailable = dict(self.unavailable)
        if "pfid" in metrics and not self.perturbations:
            unavailable["pfid"] = "no latent perturbation was given (pfid needs perturbations=...)"
            metrics.discard("pfid")
        if self.target_psnr is not None and not self.target_psnr > 0:
            raise ValueError(f"target_psnr={self.target_psnr} is not allowed; give a PSNR in dB > 0.")
        return ResolvedPlan(lengths, metrics, pfid_lengths, torch.device(self.device), unavailable)


@dataclass
class ResolvedPlan:
    """The plan's checked values for one tokenizer (EvalPlan.resolve)."""

    lengths: list[int]
    metrics: set[str]
    pfid_lengths: list[int]
    device: torch.device
    unavailable: dict[str, str]
