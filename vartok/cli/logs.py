"""A CSV logger that continues `metrics.csv` on resume instead of deleting it.

Lightning's CSVLogger deletes `metrics.csv` when its folder already holds files, and vartok's runs always log
to the same folder (`<run dir>/logs`, where the checkpoints also live), so every resume erased the history.
This writer keeps the file and, at its first write, drops only the rows from the step it starts at on: rows a
preempted run wrote after its last checkpoint are written again by the resumed run, and a fresh run (step 0)
into an old folder replaces the old rows, as before.
"""

from __future__ import annotations

import csv

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
