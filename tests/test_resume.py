"""Preemption: a resume from any step equals the uninterrupted run bit for bit; last.ckpt is the latest step;
SLURM's SIGUSR1 checkpoint and requeue; the logs continue; a checkpoint without a stream position is refused.

The fits are the real TokenizerModule, tiny (tests/fixtures/resume_fit.py): 4 batches of 16 crops per epoch
and rank, 10 steps, so step 5 is one batch into epoch 1 and step 4 is the last batch of epoch 0.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.resume_fit import (
    STEPS,
    every_step,
    tiny_data,
    tiny_data_settings,
    tiny_module,
    tiny_trainer,
    weights,
)
from vartok.data import DataError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "resume_fit.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return photo_shards(tmp_path_factory.mktemp("shards"), count=64, size=16)


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    """An uninterrupted 10-step fit per num_workers with a checkpoint after every step, run on first use:
    workers -> (final weights, checkpoint folder)."""
    runs = {}

    def run(workers: int) -> tuple[dict[str, torch.Tensor], Path]:
        if workers not in runs:
            folder = tmp_path_factory.mktemp(f"full{workers}")
            module = tiny_module()
            trainer = tiny_trainer(folder, callbacks=[every_step(folder / "ckpt")])
            trainer.fit(module, tiny_data(shards, workers))
            assert module.step_count == STEPS
            runs[workers] = weights(module), folder / "ckpt"
        return runs[workers]

    return run


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2], ids=lambda n: f"workers{n}")
@pytest.mark.parametrize("step", [5, 7, 4], ids=["one_into_epoch", "three_into_epoch", "last_of_epoch"])
def test_resume_from_any_step_is_bit_exact(uninterrupted, shards, tmp_path, step, workers):
    full, checkpoints = uninterrupted(workers)
    module = tiny_module()
    module.tokenizer.encoder.proj.weight.data.add_(1.0)  # the checkpoint must overwrite everything
    checkpoint = checkpoints / f"step={step}.ckpt"
    tiny_trainer(tmp_path).fit(module, tiny_data(shards, workers), ckpt_path=checkpoint)
    assert module.step_count == STEPS
    assert_same_weights(full, weights(module))
    saved = torch.load(checkpoint, weights_only=True)
    name = "tokenizer.encoder.proj.weight"
    assert not torch.equal(saved["state_dict"][name], full[name])  # the weights moved after the checkpoint
    assert saved["ImageDataModule"]["train_stream"]["consumed"] == (step - 1) % 4 + 1


@pytest.mark.timeout(120)
def test_resume_from_a_best_checkpoint_written_after_validation_is_bit_exact(shards, tmp_path):
    """The configs' best-step=N.ckpt is written at the end of a validation inside the epoch (step 6)."""
    validate = {"limit_val_batches": 1, "val_check_interval": 3, "check_val_every_n_epoch": None}
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/psnr", mode="max",
                                        save_top_k=-1, filename="{step}")
    full, resumed = tiny_module(), tiny_module()
    tiny_trainer(tmp_path / "full", callbacks=[best], **validate).fit(full, tiny_data(shards, val_shards=shards))
    trainer = tiny_trainer(tmp_path / "resumed", **validate)
    trainer.fit(resumed, tiny_data(shards, val_shards=shards), ckpt_path=tmp_path / "ckpt" / "step=6.ckpt")
    assert resumed.step_count == STEPS
    assert_same_weights(weights(full), weights(resumed))


@pytest.mark.timeout(120)
def test_resume_with_a_vq_codebook_that_resets_dead_codes_is_bit_exact(shards, tmp_path):
    """vector-quantize-pytorch re-seeds dead codes with samples drawn from the global RNG, which a resumed run
    holds in another state than the uninterrupted one; the module seeds it per step inside the forward."""
    vq = {"quantizer": "vq", "quantizer_args": {"codebook_size": 64, "codebook_dim": 4, "dead_code_threshold": 2.0}}
    full, resumed = tiny_module(tokenizer=vq), tiny_module(tokenizer=vq)
    before = full.tokenizer.quantizer.vq._codebook.embed.detach().clone()
    tiny_trainer(tmp_path / "full", 6, [every_step(tmp_path / "ckpt")]).fit(full, tiny_data(shards))
    after = full.tokenizer.quantizer.vq._codebook.embed.detach()
    assert (after - before).abs().amax(-1).gt(0).all()  # every code moved or was re-seeded
    torch.randn(1000)  # a resumed process has drawn other numbers before
    tiny_trainer(tmp_path / "resumed", 6).fit(resumed, tiny_data(shards), ckpt_path=tmp_path / "ckpt" / "step=3.ckpt")
    assert_same_weights(weights(full), weights(resumed))


