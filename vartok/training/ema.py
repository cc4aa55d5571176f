"""EMA of the tokenizer's weights only (never the discriminator or loss networks)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """An exponential moving average copy of `model` (frozen; a submodule, so checkpoints carry it).

    Args:
        model: the module to average (the tokenizer).
        decay: the final decay; early steps use min(decay, (1 + step) / (10 + step)) so that short runs
            are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> EMA:  # the average is never in training mode
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
