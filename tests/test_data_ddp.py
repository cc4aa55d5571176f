"""A real 2-process DDP fit on CPU (gloo), launched with torchrun like docs/launch.md, over uneven shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.data_shards import write_shards
from tests.fixtures.processes import free_port

FIT_SCRIPT = Path(__file__).parent / "fixtures" / "ddp_fit.py"




@pytest.mark.slow
def test_two_process_ddp_fit_with_uneven_shards(tmp_path):
    _, keys = write_shards(tmp_path / "shards", [7, 3, 5])  # 3 shards, 2 ranks: uneven on purpose
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(FIT_SCRIPT), str(tmp_path / "shards"), str(out)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        assert [len(r["train"][epoch]) for r in ranks] == [12, 12]  # epoch_size per rank, equal steps
        assert ranks[0]["val_batches"][epoch] == ranks[1]["val_batches"][epoch]
        assert Counter(ranks[0]["val"][epoch] + ranks[1]["val"][epoch]) == Counter(keys)
        assert set(ranks[0]["train"][epoch] + ranks[1]["train"][epoch]) <= set(keys)
    assert ranks[0]["train"]["0"] != ranks[0]["train"]["1"]  # reshuffled per epoch
    assert ranks[0]["train"]["0"] != ranks[1]["train"]["0"]  # ranks read different data
