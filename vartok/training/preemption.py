"""SLURM preemption: checkpoint and requeue at a step boundary, never inside a training step.

Lightning's own handler (`SLURMEnvironment(auto_requeue=True)`) saves `hpc_ckpt_<N>.ckpt` from inside the
signal handler, wherever the main thread happens to be. Inside a training step after the optimizer step that
checkpoint holds the updated weights with the step counters of before, so the resumed run differs from the
uninterrupted one by a step; under DDP each rank also enters the checkpoint's barrier from wherever it is; and
training goes on after the requeue. `SlurmRequeue` turns that handler off and does the same work where the
training state is consistent: the signal only sets a flag, and at the end of the next training step all ranks
agree on it, save, rank 0 runs `scontrol requeue` and training stops. Outside SLURM it does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

log = logging.getLogger("vartok.preemption")


def parse_signal(value: int | str) -> signal.Signals:
    """`SIGUSR1`, `USR1` or a signal number."""
    try:
        if isinstance(value, int) or str(value).isdigit():
            return signal.Signals(int(value))
        name = str(value).upper()
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError):
        raise ValueError(f"requeue_signal must name a signal such as SIGUSR1, got {value!r}") from None


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` in a job array, else SLURM_JOB_ID."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job_id: str, timeout: float = 60.0) -> str | None:
    """Runs `scontrol requeue <job_id>`; returns None on success, else why it failed (one clause)."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], check=False, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        return "scontrol is not on PATH"
    except subprocess.TimeoutExpired:
        return f"scontrol did not return within {timeout:g} s"
    if done.returncode:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return f"scontrol exited with status {done.returncode}" + (f": {detail[-1]}" if detail else "")
    return None


class SlurmRequeue(pl.Callback):
    """On `requeue_signal` (SLURM's `#SBATCH --signal=SIGUSR1@<seconds>`), at the end of the next training
    step (a completed optimizer step; `module.micro_step == 0` inside a gradient accumulation): save the
    checkpoint a requeued job resumes from, let rank 0 requeue the job and stop training.

    The checkpoint is written twice, so that the requeued job resumes from it with or without `--ckpt_path
    last`: through every `ModelCheckpoint(save_last=True)` (its `last.ckpt`, which `--ckpt_path last` picks)
    and, with `hpc_checkpoint`, as `<default_root_dir>/hpc_ckpt_<N>.ckpt` (N one more than the highest there;
    Lightning resumes from the highest one under SLURM when no `ckpt_path` is given).

    Under DDP the flag is reduced over the ranks at every step end (one scalar all-reduce: any rank's flag
    counts), so all ranks save at the same step whichever of them got the signal. Active only where
    SLURM_JOB_ID is set; elsewhere no handler, no collective, no checkpoint. A failed requeue is logged in one
    sentence and training still stops.

    Args:
        requeue_signal: the signal SLURM sends before the time limit (name or number).
        hpc_checkpoint: also write `hpc_ckpt_<N>.ckpt` (found with no `--ckpt_path`; one per preemption).
    """

    def __init__(self, requeue_signal: int | str = "SIGUSR1", hpc_checkpoint: bool = True) -> None:
        self.signum = parse_signal(requeue_signal)
        self.hpc_checkpoint = hpc_checkpoint
        self.preempted = False  # set when training stopped for the signal, after the checkpoint was saved
        self._received = False
        self._active = False
        self._previous: Any = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._received = True  # only a flag: the work happens at the next step end

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            environment.auto_requeue = False  # read when Lightning registers its handlers, after setup
        if not self.hpc_checkpoint and not self._last_checkpoints(trainer):
            raise ValueError("SlurmRequeue(hpc_checkpoint=False) needs a ModelCheckpoint with save_last=True "
                             "to write the checkpoint a requeued job resumes from.")
        self._active = slurm_job_id() is not None  # the same on every rank, so are the collectives
        self._received = self.preempted = False
        if self._active and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
        self._previous, self._active = None, False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning skips the teardown hooks when fit raises

    @staticmethod
    def _last_checkpoints(trainer: pl.Trainer) -> list[ModelCheckpoint]:
        return [callback for callback in trainer.checkpoint_callbacks
                if isinstance(callback, ModelCheckpoint) and callback.save_last is True]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._active or getattr(pl_module, "micro_step", 0):
            return
        if trainer.strategy.reduce_boolean_decision(self._received, all=False):
            self._save_and_requeue(trainer)

    def _save_and_requeue(self, trainer: pl.Trainer) -> None:
        rank_zero_info(f"{self.signum.name} received: saving at step {trainer.global_step} and requeueing")
        for logger in trainer.loggers:
            logger.save()  # the metrics logged so far reach the disk before SLURM ends the job
        saved = []
        if self.hpc_checkpoint:
            path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            saved.append(trainer.strategy.broadcast(path, src=0))  # rank 0's numbering, on every rank
            trainer.save_checkpoint(saved[-1], weights_only=False)
        for callback in self._last_checkpoints(trainer):
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
            saved.append(callback.last_model_path)
        trainer.strategy.barrier("SlurmRequeue")  # every rank is done saving before the job is requeued
        job_id = slurm_job_id()
        if trainer.is_global_zero and job_id is not None:
            error = requeue(job_id)
            if error:
                log.warning(f"Could not requeue SLURM job {job_id} ({error}); submit the same script again "
                            f"to resume from {saved[-1]}.")
            else:
                rank_zero_info(f"requeued SLURM job {job_id}; it resumes from {' or '.join(map(str, saved))}")
        self.preempted, self._received = True, False
        trainer.should_stop = True
