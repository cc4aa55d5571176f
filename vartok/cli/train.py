"""`vartok-train` (= `python train.py`): LightningCLI over TokenizerModule and ImageDataModule.

At the end of `fit`, the EMA tokenizer is exported to `<run dir>/export/` and evaluated on the validation
data (the first `report_images` images, or all) by every rank on its device, and rank 0 writes the report
(report.json, rd.png, grid.png, a printed table) to `<run dir>/report/` (vartok.metrics.fit_report).
The run dir is `trainer.default_root_dir`.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningCLI

from vartok.data import ImageDataModule
from vartok.tokenizers.length import pow2_lengths
from vartok.training.module import TokenizerModule

# The EMA copy of the tokenizer (and any frozen loss network) stays in eval mode on purpose; Lightning warns
# about every such module at the start of fit.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def export_and_report(trainer: Trainer, module: TokenizerModule, run_dir: Path, metrics: list[str],
                      num_images: int | None = None) -> dict:
    """Export the EMA tokenizer (rank 0 writes `<run dir>/export/`) and evaluate it on the validation subset
    (the first `num_images` validation images, or all); call on every rank. Returns the report."""
    from vartok.metrics.fit_report import evaluate_after_fit

    tokenizer = module.export_tokenizer(use_ema=True)  # on every rank: each evaluates its share of the images
    if trainer.is_global_zero:
        export_dir = tokenizer.save_pretrained(run_dir / "export")
        print(f"exported the EMA tokenizer to {export_dir}")
    lengths = pow2_lengths(tokenizer.num_tokens)
    return evaluate_after_fit(trainer, tokenizer, lengths, run_dir / "report", metrics, num_images)


class VartokCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        from typing import Literal

        from jsonargparse.typing import PositiveInt

        parser.add_argument("--report_metrics", type=list[Literal["psnr", "ssim", "lpips", "rfid"]],
                            default=["psnr", "ssim"],
                            help="metrics of the end-of-fit report (psnr, ssim, lpips, rfid)")
        parser.add_argument("--report_images", type=PositiveInt | None, default=None,
                            help="images of the end-of-fit report: the first N of the validation shards, in "
                                 "shard order, split over the ranks (default: all)")
        parser.add_argument("--skip_report", type=bool, default=False, help="do not export/evaluate after fit")

    def instantiate_trainer(self, **kwargs):
        """Default loggers: TensorBoard + CSV under `<run dir>/logs` (a config's own loggers win).

        One fixed folder (version ""), so that a resumed run, its checkpoints (`logs/checkpoints`) and
        `--ckpt_path last` find the same place; TensorBoard adds an events file there, and the CSV logger
        continues metrics.csv (Lightning's deletes it when the folder is not empty).
        """
        # The shipped configs write last.ckpt every N training steps; under manual optimization Lightning warns
        # at each such save that the weights are those after the optimizer step, which is the state we resume.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            from pytorch_lightning.loggers import TensorBoardLogger

            from vartok.cli.logs import ContinuingCSVLogger

            root = trainer_config.get("default_root_dir") or "runs/default"
            kwargs["logger"] = [TensorBoardLogger(root, name="logs", version=""),
                                ContinuingCSVLogger(root, name="logs", version="")]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Settings that cannot work stop here, before the data, the PCA or the first step."""
        from vartok.training.strategy import check_accumulation, check_strategy

        check_accumulation(self.trainer)
        check_strategy(self.trainer)

    def after_fit(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        if config.get("skip_report"):
            return
        if any(getattr(callback, "preempted", False) for callback in self.trainer.callbacks):
            return  # stopped for a SLURM requeue: the requeued run exports and reports when it finishes
        run_dir = Path(self.trainer.default_root_dir)
        export_and_report(self.trainer, self.model, run_dir, list(config.get("report_metrics")),
                          config.get("report_images"))


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        VartokCLI(
            TokenizerModule,
            ImageDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"vartok-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def cli() -> None:
    """The `vartok-train` command (and `python train.py`): `main`, then the distributed process group is ended
    before the interpreter exits. Left to the interpreter's shutdown, gloo's threads can abort the process
    ("terminate called without an active exception", exit code -6) after a successful run, and the job would
    count as failed. Python callers of `main` keep their process group."""
    import torch.distributed as dist

    try:
        main()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    cli()
