"""SLURM preemption with `SlurmRequeue` (vartok/training/preemption.py): whenever SLURM's SIGUSR1 arrives,
the job saves at the next step end, requeues itself once and stops, and the requeued job (the command of
docs/launch.md section 4: the same `vartok-train fit ... --ckpt_path last`) ends with the uninterrupted run's
weights, bit for bit; Lightning's own handler, signalled after the optimizer step, does not.

The jobs are `vartok-train fit` on a shipped ImageNet recipe's callbacks with a tiny model and tiny data
(tests/fixtures/requeue_fit.py: 10 steps of 4 per epoch, last.ckpt every 5 steps, validation every 3), in
processes of their own under simulated SLURM variables, with a fake `scontrol` on PATH that records its
arguments (and so does not end the job as SLURM's requeue would: the job has to stop by itself). The
uninterrupted run they are compared with runs in this process, outside SLURM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.requeue_fit import STEPS, tiny_config
from tests.fixtures.resume_fit import tiny_data, tiny_module, tiny_trainer, weights
from vartok.training.preemption import SlurmRequeue, parse_signal

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "requeue_fit.py"
SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
if [ -n "$SCONTROL_STATUS" ]; then
    echo "scontrol: error: Job has already finished" >&2
    exit "$SCONTROL_STATUS"
fi
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return photo_shards(tmp_path_factory.mktemp("shards"), count=64, size=16)


def slurm_env(folder: Path, **extra: str) -> dict[str, str]:
    """This environment without SLURM's variables, then those of a one-task job 4242 and a fake scontrol."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SCONTROL_LOG=str(folder / "scontrol.log"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore",
               SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="1", SLURM_JOB_NAME="vartok-test",
               SLURM_JOB_ID="4242", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
               SLURM_NODELIST="localhost", **extra)
    return env


