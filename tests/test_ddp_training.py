"""The real TokenizerModule under 2-process gloo DDP (`strategy: ddp`, as the shipped recipes name it), per
quantizer family and length policy, with accumulation and the GAN: both ranks end with bit-identical weights,
and with accumulation DDP all-reduces only on the last micro-step. One torchrun launch runs every case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.ddp_train import CASES, STEPS
from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.processes import free_port

SCRIPT = Path(__file__).parent / "fixtures" / "ddp_train.py"


@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory) -> dict[str, list[dict]]:
    root = tmp_path_factory.mktemp("ddp_train")
    shards = photo_shards(root / "shards", count=48, size=16, shards=4)
    out = root / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(SCRIPT), str(root / "shards"), str(out), *CASES]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-4000:]
    assert len(shards) == 4
    return {case: [json.loads((out / f"{case}.rank{r}.json").read_text()) for r in range(2)] for case in CASES}


@pytest.mark.timeout(480)
@pytest.mark.parametrize("case", sorted(CASES))
def test_both_ranks_end_with_the_same_weights(ddp_records, case: str) -> None:
    rank0, rank1 = ddp_records[case]
    assert rank0["moved"] and rank1["moved"]
    assert rank0["step_count"] == rank1["step_count"] == rank0["global_step"] == STEPS
    assert rank0["tokenizer"] == rank1["tokenizer"]
    assert rank0["ema"] == rank1["ema"]


@pytest.mark.timeout(480)
@pytest.mark.parametrize("case", [c for c in sorted(CASES) if "accumulate" in c])
def test_accumulation_all_reduces_on_the_last_micro_step_only(ddp_records, case: str) -> None:
    record = ddp_records[case][0]
    assert record["accumulate"] == 2 and record["syncs"] > 0
    assert record["sync_micro_steps"] == [1]  # micro_step is the index of the micro-batch being reduced
