"""Every tensor a training or validation step creates lives on the device of its inputs.

A CPU machine cannot see a CPU tensor meeting a CUDA tensor, so the check inverts the roles: the module and the
batch stay on the CPU while the steps run with `meta` as the default device. Any tensor the step creates without
naming a device (`torch.arange(k)`, `torch.tensor(...)`, a draw from a CPU generator) is then born on `meta`, and
the first operation that mixes it with the model's CPU tensors fails with "Tensor on device meta is not on the
expected device cpu" — the same code on a GPU would put that tensor on the CPU beside CUDA tensors. The optimizer
steps run with the CPU as default device (torch's optimizers keep their step counters on the default device by
design), and so do Lightning's logging calls (its result collection builds its accumulators on the default
device). Real `TokenizerModule` fits of a few steps, per quantizer, length-policy mode and granularity, with
latent perturbation, the GAN and LPIPS losses, EMA and validation.
"""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from vartok.tokenizers import LengthPolicy
from vartok.tokenizers.perturb import PerturbationConfig
from vartok.training.module import TokenizerModule
from vartok.training.objective import Objective
from vartok.training.settings import LossWeights, Optimization

QUANTIZERS = {
    "fsq": {"levels": [5, 5, 5]},
    "vq": {"codebook_size": 32, "codebook_dim": 4},
    "vq_learnable": {"codebook_size": 32, "codebook_dim": 4, "ema": False},
    "lfq": {"bits": 6},
    "bsq": {"bits": 6},
    "gq": {"bits": 8, "groups": 2},
}
POLICIES = {
    "none": LengthPolicy(),
    "tail_drop_batch": LengthPolicy(mode="tail_drop", granularity="batch"),
    "tail_drop_sample": LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.25),
    "nested_dropout": LengthPolicy(mode="nested_dropout", granularity="sample", distribution="uniform"),
}


def loader() -> DataLoader:
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return DataLoader([{"image": image} for image in images], batch_size=4, shuffle=False)


def under_default_device(function, device: str):
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with torch.device(device):
            return function(*args, **kwargs)

    return wrapped


class DefaultDeviceMeta(pl.Callback):
    """Runs the module's training and validation steps with `meta` as the default device (optimizer steps on
    the CPU), from the start of fit on."""

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        module.training_step = under_default_device(module.training_step, "meta")
        module.validation_step = under_default_device(module.validation_step, "meta")
        strategy = trainer.strategy
        strategy.optimizer_step = under_default_device(strategy.optimizer_step, "cpu")
        # Lightning's result collection builds its accumulators on the default device (its own concern).
        module.log = under_default_device(module.log, "cpu")
        module.log_dict = under_default_device(module.log_dict, "cpu")


def fit(module: TokenizerModule, steps: int = 3) -> TokenizerModule:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         val_check_interval=steps, limit_val_batches=1, callbacks=[DefaultDeviceMeta()])
    trainer.fit(module, loader(), loader())
    assert module.step_count == steps
    return module


def module_for(quantizer: str, policy: LengthPolicy, **kwargs) -> TokenizerModule:
    name = "vq" if quantizer.startswith("vq") else quantizer
    entropy = 0.1 if name in ("lfq", "bsq", "gq") else 0.0
    return TokenizerModule(
        preset="demo_tiny", tokenizer={"quantizer": name, "quantizer_args": QUANTIZERS[quantizer]},
        length_policy=policy, optim=Optimization(lr=1e-3, warmup_steps=1, ema_decay=0.9),
        loss=kwargs.pop("loss", LossWeights(l2=1.0, codebook=1.0, entropy=entropy)), **kwargs,
    )


def test_the_check_catches_a_tensor_created_without_a_device() -> None:
    """The oracle itself: a step that builds a mask with a bare `torch.arange` fails under the check."""
    module = module_for("fsq", POLICIES["none"])
    original = Objective.__call__

    def leaky(self, *args):
        total, terms = original(self, *args)
        return total + (torch.arange(4) * 0).sum(), terms

    with mock.patch.object(Objective, "__call__", leaky), pytest.raises(RuntimeError, match="meta"):
        fit(module, steps=1)


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_every_quantizer_with_per_sample_tail_drop_and_perturbation(quantizer: str) -> None:
    fit(module_for(quantizer, POLICIES["tail_drop_sample"], perturbation=PerturbationConfig(alpha=0.5, delta=3)))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_length_policy_mode_and_granularity(policy: str) -> None:
    fit(module_for("fsq", POLICIES[policy]))


def test_nested_dropout_with_perturbation_on_grouped_codes() -> None:
    fit(module_for("gq", POLICIES["nested_dropout"], perturbation=PerturbationConfig(alpha=0.3, delta=3)))


def test_gan_lpips_lecam_and_adaptive_weight() -> None:
    loss = LossWeights(l1=1.0, l2=1.0, lpips=0.1, gan=0.5, gan_start_step=1, adaptive_weight=True, lecam=0.01)
    fit(module_for("vq", POLICIES["tail_drop_sample"], loss=loss, lpips_random_init=True,
                   discriminator={"channels": 8, "num_layers": 2, "norm_groups": 4}), steps=3)


def test_evaluation_callback_with_psnr_ssim_and_codebook_statistics(tmp_path, monkeypatch) -> None:
    """The periodic evaluation (its metric states and codebook statistics) on the module's device: each
    batch's step and the results run with `meta` as the default device (the metric states are built on the
    default device and moved, and DataLoader collation uses the default device: those two do not). rFID is left
    out: torch-fidelity's Inception makes 0-dim CPU scalars, which CUDA accepts beside its tensors and meta
    does not."""
    from vartok.metrics.callbacks import EvaluationCallback
    from vartok.metrics.evaluation import Evaluation

    for name in ("step", "results"):
        monkeypatch.setattr(Evaluation, name, under_default_device(getattr(Evaluation, name), "meta"))
    callback = EvaluationCallback(every_n_steps=2, num_images=8, lengths=[1, 4], metrics=["psnr", "ssim"],
                                  batch_size=4, cache_reference=False, at_fit_end=False)
    module = module_for("vq", POLICIES["tail_drop_sample"])
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1, callbacks=[callback])
    trainer.fit(module, loader(), loader())
    report = callback.last_report
    assert report is not None and set(report["lengths"]) == {"1", "4"} and report["codebook"]