def launch(folder: Path, name: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`vartok-train fit --config folder/tiny.yaml ARGS` in a session of its own (a signal to its process
    group never reaches pytest); it records into folder/NAME.json and NAME.pt (per rank under DDP)."""
    command = [sys.executable, str(FIXTURE), str(folder / f"{name}.json"), "fit", "--config",
               str(folder / "tiny.yaml"), *args]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def end(process: subprocess.Popen) -> None:
    """Kills what is left of a job's session (after a timeout: the job and its DataLoader workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def fit(folder: Path, name: str, env: dict[str, str], *args: str, timeout: float = 60) -> tuple[dict, str]:
    process = launch(folder, name, env, *args)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        end(process)
    assert process.returncode == 0, output[-3000:]
    return json.loads((folder / f"{name}.json").read_text()), output


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    """The uninterrupted run's final weights (its last.ckpt at the last step) per (num_workers,
    accumulate_grad_batches), run on first use in this process, outside SLURM (SlurmRequeue inactive)."""
    from vartok.cli.train import main

    runs = {}

    def run(workers: int = 0, accumulate: int = 1) -> dict[str, torch.Tensor]:
        if (workers, accumulate) not in runs:
            folder = tmp_path_factory.mktemp(f"full{workers}-{accumulate}")
            config = tiny_config(folder, shards, accumulate_grad_batches=accumulate)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as in the jobs: CPU reductions depend on the thread count
            try:
                with pytest.MonkeyPatch.context() as patch:
                    for name in [k for k in os.environ if k.startswith("SLURM_")]:
                        patch.delenv(name)
                    patch.chdir(folder)
                    main(["fit", "--config", str(config), "--data.num_workers", str(workers)])
            finally:
                torch.set_num_threads(threads)
            last = load(folder / "run" / "logs" / "checkpoints" / "last.ckpt")
            assert last["global_step"] == last["vartok"]["step_count"] == STEPS
            runs[workers, accumulate] = last["state_dict"]
        return runs[workers, accumulate]

    return run


def assert_requeued_once_at(folder: Path, report: dict, step: int) -> None:
    """The job stopped at `step` (no step after the checkpoint), under SlurmRequeue's handler only
    (Lightning's is off), asked for one requeue, and both checkpoints hold that step with consistent
    counters."""
    assert (report["global_step"], report["step_count"]) == (step, step)
    assert report["environment"] == "SLURMEnvironment" and report["auto_requeue"] is False
    assert report["sigusr1_handler"] == "SlurmRequeue._on_signal"
    assert (folder / "scontrol.log").read_text().splitlines() == ["requeue 4242"]
    run = folder / "run"
    assert [p.name for p in run.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    for path in (run / "hpc_ckpt_1.ckpt", run / "logs" / "checkpoints" / "last.ckpt"):
        saved = load(path)
        assert saved["global_step"] == saved["vartok"]["step_count"] == step, path
        assert saved["vartok"]["micro_step"] == 0 and "partial_grads" not in saved["vartok"], path


# moment -> the step whose end the checkpoint is written at (tests/fixtures/requeue_fit.py: SIGNAL_WHEN)
MOMENTS = {"between": 5, "before_step": 6, "after_step": 6, "validation": 7}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_requeue_at_any_moment_resumes_bit_exactly(uninterrupted, shards, tmp_path, moment):
    step = MOMENTS[moment]
    full = uninterrupted()
    tiny_config(tmp_path, shards)
    env = slurm_env(tmp_path)
    signal_env = dict(env, SIGNAL_AT=str(step), SIGNAL_WHEN=moment)
    job, output = fit(tmp_path, "job", signal_env, "--ckpt_path", "last")
    assert f"SIGUSR1 received: saving at step {step} and requeueing" in output
    assert_requeued_once_at(tmp_path, job, step)

    rerun, _ = fit(tmp_path, "rerun", env, "--ckpt_path", "last")  # the requeued job: the same command
    assert rerun["ckpt_path"] == str(tmp_path / "run" / "logs" / "checkpoints" / "last.ckpt")
    assert rerun["global_step"] == rerun["step_count"] == STEPS
    assert_same_weights(full, load(tmp_path / "rerun.pt"))
    if moment == "after_step":  # a script without --ckpt_path: under SLURM the highest hpc_ckpt
        plain, _ = fit(tmp_path, "plain", env)
        assert plain["ckpt_path"] == str(tmp_path / "run" / "hpc_ckpt_1.ckpt")
        assert_same_weights(full, load(tmp_path / "plain.pt"))


@pytest.mark.timeout(150)
def test_signal_to_every_process_inside_an_accumulation_with_workers(uninterrupted, shards, tmp_path):
    """SIGUSR1 to the whole process group (DataLoader workers too, as when SLURM signals a whole job step)
    after the first micro-batch of step 3 (accumulate_grad_batches 2): saved at the end of step 3, exact."""
    full = uninterrupted(workers=2, accumulate=2)
    tiny_config(tmp_path, shards, accumulate_grad_batches=2)
    env = slurm_env(tmp_path)
    signal_env = dict(env, SIGNAL_AT="3", SIGNAL_WHEN="micro", SIGNAL_GROUP="1")
    job, _ = fit(tmp_path, "job", signal_env, "--ckpt_path", "last", "--data.num_workers", "2")
    assert_requeued_once_at(tmp_path, job, 3)
    fit(tmp_path, "rerun", env, "--ckpt_path", "last", "--data.num_workers", "2")
    assert_same_weights(full, load(tmp_path / "rerun.pt"))


@pytest.mark.timeout(150)
def test_lightning_handler_after_the_optimizer_step_loses_a_step(uninterrupted, shards, tmp_path):
    """The oracle: the same signal with Lightning's handler (the recipe without SlurmRequeue) is saved inside
    the step, with the optimizer's step count 6 but the module's 5; the rerun that resumes from it (its
    documented one: no --ckpt_path) does not end with the uninterrupted weights."""
    full = uninterrupted()
    tiny_config(tmp_path, shards, requeue=False)
    env = slurm_env(tmp_path)
    job, _ = fit(tmp_path, "job", dict(env, SIGNAL_AT="6", SIGNAL_WHEN="after_step"))
    assert job["auto_requeue"] is True and job["sigusr1_handler"] == "_HandlersCompose"
    assert job["global_step"] == STEPS  # Lightning's handler requeues and trains on
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]
    saved = load(tmp_path / "run" / "hpc_ckpt_1.ckpt")
    assert (saved["global_step"], saved["vartok"]["step_count"]) == (6, 5)
    rerun, _ = fit(tmp_path, "rerun", env)
    assert rerun["ckpt_path"] == str(tmp_path / "run" / "hpc_ckpt_1.ckpt")
    assert rerun["step_count"] == STEPS - 1
    name = "tokenizer.encoder.proj.weight"
    assert not torch.equal(full[name], load(tmp_path / "rerun.pt")[name])


@pytest.mark.timeout(90)
def test_lightning_handler_also_runs_in_the_dataloader_workers(shards, tmp_path):
    """A signal to the whole process group with Lightning's handler: each DataLoader worker, forked with a
    copy of the trainer, saves and requeues as well (SlurmRequeue's flag-only handler: test above)."""
    tiny_config(tmp_path, shards, requeue=False)
    env = dict(slurm_env(tmp_path), SIGNAL_AT="6", SIGNAL_WHEN="after_step", SIGNAL_GROUP="1")
    fit(tmp_path, "job", env, "--data.num_workers", "2")
    assert len((tmp_path / "scontrol.log").read_text().splitlines()) > 1


@pytest.mark.timeout(90)
def test_a_failed_requeue_is_one_sentence_and_training_still_stops(shards, tmp_path):
    tiny_config(tmp_path, shards)
    env = slurm_env(tmp_path, SCONTROL_STATUS="1", SIGNAL_AT="2", SIGNAL_WHEN="between")
    job, output = fit(tmp_path, "job", env, "--ckpt_path", "last")
    assert job["global_step"] == 2
    last = tmp_path / "run" / "logs" / "checkpoints" / "last.ckpt"
    lines = [line for line in output.splitlines() if "requeue" in line.lower()]
    assert lines[-1] == (f"Could not requeue SLURM job 4242 (scontrol exited with status 1: scontrol: error: "
                         f"Job has already finished); submit the same script again to resume from {last}.")
    assert "Traceback" not in output


@pytest.mark.timeout(60)
def test_outside_slurm_it_does_nothing(shards, tmp_path, monkeypatch):
    """No SLURM_JOB_ID: no signal handler, no collective, no checkpoint; the same weights as without it."""
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    handlers = []

    class RecordHandler(pl.Callback):
        def on_train_batch_start(self, *args) -> None:
            handlers.append(signal.getsignal(signal.SIGUSR1))

    before = signal.getsignal(signal.SIGUSR1)
    requeue = SlurmRequeue()
    with_it, without = tiny_module(), tiny_module()
    tiny_trainer(tmp_path / "a", 4, [requeue, RecordHandler()]).fit(with_it, tiny_data(shards))
    tiny_trainer(tmp_path / "b", 4).fit(without, tiny_data(shards))
    assert handlers and all(h is before for h in handlers) and signal.getsignal(signal.SIGUSR1) is before
    assert not requeue.preempted and not list((tmp_path / "a").glob("hpc_ckpt_*"))
    assert_same_weights(weights(with_it), weights(without))


def test_signal_names():
    assert parse_signal("SIGUSR1") == parse_signal("usr1") == parse_signal(10) == signal.SIGUSR1
    assert SlurmRequeue("SIGUSR2").signum == signal.SIGUSR2
    with pytest.raises(ValueError, match=r"^requeue_signal must name a signal such as SIGUSR1, got 'USR9'$"):
        SlurmRequeue("USR9")


# ---------------------------------------------------------------------- 2 ranks (SLURM tasks), gloo
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def srun(folder: Path, name: str, env: dict[str, str], *args: str, timeout: float = 100) -> list[dict]:
    """What `srun` starts for 2 tasks on one node: one process per rank with SLURM's per-task variables."""
    env = dict(env, SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    args = (*args, "--trainer.devices", "2", "--trainer.strategy", "ddp")
    ranks = [launch(folder, name, dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)), *args)
             for r in (0, 1)]
    try:
        outputs = [rank.communicate(timeout=timeout)[0] for rank in ranks]
    finally:
        for rank in ranks:
            end(rank)
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    return [json.loads((folder / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_agree_when_only_one_gets_the_signal(shards, tmp_path):
    """Rank 1 alone is signalled, after its optimizer step in step 6: both ranks save at the end of step 6 and
    stop, rank 0 requeues once, and the requeued 2-rank job ends with the uninterrupted job's weights."""
    tiny_config(tmp_path, shards)
    env = slurm_env(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    tiny_config(full, shards)
    srun(full, "full", slurm_env(full))
    job = srun(tmp_path, "job", dict(env, SIGNAL_AT="6", SIGNAL_WHEN="after_step", SIGNAL_RANK="1"),
               "--ckpt_path", "last")
    assert [r["world_size"] for r in job] == [2, 2]
    for report in job:
        assert (report["global_step"], report["step_count"], report["auto_requeue"]) == (6, 6, False)
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]
    srun(tmp_path, "rerun", env, "--ckpt_path", "last")
    for rank in (0, 1):
        assert_same_weights(load(full / f"full-rank{rank}.pt"), load(tmp_path / f"rerun-rank{rank}.pt"))
