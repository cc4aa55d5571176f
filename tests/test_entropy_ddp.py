"""Two gloo ranks on CPU, each with half a batch, against one process on the whole batch (oracle).

Checked: the codebook and per-sample entropies equal the single-process values (masks with different
real-token counts per rank), each rank's latent gradient is world_size × the single-process gradient
(binary.py's documented convention), and after DDP averages the parameter gradients they equal the
single-process ones. In eval mode no collective runs (a rank-0-only forward returns).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.fixtures.processes import free_port
from vartok.models.quantizers import build_quantizer

WORLD = 2
KWARGS = {"bits": 8, "groups": 2, "temperature": 0.5}
DIM = 12


def make_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same quantizer, latents (4, 6, D), mask and code weights on every process."""
    torch.manual_seed(0)
    quantizer = build_quantizer("gq", dim=DIM, **KWARGS)
    z = torch.randn(4, 6, DIM)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 4:] = False  # rank 0 holds 10 real tokens, rank 1 holds 12 - 5 = 7
    mask[2, 1:] = False
    code_weights = torch.randn(4, 6, DIM)
    return quantizer, z, mask, code_weights


def loss_of(out, code_weights: torch.Tensor) -> torch.Tensor:
    # the codes term is a plain local mean (equal sizes per rank), the entropy term is synchronised
    return out.losses["entropy"] + (out.codes * code_weights).mean()


def worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        quantizer, z, mask, code_weights = make_problem()
        half = slice(rank * 2, rank * 2 + 2)
        local_z = z[half].clone().requires_grad_(True)
        out = quantizer(local_z, mask[half])
        out.losses["entropy"].backward()
        result = {"stats": out.stats, "entropy": out.losses["entropy"].detach(), "z_grad": local_z.grad}

        quantizer.zero_grad()
        ddp = torch.nn.parallel.DistributedDataParallel(quantizer)
        loss_of(ddp(z[half], mask[half]), code_weights[half]).backward()
        result["param_grads"] = {name: p.grad.clone() for name, p in quantizer.named_parameters()}

        if rank == 0:  # evaluation on one rank only must not wait for a collective
            quantizer.eval()
            result["eval_entropy"] = quantizer(z[half], mask[half]).stats["entropy_codebook"]
        torch.save(result, Path(folder) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()




@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    context = mp.start_processes(
        worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish in 120 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    quantizer, z, mask, code_weights = make_problem()
    z.requires_grad_(True)
    single = quantizer(z, mask)
    single.losses["entropy"].backward()
    z_grad = z.grad.clone()
    quantizer.zero_grad()
    loss_of(quantizer(z.detach(), mask), code_weights).backward()

    for rank, result in enumerate(ranks):
        for key in ["entropy_codebook", "entropy_sample"]:
            torch.testing.assert_close(result["stats"][key], single.stats[key], rtol=1e-5, atol=0)
        torch.testing.assert_close(result["entropy"], single.losses["entropy"].detach(), rtol=1e-5, atol=0)
        local_grad = z_grad[rank * 2 : rank * 2 + 2]
        torch.testing.assert_close(result["z_grad"], WORLD * local_grad, rtol=1e-4, atol=1e-7)
        for name, param in quantizer.named_parameters():
            torch.testing.assert_close(result["param_grads"][name], param.grad, rtol=1e-4, atol=1e-7)
    local = quantizer.eval()(z[:2].detach(), mask[:2]).stats["entropy_codebook"]
    torch.testing.assert_close(ranks[0]["eval_entropy"], local)  # eval: this rank's tokens only
    assert not torch.allclose(local, single.stats["entropy_codebook"])  # so the check above means something
