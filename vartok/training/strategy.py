"""Which Lightning strategies and trainer settings the TokenizerModule can train under, checked before any work.

Supported: one device, and DDP (`--trainer.strategy ddp`, started by Lightning, torchrun or SLURM). Not
supported: sharded strategies (FSDP, DeepSpeed, model parallel): the EMA copy of the tokenizer is a submodule
of the training module, so they would wrap and shard it with the trained weights, and the manual optimization
(tokenizer and discriminator steps, accumulation) is written for whole parameters. The largest preset
(titok_l_256, about 0.6 B parameters: weights, gradients and AdamW state about 10 GB in fp32) fits on one GPU,
so DDP is enough for every preset vartok ships.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

SUPPORTED = "one device or DDP (--trainer.strategy ddp)"


def check_strategy(trainer: pl.Trainer) -> None:
    """Refuse, in one sentence, a strategy the module cannot train under (before the first step)."""
    strategy = trainer.strategy
    # DDPStrategy's subclasses (DeepSpeed, XLA, HPU) are other strategies: only plain DDP is tested.
    if not (isinstance(strategy, SingleDeviceStrategy) or type(strategy) is DDPStrategy):
        raise ValueError(
            f"trainer.strategy {type(strategy).__name__} is not supported: vartok trains on {SUPPORTED}; sharded "
            "strategies would also shard the EMA copy of the tokenizer that lives inside the training module"
        )


def check_accumulation(trainer: pl.Trainer) -> None:
    """The trainer's own accumulation does not apply to the module's manual optimization."""
    steps = trainer.accumulate_grad_batches
    if steps != 1:
        raise ValueError(
            f"trainer.accumulate_grad_batches={steps} does not apply to vartok's manual optimization; set "
            f"model.optim.accumulate_grad_batches={steps} (--model.optim.accumulate_grad_batches {steps}) and "
            "leave the trainer's at 1"
        )


def check_ddp_with_discriminator(trainer: pl.Trainer, gan_start_step: int) -> None:
    """A discriminator under DDP needs `find_unused_parameters`: each step has two backward passes (tokenizer,
    discriminator), each leaving the other's parameters without a gradient, and before `gan_start_step` the
    discriminator takes part in no loss at all."""
    model = trainer.model
    if isinstance(model, nn.parallel.DistributedDataParallel) and not model.find_unused_parameters:
        raise ValueError(
            "model.loss.gan > 0 trains a discriminator (two backward passes per step, unused before "
            f"loss.gan_start_step={gan_start_step}); under DDP use --trainer.strategy ddp_find_unused_parameters_true"
        )
