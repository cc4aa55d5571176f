"""Optimisation of the training module: AdamW parameter groups, the warmup-cosine schedule, and one optimizer
update spread over the micro-batches of a gradient accumulation (with the partial sums a checkpoint written
inside an accumulation carries)."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from vartok.training.settings import Optimization

NO_DECAY_NAMES = ("latent_tokens", "pos_embed", "token_pos", "mask_token", "drop_token", "patch_to_latent",
                  "latent_to_patch", "class_embedding", "positional_embedding", "latent_token_positional_embedding",
                  "embed")  # the last: vq's learnable codebook
# Codebooks (TiTok's quantizer and proxy codes) never decay: decay would pull every code towards 0.
NO_DECAY_SUFFIXES = ("quantizer.embedding.weight", "proxy_codebook.weight")


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                     linear_path_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, latent/mask/class tokens, position embeddings and
    codebooks; the global
    linear path (if any) in its own group at lr * linear_path_lr_scale without decay (needs `lr`)."""
    decay, no_decay, linear_path = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if ".linear_path." in f".{name}":
            linear_path.append(param)
        elif param.ndim < 2 or leaf in NO_DECAY_NAMES or name.endswith(NO_DECAY_SUFFIXES) or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if linear_path:
        if lr is None:
            raise ValueError("parameter_groups: a model with a global linear path needs lr")
        groups.append({"params": linear_path, "weight_decay": 0.0, "lr": lr * linear_path_lr_scale})
    return groups


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LambdaLR factor: linear warmup, then cosine from 1 to min_ratio at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizers(opt: Optimization, tokenizer: nn.Module, discriminator: nn.Module | None, gan_start_step: int,
                     total_steps: int) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
    """AdamW and its warmup-cosine schedule (stepped every training step) for the tokenizer, and for the
    discriminator when there is one: its schedule advances only when it steps, from gan_start_step to the end."""
    optimizer = torch.optim.AdamW(parameter_groups(tokenizer, opt.weight_decay, opt.lr, opt.linear_path_lr_scale),
                                  lr=opt.lr, betas=tuple(opt.betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(opt.warmup_steps, total_steps,
                                                                          opt.min_lr_ratio))
    if discriminator is None:
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]
    disc = opt.discriminator()
    disc_optimizer = torch.optim.AdamW(parameter_groups(discriminator, disc["weight_decay"]), lr=disc["lr"],
                                       betas=tuple(disc["betas"]))
    disc_total = max(1, total_steps - gan_start_step)
    disc_schedule = torch.optim.lr_scheduler.LambdaLR(
        disc_optimizer, warmup_cosine(opt.disc_warmup_steps, disc_total, opt.min_lr_ratio))
    return [optimizer, disc_optimizer], [{"scheduler": schedule, "interval": "step"},
                                         {"scheduler": disc_schedule, "interval": "step"}]


def total_steps(trainer: pl.Trainer, accumulate: int) -> int:
    """Training (optimizer) steps of the fit: max_steps, or Lightning's estimate, which counts micro-batches."""
    total = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches) // accumulate
    return max(1, int(total))


def gradient_sync(trainer: pl.Trainer, sync: bool) -> AbstractContextManager:
    """A backward pass that all-reduces the gradients over ranks (`sync`), or one that only accumulates them
    locally (DDP's no_sync: the micro-steps before the last of an accumulation)."""
    block = getattr(trainer.strategy, "block_backward_sync", None)
    return nullcontext() if sync or block is None else block()


def accumulate_update(module: pl.LightningModule, optimizer: Any, schedule: Any, loss: Tensor, micro_step: int,
                      accumulate: int, grad_clip: float, counted: bool) -> None:
    """One micro-batch of an optimizer update: zero the gradients on the first micro-batch, add loss/accumulate
    to them, and on the last clip, step and advance the schedule.

    Args:
        module: the LightningModule (its manual backward, clipping and trainer).
        optimizer: the LightningOptimizer; schedule: its LR scheduler.
        micro_step: index of this micro-batch in the accumulation, in [0, accumulate).
        counted: step through LightningOptimizer.step, which counts a step in trainer.global_step (so in
            max_steps); False steps through the strategy (precision plugin, gradient scaler) uncounted — the
            discriminator's, so that one training step is one counted step.
    """
    first, last = micro_step == 0, micro_step == accumulate - 1
    if first:
        optimizer.zero_grad(set_to_none=True)
    with gradient_sync(module.trainer, last):
        module.manual_backward(loss / accumulate)
    if not last:
        return
    if grad_clip > 0:
        module.clip_gradients(optimizer, gradient_clip_val=grad_clip, gradient_clip_algorithm="norm")
    if counted:
        optimizer.step()
    else:
        module.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)
    schedule.step()


def partial_gradients(model: nn.Module) -> dict[str, Tensor]:
    """The gradients summed so far (CPU copies), for a checkpoint written inside an accumulation."""
    return {name: param.grad.detach().cpu().clone() for name, param in model.named_parameters()
            if param.grad is not None}


def restore_gradients(model: nn.Module, grads: dict[str, Tensor]) -> None:
    """Put saved partial gradients back on the parameters (their device and dtype)."""
    for name, param in model.named_parameters():
        if name in grads:
            param.grad = grads[name].to(device=param.device, dtype=param.dtype)
