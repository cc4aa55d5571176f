"""VQ with a learnable codebook (ema: false): the `codebook` loss exists, equals its definition computed by hand
from the library's codebook, trains only the codebook (the commit loss only the input), and pulls the codes
toward the latents; the trainer settings that cannot work stop with one sentence."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vartok.models.quantizers import build_quantizer
from vartok.training.strategy import check_accumulation, check_strategy


def quantizer():
    torch.manual_seed(0)
    return build_quantizer("vq", 4, codebook_size=16, codebook_dim=4, ema=False, dead_code_threshold=0.0).train()


def test_losses_match_the_definition_and_route_gradients() -> None:
    vq = quantizer()
    z = torch.randn(3, 5, 4, requires_grad=True)
    out = vq(z)
    embed = vq.vq._codebook.embed  # (1, K, 4), the learnable parameter
    codebook = embed[0]
    nearest = torch.cdist(z.detach().reshape(-1, 4), codebook.detach()).argmin(-1).reshape(3, 5)
    assert torch.equal(out.indices, nearest)  # euclidean nearest code
    chosen = codebook[out.indices]
    torch.testing.assert_close(out.losses["codebook"], ((chosen - z.detach()) ** 2).mean())
    torch.testing.assert_close(out.losses["commit"], ((z - chosen.detach()) ** 2).mean())
    grad_z, grad_codebook = torch.autograd.grad(out.losses["codebook"], [z, embed], allow_unused=True,
                                                retain_graph=True)
    assert grad_z is None and grad_codebook.abs().sum() > 0
    grad_z, grad_codebook = torch.autograd.grad(out.losses["commit"], [z, embed], allow_unused=True)
    assert grad_codebook is None and grad_z.abs().sum() > 0


def test_the_codebook_loss_pulls_the_codes_to_the_latents() -> None:
    vq = quantizer()
    z = torch.randn(8, 16, 4)
    optimizer = torch.optim.Adam([vq.vq._codebook.embed], lr=0.05)
    first = None
    for _ in range(50):
        loss = vq(z).losses["codebook"]
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(vq(z).losses["codebook"]) < 0.5 * first


def test_padded_tokens_take_no_part_in_the_losses() -> None:
    vq = quantizer()
    z = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    changed = z.clone()
    changed[1, 2:] += 100.0
    a, b = vq(z, mask), vq(changed, mask)
    torch.testing.assert_close(a.losses["codebook"], b.losses["codebook"])
    torch.testing.assert_close(a.losses["commit"], b.losses["commit"])


def test_sharded_strategies_and_the_trainers_accumulation_are_refused_in_one_sentence() -> None:
    from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy

    for strategy in (FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)):
        with pytest.raises(ValueError, match=rf"trainer.strategy {type(strategy).__name__} is not supported"):
            check_strategy(SimpleNamespace(strategy=strategy))
    with pytest.raises(ValueError, match="set model.optim.accumulate_grad_batches=4"):
        check_accumulation(SimpleNamespace(accumulate_grad_batches=4))
    check_accumulation(SimpleNamespace(accumulate_grad_batches=1))
