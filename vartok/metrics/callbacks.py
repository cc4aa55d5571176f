"""Training-time evaluation: rFID / LPIPS / PSNR of the EMA tokenizer on a fixed validation subset.

    callbacks:
      - class_path: vartok.metrics.callbacks.EvaluationCallback
        init_args: {every_n_steps: 10000, num_images: 1000, metrics: [psnr, lpips, rfid]}

Every `every_n_steps` training steps (the module's `step_count`), every rank evaluates its share of a fixed
subset of the validation data with :func:`vartok.metrics.evaluation.evaluate`; the statistics are torchmetrics
states synced over ranks, so each image of the subset counts exactly once and every rank logs the same
numbers (`eval/<metric>_<k>`, and `eval/<metric>` for the full length). The subset is the first `num_images`
samples of the validation shards in shard order, whatever the number of ranks (`vartok.metrics.subset`; with
another validation loader, the first images of each rank's split), read once and kept in memory. The
originals' Inception statistics are cached in `<run dir>/fid_stats/` by a key of the subset's pixels,
resolution, Inception weights file and feature layer.

The frozen networks are built when fit starts: a missing Inception or VGG weights file is then one clear
error naming the file, the folder searched and the flag — or, with ``missing_weights: unavailable``, the
metric is left out and its reason logged once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from vartok.distributed import gather_objects
from vartok.metrics.evaluation import evaluate
from vartok.metrics.networks import MISSING_WEIGHTS, build_networks
from vartok.metrics.plan import METRICS, EvalPlan, Networks, check_lengths, check_metrics
from vartok.metrics.subset import validation_subset


class EvaluationCallback(pl.Callback):
    """Periodic evaluation of the EMA tokenizer during training.

    Args:
        every_n_steps: period in training steps (> 0); also evaluated at the end of fit when
            `at_fit_end`.
        num_images: size of the fixed validation subset over all ranks (> 0; fewer if the data is smaller).
        lengths: token counts to evaluate (None = the full length N only).
        metrics: any of "psnr", "ssim", "lpips", "rfid", "pfid".
        pfid_alpha, pfid_delta, pfid_seeds: the pFID protocol (docs/perturbation.md): one FID per
            token-error rate α with the δ nearest codes, mean over the seeds; logged as `eval/pfid_<α>` beside
            `eval/rfid`.
        inception_weights: the Inception-v3 FID weights file (None = the torch hub cache).
        lpips_weights: the VGG16 (or full LPIPS) weights file for LPIPS (None = the torch hub cache).
        fid_feature: Inception feature layer (2048 = the standard FID).
        missing_weights: "error" (default: fit stops at its start) or "unavailable" (the metric is left out
            and the reason logged). A file given explicitly that does not exist is always an error.
        batch_size: images per evaluation batch.
        cache_reference: cache the originals' Inception statistics under `<run dir>/fid_stats/`.
        at_fit_end: also evaluate after the last training step.
    """

    def __init__(
        self,
        every_n_steps: int = 10000,
        num_images: int = 1000,
        lengths: list[int] | None = None,
        metrics: list[str] | None = None,
        inception_weights: str | None = None,
        lpips_weights: str | None = None,
        fid_feature: int = 2048,
        missing_weights: str = "error",
        batch_size: int = 32,
        cache_reference: bool = True,
        at_fit_end: bool = True,
        pfid_alpha: list[float] | None = None,
        pfid_delta: int = 16,
        pfid_seeds: list[int] | None = None,
    ) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("num_images", num_images),
                            ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EvaluationCallback.{name} must be an integer >= 1, got {value!r}")
        if missing_weights not in MISSING_WEIGHTS:
            raise ValueError(
                f"EvaluationCallback.missing_weights must be one of {', '.join(MISSING_WEIGHTS)}, "
                f"got {missing_weights!r}"
            )
        self.metrics = check_metrics(metrics if metrics is not None else ("psnr", "lpips", "rfid"))
        generation = sorted(self.metrics & {"gfid", "bits"})
        if generation:
            raise ValueError(f"EvaluationCallback metrics {', '.join(generation)} need a token prior trained on the "
                             f"finished tokenizer; measure them after training with vartok-eval --prior PRIOR_DIR")
        self.every_n_steps, self.num_images, self.lengths = every_n_steps, num_images, lengths
        self.inception_weights, self.lpips_weights = inception_weights, lpips_weights
        self.fid_feature = fid_feature
        self.missing_weights, self.batch_size = missing_weights, batch_size
        self.cache_reference, self.at_fit_end = cache_reference, at_fit_end
        self.pfid_alpha = list(pfid_alpha if pfid_alpha is not None else (0.05, 0.1, 0.2))
        self.pfid_delta, self.pfid_seeds = pfid_delta, list(pfid_seeds if pfid_seeds is not None else (0, 1))
        if "pfid" in self.metrics and (len(self.pfid_seeds) < 2 or not self.pfid_alpha):
            raise ValueError(f"EvaluationCallback pFID needs >= 2 pfid_seeds and >= 1 pfid_alpha, got "
                             f"{self.pfid_seeds} and {self.pfid_alpha}")
        self.networks: dict[str, nn.Module | None] = {"lpips": None, "inception": None}
        self.unavailable: dict[str, str] = {}
        self.last_report: dict | None = None
        self.last_step: int | None = None
        self._subset: list[dict[str, Any]] | None = None
        self.subset_info: dict[str, Any] | None = None
        self._data_id: str | None = None

    # ------------------------------------------------------------------ networks (at the start of fit)
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            tokens = getattr(getattr(pl_module, "tokenizer", None), "num_tokens", None)
            if self.lengths is not None and tokens is not None:  # at the start of fit, not at the first evaluation
                try:
                    check_lengths(self.lengths, int(tokens))
                except ValueError as err:
                    raise ValueError(f"EvaluationCallback: {err}") from None
            self.build_networks()

    def build_networks(self) -> None:
        """The frozen LPIPS and Inception networks the metrics need, or their reason under `unavailable`."""
        files = Networks(inception=self.networks["inception"], lpips=self.networks["lpips"],
                         inception_weights=self.inception_weights, lpips_weights=self.lpips_weights,
                         fid_feature=self.fid_feature)
        before = set(self.unavailable)
        self.networks = build_networks(self.metrics, files, self.unavailable, self.missing_weights, _explain)
        for name in sorted(set(self.unavailable) - before):
            rank_zero_warn(f"EvaluationCallback: {name} unavailable: {self.unavailable[name]}")

    # ------------------------------------------------------------------ the fixed subset
    def subset(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        """This rank's share of the fixed validation subset (vartok.metrics.subset), as batches of valid
        uint8 images, read once and kept."""
        if self._subset is None:
            source = validation_subset(trainer, self.num_images, self.batch_size, trainer.global_rank,
                                       trainer.world_size)
            if source is None:
                raise ValueError("EvaluationCallback needs validation data: give data.val_shards "
                                 "(or a val_dataloader)")
            self._subset = list(source)
            self.subset_info = source.describe()
            images = [batch["image"] for batch in self._subset]
            empty = torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
            self._data_id = self._identify(torch.cat(images) if images else empty)
        return self._subset

    @staticmethod
    def _identify(images: Tensor) -> str:
        """A key of the whole subset (every rank's pixels, in rank order) for the reference cache."""
        local = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
        return "eval-callback:" + ",".join(gather_objects(local))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Evaluate the EMA tokenizer (or `pl_module.tokenizer`) on the subset; every rank, same order."""
        self.build_networks()
        ema = getattr(pl_module, "ema", None)
        tokenizer = ema.module if ema is not None else pl_module.tokenizer
        lengths = self.lengths or [int(tokenizer.num_tokens)]
        wanted = [m for m in self.metrics if m not in self.unavailable]
        subset = self.subset(trainer)
        stats_dir = self._stats_dir(trainer, int(tokenizer.image_size))
        perturbations = None
        if "pfid" in wanted:
            from vartok.tokenizers.perturb import pfid_perturbation

            perturbations = {f"{a:g}": pfid_perturbation(tokenizer, a, self.pfid_delta) for a in self.pfid_alpha}
        networks = Networks(inception=self.networks["inception"], lpips=self.networks["lpips"],
                            fid_feature=self.fid_feature)
        plan = EvalPlan(lengths=lengths, metrics=wanted, device=pl_module.device, networks=networks,
                        perturbations=perturbations, pfid_seeds=self.pfid_seeds, fid_stats_dir=stats_dir,
                        data_id=self._data_id, baselines=False, grid_images=0, show=False, subset=self.subset_info,
                        unavailable=dict(self.unavailable))
        report = evaluate(tokenizer, subset, plan)
        self.last_report, self.last_step = report, _step(trainer, pl_module)
        return report

    def _stats_dir(self, trainer: pl.Trainer, image_size: int) -> Path | None:
        """The reference-statistics cache folder, or None when some ranks would not see the same cache
        file (e.g. a node-local run dir): then every rank computes its share, never mixing loaded and local
        sums (evaluate's key: subset id, resolution, "all", weights file, feature layer)."""
        weights = getattr(self.networks["inception"], "weights_path", None)
        if not self.cache_reference or weights is None or self._data_id is None:
            return None
        from vartok.metrics.fid import reference_stats_path

        folder = Path(trainer.default_root_dir) / "fid_stats"
        path = reference_stats_path(folder, self._data_id, image_size, "all", weights, self.fid_feature)
        return folder if len(set(gather_objects(path.is_file()))) == 1 else None

    @staticmethod
    def figures(report: dict, num_tokens: int) -> dict[str, float]:
        """`eval/<metric>_<k>` for every length, and `eval/<metric>` for the full length N."""
        values = {"eval/num_images": float(report["num_images"])}
        for k, entry in report["lengths"].items():
            for name, pfid in entry.get("pfid", {}).items():
                values[f"eval/pfid_{name}_{k}"] = pfid["mean"]
                if int(k) == num_tokens:
                    values[f"eval/pfid_{name}"] = pfid["mean"]
            for name in METRICS:
                if isinstance(entry.get(name), float):
                    values[f"eval/{name}_{k}"] = entry[name]
                    if int(k) == num_tokens:
                        values[f"eval/{name}"] = entry[name]
        return values

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Inside a gradient accumulation (micro_step > 0) the step is not complete: the step count stays the same
        # over its micro-batches, and the evaluation belongs after the last one.
        if getattr(pl_module, "micro_step", 0) == 0 and _step(trainer, pl_module) % self.every_n_steps == 0:
            report = self.evaluate(trainer, pl_module)
            # Already synced over ranks (identical everywhere): no second reduction.
            values = self.figures(report, int(report["tokenizer"]["num_tokens"]))
            pl_module.log_dict(values, on_step=True, on_epoch=False, sync_dist=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = _step(trainer, pl_module)
        if self.at_fit_end and step != self.last_step and step > 0:
            report = self.evaluate(trainer, pl_module)  # self.log is closed here: straight to the loggers
            values = self.figures(report, int(report["tokenizer"]["num_tokens"]))
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)


def _step(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Training steps done: the module's `step_count` (vartok) or the trainer's global step."""
    return int(getattr(pl_module, "step_count", trainer.global_step))


def _explain(metrics: list[str], error: str) -> str:
    """A missing weights file, said in the callback's terms: where its path is set, how to train without."""
    names = "/".join(metrics)
    key = "lpips_weights" if metrics == ["lpips"] else "inception_weights"
    return (f"EvaluationCallback ({names}): {error} In a training config the path is the callback's {key}; or set "
            f"missing_weights: unavailable to train without {names}.")
