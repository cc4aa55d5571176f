"""`vartok-train` (= `python train.py`): LightningCLI over TokenizerModule and ImageDataModule.

At the end of `fit`, the EMA tokenizer is exported to `<run dir>/export/`, evaluated on the validation
data, and the report (report.json, rd.png, grid.png, a printed table) written to `<run dir>/report/`.
The run dir is `trainer.default_root_dir`.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from vartok.data import ImageDataModule
from vartok.tokenizers.length import pow2_lengths
from vartok.tokenizers.module import TokenizerModule

# The EMA copy of the tokenizer (and any frozen loss network) stays in eval mode on purpose; Lightning warns
# about every such module at the start of fit.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def export_and_report(module: TokenizerModule, datamodule: ImageDataModule, run_dir: Path, metrics: list[str]) -> dict:
    """Export the EMA tokenizer and evaluate it on the validation shards; returns the report."""
    from vartok.data import val_loader
    from vartok.metrics.evaluation import evaluate

    tokenizer = module.export_tokenizer(use_ema=True)
    export_dir = tokenizer.save_pretrained(run_dir / "export")
    print(f"exported the EMA tokenizer to {export_dir}")
    if datamodule._val_urls is None:
        print("no validation shards: skipping the end-of-fit report")
        return {}
    loader = val_loader(datamodule._val_urls, datamodule.image_size, datamodule.val_batch_size, num_workers=0,
                        rank=0, world_size=1)
    return evaluate(tokenizer, loader, pow2_lengths(tokenizer.num_tokens), metrics=metrics, device="cpu",
                    out_dir=run_dir / "report", distributed=False)


class VartokCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--report_metrics", type=list[str], default=["psnr", "ssim"],
                            help="metrics of the end-of-fit report (psnr, ssim, lpips, rfid)")
        parser.add_argument("--skip_report", type=bool, default=False, help="do not export/evaluate after fit")

    def instantiate_trainer(self, **kwargs):
        """Default loggers: TensorBoard + CSV under `<run dir>/logs` (a config's own loggers win)."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

            root = trainer_config.get("default_root_dir") or "runs/default"
            kwargs["logger"] = [TensorBoardLogger(root, name="logs", version=""), CSVLogger(root, name="logs", version="")]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        if config.get("skip_report") or not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.default_root_dir)
        export_and_report(self.model, self.datamodule, run_dir, list(config.get("report_metrics")))


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


if __name__ == "__main__":
    main()
