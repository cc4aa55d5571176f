"""Two gloo ranks, each with its share of the images (11 images: not a multiple of ranks × batch, the short
rank padded with invalid samples), against one process on all images: FID, pFID, PSNR, SSIM, LPIPS, codebook
and baseline figures are equal, each image counted exactly once, and only rank 0 writes files; with distributed=False one rank evaluates alone without waiting for the others."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.fixtures.doubles import ThumbnailTokenizer, make_random_inception_weights, photo_crops
from tests.fixtures.processes import assert_tree_close, free_port
from vartok.metrics import EvalPlan, Networks, evaluate
from vartok.nets.inception import build_inception
from vartok.nets.lpips import LPIPS

WORLD, BATCH, COUNT, SIZE = 2, 2, 11, 16
LENGTHS = [2, 12]
METRICS = {"psnr", "ssim", "lpips", "rfid", "pfid"}


def _scramble(indices: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(indices.shape, generator=generator) < 0.3
    return torch.where(flip, torch.randint(0, 256, indices.shape, generator=generator), indices)


def batches(images: torch.Tensor, rank: int, world: int) -> list[dict]:
    """This rank's images (rank::world) in batches of BATCH; every rank gets the same number of batches,
    completed with invalid copies (what vartok.data.val_loader does)."""
    mine = list(range(rank, images.shape[0], world))
    per_rank = -(-images.shape[0] // world)
    num_batches = -(-per_rank // BATCH)
    out = []
    for b in range(num_batches):
        ids = mine[b * BATCH : (b + 1) * BATCH]
        valid = [True] * len(ids) + [False] * (BATCH - len(ids))
        ids = ids + [0] * (BATCH - len(ids))
        out.append({"image": images[ids], "valid": torch.tensor(valid), "key": [f"i{i}" for i in ids]})
    return out


def run(images: torch.Tensor, weights: str, rank: int, world: int, out_dir: str, distributed: bool = True) -> dict:
    networks = Networks(inception=build_inception(weights, 64), lpips=LPIPS(random_init=True, seed=0))
    plan = EvalPlan(LENGTHS, METRICS, "cpu", networks, perturbations={"scramble": _scramble}, grid_images=2,
                    show=False, distributed=distributed)
    return evaluate(ThumbnailTokenizer(SIZE), batches(images, rank, world), plan, out_dir)


def worker(rank: int, port: int, folder: str, weights: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        report = run(photo_crops(COUNT, SIZE, seed=7), weights, rank, WORLD, str(Path(folder) / f"out{rank}"))
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(report))
        if rank == 0:  # rank 0 alone (as after a DDP fit), all images, no sync: must not wait for rank 1
            alone = run(photo_crops(COUNT, SIZE, seed=7), weights, 0, 1, str(Path(folder) / "alone"), False)
            (Path(folder) / "alone.json").write_text(json.dumps(alone))
        dist.barrier()
    finally:
        dist.destroy_process_group()






@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    weights = str(make_random_inception_weights(tmp_path / "inception.pth", photo_crops(8, 48, seed=1)))
    context = mp.start_processes(worker, args=(free_port(), str(tmp_path), weights), nprocs=WORLD, join=False,
                                 start_method="spawn")
    while not context.join(timeout=300):
        pass
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    single = json.loads(json.dumps(run(photo_crops(COUNT, SIZE, seed=7), weights, 0, 1, str(tmp_path / "one"))))
    assert ranks[0] == ranks[1]  # every rank returns the same synced report
    assert ranks[0]["num_images"] == single["num_images"] == COUNT
    assert ranks[0]["padding_samples"] == 1 and single["padding_samples"] == 1
    assert "pfid" in ranks[0]["lengths"]["12"] and "lpips" in ranks[0]["lengths"]["2"]
    assert_tree_close(ranks[0], single, rel=1e-6)
    assert_tree_close(json.loads((tmp_path / "alone.json").read_text()), single, rel=1e-6)
    assert (tmp_path / "out0" / "report.json").is_file() and not (tmp_path / "out1").exists()
