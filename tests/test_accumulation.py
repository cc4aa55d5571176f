"""Gradient accumulation in the manual-optimization step: 4 micro-batches of 8 give the gradients of one batch
of 32 (the oracle), for the tokenizer and the discriminator, with the step counters counting optimizer steps.

The model has no batch-dependent layer (FSQ, no length draws, LPIPS and a GroupNorm discriminator are per image;
LeCam's running means and the adaptive GAN weight are left out: they are computed per micro-batch).
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from vartok.training.module import TokenizerModule
from vartok.training.settings import LossWeights, Optimization

IMAGES = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


class GradientRecorder(pl.Callback):
    """The gradients every optimizer is about to apply, in order."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.grads.append({name: p.grad.detach().clone() for name, p in module.named_parameters()
                           if id(p) in params and p.grad is not None})


def run(batch_size: int, accumulate: int, steps: int, gan: bool) -> tuple[TokenizerModule, GradientRecorder]:
    torch.manual_seed(0)
    loss = LossWeights(l1=1.0, l2=1.0, lpips=0.1, gan=0.5 if gan else 0.0, gan_start_step=0, adaptive_weight=False)
    module = TokenizerModule(
        preset="demo_tiny", loss=loss, lpips_random_init=True,
        optim=Optimization(lr=1e-3, warmup_steps=0, ema_decay=0.9, accumulate_grad_batches=accumulate),
        discriminator={"channels": 8, "num_layers": 2, "norm_groups": 4} if gan else None,
    )
    recorder = GradientRecorder()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[recorder], deterministic=True)
    data = DataLoader([{"image": image} for image in IMAGES], batch_size=batch_size, shuffle=False)
    trainer.fit(module, data)
    assert module.step_count == trainer.global_step == steps
    return module, recorder


@pytest.mark.parametrize("gan", [False, True], ids=["tokenizer", "with_discriminator"])
def test_four_micro_batches_of_8_give_the_gradients_of_one_batch_of_32(gan: bool) -> None:
    whole, whole_grads = run(batch_size=32, accumulate=1, steps=2, gan=gan)
    micro, micro_grads = run(batch_size=8, accumulate=4, steps=2, gan=gan)
    assert len(whole_grads.grads) == len(micro_grads.grads) == (4 if gan else 2)  # one per optimizer step
    for expected, actual in zip(whole_grads.grads, micro_grads.grads):
        assert expected.keys() == actual.keys() and expected
        for name in expected:
            torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    for (name, a), b in zip(whole.state_dict().items(), micro.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_accumulation_is_not_the_mean_of_one_micro_batch() -> None:
    """The oracle can fail: one batch of 8 does not give the gradients of the batch of 32."""
    _, whole_grads = run(batch_size=32, accumulate=1, steps=1, gan=False)
    _, single_grads = run(batch_size=8, accumulate=1, steps=1, gan=False)
    name = "tokenizer.decoder.head.weight"
    assert not torch.allclose(whole_grads.grads[0][name], single_grads.grads[0][name], rtol=1e-3)


def test_bad_accumulation_setting_is_one_sentence() -> None:
    with pytest.raises(ValueError, match="optim.accumulate_grad_batches must be an integer >= 1, got 0"):
        Optimization(accumulate_grad_batches=0)


def test_periodic_callbacks_run_once_per_step_not_per_micro_batch(tmp_path) -> None:
    from vartok.metrics.callbacks import EvaluationCallback
    from vartok.training.callbacks import ReconstructionGrid

    evaluation = EvaluationCallback(every_n_steps=1, num_images=4, metrics=["psnr"], batch_size=4,
                                    cache_reference=False, at_fit_end=False)
    grid = ReconstructionGrid(every_n_steps=1, num_images=2)
    seen: list[tuple[str, int, int]] = []
    evaluate, fixed_batch = evaluation.evaluate, grid._fixed_batch

    def spy_evaluate(trainer, module):
        seen.append(("eval", module.step_count, module.micro_step))
        return evaluate(trainer, module)

    def spy_grid(trainer):  # the grid's first call after its step check
        seen.append(("grid", trainer.lightning_module.step_count, trainer.lightning_module.micro_step))
        return fixed_batch(trainer)

    evaluation.evaluate, grid._fixed_batch = spy_evaluate, spy_grid
    module = TokenizerModule(preset="demo_tiny", optim=Optimization(lr=1e-3, warmup_steps=0, accumulate_grad_batches=2))
    data = DataLoader([{"image": image} for image in IMAGES[:24]], batch_size=4, shuffle=False)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=3, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=1, callbacks=[evaluation, grid])
    trainer.fit(module, data, data)
    assert [step for name, step, micro in seen if name == "eval"] == [1, 2, 3]
    assert [step for name, step, micro in seen if name == "grid"] == [1, 2, 3]
    assert all(micro == 0 for _, _, micro in seen)
