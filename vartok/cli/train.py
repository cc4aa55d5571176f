"""`vartok-train` (= `python train.py`): LightningCLI over TokenizerModule and ImageDataModule.

At the end of `fit`, the EMA tokenizer is exported to `<run dir>/export/` and evaluated on the validation
data (the first `report_images` images, or all) by every rank on its device, and rank 0 writes the report
(report.json, rd.png, grid.png, a printed table) to `<run dir>/report/` (vartok.metrics.fit_report).
The run dir is `trainer.default_root_dir`.

Subcommands: `fit` and `validate`. Lightning's `test` and `predict`, and its `--optimizer` / `--lr_scheduler`
arguments, are not offered: the module has no test or predict step, and builds its own optimizers and
schedules from `model.optim`.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from vartok.cli.logs import StepProgressBar, quiet_lightning
from vartok.data import ImageDataModule
from vartok.tokenizers.length import pow2_lengths
from vartok.training.checks import check_image_size
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
    """LightningCLI over TokenizerModule and ImageDataModule: `fit` and `validate` only, no optimizer or
    scheduler arguments (see the module docstring), settings checked before any work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        quiet_lightning()
        kwargs.setdefault("auto_configure_optimizers", False)  # the module's optimizers come from model.optim
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands that work with vartok's module (and the arguments each takes from the classes)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

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
        trainer = super().instantiate_trainer(**kwargs)
        bar = trainer.progress_bar_callback
        if type(bar) is RichProgressBar:
            # Lightning's bar (the configs name it) with its settings kept, counting steps (vartok.cli.logs).
            bar.__class__ = StepProgressBar
        return trainer

    def before_fit(self) -> None:
        """Settings that cannot work stop here, before the data, the PCA or the first step."""
        from vartok.training.strategy import check_accumulation, check_strategy

        check_accumulation(self.trainer)
        check_strategy(self.trainer)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        check_ckpt_path(ckpt_path)
        check_image_size(self.datamodule, self.model.tokenizer_config, self.model.hparams)
        if ckpt_path is None:
            note_earlier_checkpoints(self.trainer)

    def before_validate(self) -> None:
        """The same checks for `validate`, which also needs validation data."""
        check_ckpt_path(self.config[self.subcommand].get("ckpt_path"))
        check_image_size(self.datamodule, self.model.tokenizer_config, self.model.hparams)
        if self.datamodule.val_shards is None:
            raise ValueError("validate needs validation data: set data.val_shards (shard paths, a brace "
                             "pattern or a shard folder)")

    def after_fit(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        if config.get("skip_report"):
            return
        if any(getattr(callback, "preempted", False) for callback in self.trainer.callbacks):
            return  # stopped for a SLURM requeue: the requeued run exports and reports when it finishes
        run_dir = Path(self.trainer.default_root_dir)
        export_and_report(self.trainer, self.model, run_dir, list(config.get("report_metrics")),
                          config.get("report_images"))


def check_ckpt_path(ckpt_path: str | None) -> None:
    """One sentence for a --ckpt_path that is a folder or does not exist, before any work (Lightning's names
    "last", "hpc", "best", "registry..." and remote URLs are left to it)."""
    if ckpt_path is None or str(ckpt_path) in ("last", "hpc", "best") or str(ckpt_path).startswith("registry") \
            or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path)
    fix = "or --ckpt_path last to resume the latest run in trainer.default_root_dir"
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("logs/checkpoints/*.ckpt"))
        example = ([f for f in found if f.name == "last.ckpt"] or found)[:1]
        give = f"give a checkpoint file (e.g. --ckpt_path {example[0]})" if example else \
            "it holds no .ckpt file; give a checkpoint file"
        raise ValueError(f"--ckpt_path {path} is a folder, not a checkpoint file; {give}, {fix}")
    if not path.exists():
        raise ValueError(f"--ckpt_path {path} does not exist; give an existing .ckpt file, {fix}")


def checkpoint_folders(trainer: Trainer) -> set[Path]:
    """Where the trainer's ModelCheckpoint callbacks write (their dirpath, or Lightning's default under the
    first logger: `<run dir>/logs/checkpoints` with vartok's loggers)."""
    folders = set()
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folders.add(Path(callback.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            folders.add(Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version / "checkpoints")
        else:
            folders.add(Path(trainer.default_root_dir) / "checkpoints")
    return folders


def note_earlier_checkpoints(trainer: Trainer) -> None:
    """A fresh fit into a folder that holds an earlier run's checkpoints: say what happens, in one sentence."""
    for folder in sorted(checkpoint_folders(trainer)):
        found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            rank_zero_info(f"note: {folder} holds checkpoints of an earlier run ({shown}); this run starts from "
                           "step 0 and writes its own beside them (last-v1.ckpt, ...); to continue the earlier "
                           "run instead, pass --ckpt_path last, or use another --trainer.default_root_dir")


def run_cli(command: str, cli_class: type, module_class: type, args: list[str] | None,
            end_process_group: bool) -> None:
    """Run a LightningCLI command over `module_class` and ImageDataModule: a user mistake is one sentence on
    stderr (`<command>: error: ...`) and exit status 2.

    Args:
        command: the command's name, for the message.
        cli_class: VartokCLI or a subclass; module_class: the LightningModule it builds.
        args: the arguments (None: sys.argv).
        end_process_group: end the distributed process group before returning. The commands do: left to the
            interpreter's shutdown, gloo's threads can abort the process ("terminate called without an active
            exception", exit code -6) after a successful run, and the job would count as failed. Python callers
            keep their process group.
    """
    import torch.distributed as dist

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cli_class(module_class, ImageDataModule, seed_everything_default=0, save_config_kwargs={"overwrite": True},
                  args=args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if end_process_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def main(args: list[str] | None = None) -> None:
    """vartok-train for Python callers (their process group is kept)."""
    run_cli("vartok-train", VartokCLI, TokenizerModule, args, end_process_group=False)


def cli() -> None:
    """The `vartok-train` command (and `python train.py`)."""
    run_cli("vartok-train", VartokCLI, TokenizerModule, None, end_process_group=True)


if __name__ == "__main__":
    cli()
