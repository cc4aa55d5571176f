"""What a training run prints and logs: the progress bar, Lightning's messages, and the CSV metrics.

`StepProgressBar` counts training steps out of `trainer.max_steps`; `quiet_lightning` drops Lightning's
advertisements and the warnings that do not apply to vartok's runs.

The CSV logger continues `metrics.csv` on resume instead of deleting it: Lightning's CSVLogger deletes it
when its folder already holds files, and vartok's runs always log to the same folder (`<run dir>/logs`, where
the checkpoints also live), so every resume erased the history. This writer keeps the file and, at its first
write, drops only the rows from the step it starts at on: rows a preempted run wrote after its last checkpoint
are written again by the resumed run, and a fresh run (step 0) into an old folder replaces the old rows.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class ContinuingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, minus the deletion; the earlier rows are kept below the first new step."""

    def _check_log_dir_exists(self) -> None:
        # Replaces the parent's check, which deletes metrics.csv; read the existing columns instead.
        self._trim_pending = self._fs.isfile(self.metrics_file_path)
        if self._trim_pending:
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def save(self) -> None:
        if self.metrics and self._trim_pending:
            self._trim_pending = False
            self._keep_rows_before(min(int(row["step"]) for row in self.metrics))
        super().save()

    def _keep_rows_before(self, step: int) -> None:
        """Drop the rows of `step` and later (the steps this run logs again)."""
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = [row for row in csv.DictReader(file) if row.get("step") and float(row["step"]) < step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class ContinuingCSVLogger(CSVLogger):
    """`CSVLogger` whose metrics.csv survives a resume (see `ContinuingExperimentWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing ..." lines: they advertise services, not the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """Keep Lightning's output to what concerns the run (idempotent)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisement) for f in logger.filters):
            logger.addFilter(_NoAdvertisement())
    # A fresh run into a folder with checkpoints gets vartok's own note (vartok.cli.train), and a resume expects
    # them; Lightning's deprecation inside its own code and its note about no validation data (data.val_shards
    # unset is a choice) are nothing the user can act on.
    for message in (r"Checkpoint directory .* exists and is not empty",
                    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                    r"Total length of `.*` across ranks is zero"):
        warnings.filterwarnings("ignore", message=message)


def log_line_seconds() -> float:
    """Seconds between the plain progress lines written when the output is not a terminal (a log file, a
    batch job): VARTOK_PROGRESS_SECONDS, default 30."""
    return float(os.environ.get("VARTOK_PROGRESS_SECONDS", "30"))


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting training steps out of `trainer.max_steps` in a run bounded by
    steps (max_epochs -1, vartok's configs): there it would read "Epoch 0/-2" and restart its count at every
    epoch of the data. Otherwise it is Lightning's bar unchanged.

    When stdout is not a terminal (output sent to a log file), a rich bar shows nothing until the end; then one
    plain line every `log_line_seconds()`: "step 300/1000 (30 %), 5.1 steps/s, about 2 min 17 s left, loss 0.016".
    """

    _last_line: float | None = None
    _line_start: tuple[float, int] | None = None

    def _log_line(self, trainer: pl.Trainer) -> None:
        """The plain progress line, at most every log_line_seconds(), when stdout is not a terminal."""
        if sys.stdout.isatty():
            return
        now, step = time.monotonic(), trainer.global_step
        if self._line_start is None:
            self._line_start, self._last_line = (now, step), now
            return
        if now - self._last_line < log_line_seconds():
            return
        self._last_line = now
        rate = (step - self._line_start[1]) / max(now - self._line_start[0], 1e-9)
        total = trainer.max_steps
        parts = [f"step {step}/{total} ({100 * step / total:.0f} %)", f"{rate:.2f} steps/s"]
        if rate > 0:
            left = int((total - step) / rate)
            parts.append(f"about {left // 60} min {left % 60} s left" if left >= 60 else f"about {left} s left")
        loss = trainer.progress_bar_metrics.get("loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        print(", ".join(parts), flush=True)

    def _by_steps(self) -> bool:
        trainer = self.trainer
        return trainer.max_steps > 0 and trainer.max_epochs in (None, -1)

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"  # padded as Lightning's, against flicker

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._by_steps() and self.train_progress_bar_id is not None:
            self._update(self.train_progress_bar_id, trainer.global_step)  # a new epoch goes on counting

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._by_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # a resume inside an epoch
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
        self._log_line(trainer)
