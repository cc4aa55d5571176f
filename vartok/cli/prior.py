"""`vartok-prior`: LightningCLI over PriorModule and ImageDataModule — train a token prior on a tokenizer export.

    vartok-prior fit --config configs/prior/demo.yaml [--model.tokenizer runs/demo/export]

Each step encodes its images with the frozen export and trains the prior on their tokens; `val/bits_per_token`
is the held-out figure. At the end of fit the prior is exported to `<run dir>/prior/` (config.json +
model.safetensors, loads with `TokenPrior.from_pretrained`) with `training.json` (the final held-out bits per
token and the tokenizer it was trained for). The run dir is `trainer.default_root_dir`; logs and checkpoints
go to `<run dir>/logs` as with vartok-train, and `--ckpt_path last` resumes.

Subcommands: `fit` and `validate` (no `--optimizer` / `--lr_scheduler`: the module builds AdamW and its
warmup-cosine schedule from model.lr, model.weight_decay, model.warmup_steps and model.min_lr_ratio).
"""

from __future__ import annotations

from vartok.cli.train import VartokCLI, check_ckpt_path, note_earlier_checkpoints, run_cli
from vartok.training.prior_module import PriorModule

COMMAND = "vartok-prior"


class PriorCLI(VartokCLI):
    """vartok-train's CLI (fit / validate, vartok's loggers and step progress bar, quiet Lightning) over
    PriorModule: no end-of-fit tokenizer report (the module writes the prior export itself)."""

    def add_arguments_to_parser(self, parser) -> None:
        """No report arguments: the prior's end-of-fit figure is its held-out bits per token."""

    def before_fit(self) -> None:
        """Settings that cannot work stop here, before the data or the first step."""
        from vartok.training.strategy import check_strategy

        check_strategy(self.trainer)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        check_ckpt_path(ckpt_path)
        if ckpt_path is None:
            note_earlier_checkpoints(self.trainer)

    def before_validate(self) -> None:
        check_ckpt_path(self.config[self.subcommand].get("ckpt_path"))
        if self.datamodule.val_shards is None:
            raise ValueError("validate needs validation data: set data.val_shards (shard paths, a brace "
                             "pattern or a shard folder)")

    def after_fit(self) -> None:
        """Nothing: PriorModule.on_fit_end writes the export (also for Python callers of Trainer.fit)."""


def main(args: list[str] | None = None) -> None:
    """The `vartok-prior` command (`args` None: sys.argv; then the process group is ended, see
    vartok.cli.train.run_cli) — a user mistake is one sentence on stderr, exit 2."""
    run_cli(COMMAND, PriorCLI, PriorModule, args, end_process_group=args is None)


if __name__ == "__main__":
    main()
