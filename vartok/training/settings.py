"""The training module's settings: loss weights and optimisation, validated where they are given."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vartok.models.losses import check_gan_loss


@dataclass
class LossWeights:
    """Args:
    l1, l2: pixel losses on [0, 1] images.
    commit, entropy, codebook: weights of the quantizer's UNWEIGHTED losses (docs/definitions.md §1); a loss the
        quantizer does not produce is ignored.
    entropy_start, entropy_decay_steps: the entropy weight starts at `entropy_start` and decays linearly
        to `entropy` over the first steps (None = constant).
    lpips: weight of the LPIPS-VGG perceptual loss (0 = off; frozen network, docs/definitions.md §5).
    gan: weight of the generator's adversarial loss (0 = no discriminator at all).
    gan_start_step: training step at which the discriminator starts (before it: no discriminator forward,
        update or adversarial term).
    gan_loss: "hinge" or "non_saturating" (closed forms in `vartok.models.losses`).
    adaptive_weight: multiply `gan` by ‖∇ rec‖ / ‖∇ gan‖ at the decoder's last layer (VQGAN), clamped to
        `adaptive_weight_max` (> 0).
    lecam, lecam_decay: LeCam regularisation of the discriminator (0 = off) and its EMA decay in (0, 1).
    The GAN settings other than `gan` are ignored when `gan` is 0.
    """

    l1: float = 0.0
    l2: float = 1.0
    commit: float = 0.25
    entropy: float = 0.05
    codebook: float = 1.0
    entropy_start: float | None = None
    entropy_decay_steps: int = 0
    lpips: float = 0.0
    gan: float = 0.0
    gan_start_step: int = 0
    gan_loss: str = "hinge"
    adaptive_weight: bool = False
    adaptive_weight_max: float = 1e4
    lecam: float = 0.0
    lecam_decay: float = 0.999

    def __post_init__(self) -> None:
        for name in ("l1", "l2", "commit", "entropy", "codebook", "lpips", "gan", "lecam"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value!r}")
        if self.l1 == 0 and self.l2 == 0:
            raise ValueError("loss.l1 and loss.l2 are both 0: at least one pixel loss must be positive")
        if self.entropy_start is not None and not (math.isfinite(self.entropy_start) and self.entropy_start >= 0):
            raise ValueError(f"loss.entropy_start must be a finite number >= 0, got {self.entropy_start!r}")
        if self.entropy_decay_steps < 0:
            raise ValueError(f"loss.entropy_decay_steps must be >= 0, got {self.entropy_decay_steps!r}")
        start = self.gan_start_step
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"loss.gan_start_step must be an integer >= 0, got {self.gan_start_step!r}")
        check_gan_loss(self.gan_loss)
        if not (math.isfinite(self.adaptive_weight_max) and self.adaptive_weight_max > 0):
            raise ValueError(
                f"loss.adaptive_weight_max must be a finite number > 0, got {self.adaptive_weight_max!r}"
            )
        if not 0 < self.lecam_decay < 1:
            raise ValueError(f"loss.lecam_decay must be in (0, 1), got {self.lecam_decay!r}")

    def gan_active(self, step: int) -> bool:
        """Whether the discriminator takes part in training step `step`."""
        return self.gan > 0 and step >= self.gan_start_step


@dataclass
class Optimization:
    """Args:
    lr: peak learning rate of AdamW; betas; weight_decay (never on norms, biases, tokens, embeddings).
    warmup_steps: linear warmup from 0; then cosine to lr * min_lr_ratio at the trainer's max_steps.
    grad_clip: max gradient norm (0 = off).
    accumulate_grad_batches: micro-batches whose gradients are summed into one optimizer step (the global
        batch is data.batch_size x devices x num_nodes x this). Training steps, schedules, EMA, checkpoints and
        the trainer's max_steps count optimizer steps; the trainer's own `accumulate_grad_batches` does not
        apply to vartok's manual optimization. Under DDP the micro-steps before the last skip the gradient
        all-reduce. The adaptive GAN weight and LeCam's running means are computed per micro-batch.
    ema_decay: decay of the tokenizer's EMA (used for validation and export).
    linear_path_lr_scale: learning-rate factor of the global linear path (tokenizer.global_linear), no weight
        decay: its PCA weights are small (down to ~1e-3), and steps of the full lr would erase them.
    disc_lr, disc_betas, disc_weight_decay, disc_grad_clip: the discriminator's AdamW settings (None = the
        tokenizer's value). Its schedule starts at loss.gan_start_step: linear warmup over
        `disc_warmup_steps`, then cosine to disc_lr * min_lr_ratio at the trainer's max_steps.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulate_grad_batches: int = 1
    ema_decay: float = 0.999
    linear_path_lr_scale: float = 0.01
    disc_lr: float | None = None
    disc_betas: tuple[float, float] | None = None
    disc_weight_decay: float | None = None
    disc_grad_clip: float | None = None
    disc_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError(
                f"optim.weight_decay, warmup_steps and grad_clip must be >= 0, got "
                f"{self.weight_decay!r}, {self.warmup_steps!r}, {self.grad_clip!r}"
            )
        steps = self.accumulate_grad_batches
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"optim.accumulate_grad_batches must be an integer >= 1, got {steps!r}")
        if not self.linear_path_lr_scale > 0:
            raise ValueError(f"optim.linear_path_lr_scale must be > 0, got {self.linear_path_lr_scale!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.disc_lr is not None and not self.disc_lr > 0:
            raise ValueError(f"optim.disc_lr must be > 0 (or null = optim.lr), got {self.disc_lr!r}")
        for name in ("disc_weight_decay", "disc_grad_clip", "disc_warmup_steps"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"optim.{name} must be >= 0, got {value!r}")
        for name in ("betas", "disc_betas"):
            betas = getattr(self, name)
            if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
                raise ValueError(f"optim.{name} must be two numbers in [0, 1), got {betas!r}")

    def discriminator(self) -> dict[str, Any]:
        """The discriminator's lr, betas, weight_decay and grad_clip (inheriting unset ones)."""
        pairs = {"lr": (self.disc_lr, self.lr), "betas": (self.disc_betas, self.betas),
                 "weight_decay": (self.disc_weight_decay, self.weight_decay),
                 "grad_clip": (self.disc_grad_clip, self.grad_clip)}
        return {name: default if own is None else own for name, (own, default) in pairs.items()}