@pytest.mark.timeout(120)
def test_resume_inside_a_gradient_accumulation_is_bit_exact(shards, tmp_path):
    class SaveBetweenMicroBatches(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            if module.step_count == 2 and module.micro_step == 1:
                trainer.save_checkpoint(tmp_path / "inside.ckpt")

    full = tiny_module(accumulate_grad_batches=2)
    tiny_trainer(tmp_path / "full", 5, [SaveBetweenMicroBatches()]).fit(full, tiny_data(shards))
    assert torch.load(tmp_path / "inside.ckpt", weights_only=True)["vartok"]["micro_step"] == 1
    resumed = tiny_module(accumulate_grad_batches=2)
    tiny_trainer(tmp_path / "resumed", 5).fit(resumed, tiny_data(shards), ckpt_path=tmp_path / "inside.ckpt")
    assert resumed.step_count == full.step_count == 5
    assert_same_weights(weights(full), weights(resumed))


@pytest.mark.timeout(120)
def test_a_checkpoint_without_stream_position_is_refused_before_any_step(uninterrupted, shards, tmp_path):
    _, checkpoints = uninterrupted(0)
    old = torch.load(checkpoints / "step=5.ckpt", weights_only=True)
    del old["ImageDataModule"]  # what checkpoints written before the stream position look like
    torch.save(old, tmp_path / "old.ckpt")
    steps = []

    class CountSteps(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    module = tiny_module()
    with pytest.raises(DataError, match=r"old\.ckpt has no training-stream position .* start a new run\.$"):
        trainer = tiny_trainer(tmp_path, callbacks=[CountSteps()])
        trainer.fit(module, tiny_data(shards), ckpt_path=tmp_path / "old.ckpt")
    assert steps == [] and module.step_count == 5


@pytest.mark.timeout(120)
def test_changed_stream_settings_warn_and_continue(uninterrupted, shards, tmp_path, caplog):
    _, checkpoints = uninterrupted(0)
    module = tiny_module()
    with caplog.at_level(logging.WARNING, logger="vartok.data"):
        trainer = tiny_trainer(tmp_path)
        trainer.fit(module, tiny_data(shards, 2, seed=3), ckpt_path=checkpoints / "step=5.ckpt")
    assert module.step_count == STEPS
    messages = [r.getMessage() for r in caplog.records if "data order" in r.getMessage()]
    assert len(messages) == 1 and "seed 0 -> 3" in messages[0] and "num_workers 0 -> 2" in messages[0]


# ---------------------------------------------------------------------- the shipped checkpoint settings, logs
def tiny_config(tmp_path: Path, shards: list[str]) -> Path:
    """configs/demo.yaml with its callbacks as shipped (last.ckpt every 2 steps instead of 500), a tiny model
    and tiny data: 8 steps, validation at steps 3 and 6."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(default_root_dir=str(tmp_path / "run"), max_steps=8, val_check_interval=3,
                   log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    callbacks = [c for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert len(callbacks) == 2
    for callback in callbacks:
        if callback["init_args"].get("every_n_train_steps"):
            callback["init_args"]["every_n_train_steps"] = 2
    trainer["callbacks"] = callbacks
    config["model"] = {"preset": "demo_tiny", "optim": {"lr": 0.002, "warmup_steps": 2},
                       "tokenizer": {"width": 64, "heads": 4, "depth": 2, "num_tokens": 8}}
    config["data"] = tiny_data_settings(shards, val_shards=shards[:1])
    config["skip_report"] = True
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.timeout(180)
def test_shipped_checkpoints_and_logs_across_a_resume(shards, tmp_path, monkeypatch):
    from vartok.cli.train import main

    monkeypatch.chdir(tmp_path)
    config, run = tiny_config(tmp_path, shards), tmp_path / "run"
    main(["fit", "--config", str(config)])
    checkpoints = run / "logs" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8  # the latest step, although val/psnr was last measured at step 6
    best = sorted(p.name for p in checkpoints.glob("best-*.ckpt"))
    assert len(best) == 1 and best[0] in {"best-step=3.ckpt", "best-step=6.ckpt"}
    first_rows = metric_rows(run)
    assert {int(row["step"]) for row in first_rows if row.get("train/loss")} == set(range(8))

    main(["fit", "--config", str(config), "--trainer.max_steps", "12", "--ckpt_path", "last"])
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 12
    rows = metric_rows(run)
    train_steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert train_steps == list(range(12))  # the first run's rows are kept, none is written twice
    assert [row for row in rows if int(row["step"]) < 8] == [
        {key: row.get(key, "") for key in rows[0]} for row in first_rows]
    assert any(row.get("val/psnr") for row in rows if int(row["step"]) >= 8)  # validation at step 9
    assert len(list((run / "logs").glob("events.out.tfevents.*"))) == 2  # TensorBoard: one file per run


# ---------------------------------------------------------------------- SLURM requeue, 2-process DDP
def fixture_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")


@pytest.mark.timeout(150)
def test_slurm_requeue_signal_checkpoint_and_rerun(shards, tmp_path):
    """SIGUSR1 after step 5: Lightning writes hpc_ckpt_1.ckpt and calls `scontrol requeue <job id>` (here a
    fake that records its arguments and kills the job, as SLURM's requeue does). The rerun of the same command
    resumes from hpc_ckpt_1.ckpt; with ckpt_path="last" it resumes from last.ckpt (step 3) instead."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\nkill -KILL $PPID\n')
    scontrol.chmod(0o755)
    env = fixture_env()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SCONTROL_LOG=str(tmp_path / "scontrol.log"),
               SLURM_NTASKS="1", SLURM_JOB_NAME="vartok-test", SLURM_JOB_ID="4242", SLURM_PROCID="0",
               SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost")
    command = [sys.executable, str(FIXTURE), "slurm", str(tmp_path / "out"), *shards]
    job = subprocess.run(command, check=False, env=dict(env, SIGNAL_AT="5"), capture_output=True, text=True,
                         timeout=60)
    assert job.returncode == -9, job.stderr[-3000:]  # killed by the fake requeue, right after the checkpoint
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = torch.load(tmp_path / "out" / "job" / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == 5 and hpc["ImageDataModule"]["train_stream"]["consumed"] == 1
    last = torch.load(tmp_path / "out" / "job" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3

    rerun = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=80)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "slurm.json").read_text())
    assert {run["environment"] for run in report.values()} == {"SLURMEnvironment"}
    assert report["full"]["start_step"] == 0
    assert report["job"]["ckpt_path"].endswith("hpc_ckpt_1.ckpt") and report["job"]["start_step"] == 5
    assert report["job_last"]["ckpt_path"].endswith("last.ckpt") and report["job_last"]["start_step"] == 3
    full = torch.load(tmp_path / "out" / "full.pt", weights_only=True)
    for name in ("job", "job_last"):
        assert_same_weights(full, torch.load(tmp_path / "out" / f"{name}.pt", weights_only=True))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(240)
def test_two_process_ddp_resume_is_bit_exact(shards, tmp_path):
    """torchrun, 2 gloo ranks, num_workers 0 and 2: resumed from step 5 (mid-epoch) equals uninterrupted."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(FIXTURE), "ddp", str(tmp_path), *shards]
    done = subprocess.run(command, check=False, env=fixture_env(), capture_output=True, text=True,
                          timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"ddp-rank{rank}.json").read_text()) for rank in (0, 1)]
    for workers in ("0", "2"):
        assert [r[workers]["world_size"] for r in ranks] == [2, 2]
        assert all(r[workers]["equal"] and r[workers]["steps"] == STEPS for r in ranks), ranks
        assert ranks[0][workers]["checksum"] == ranks[1][workers]["checksum"]  # the ranks agree
