"""The tokenizer's training loss: pixel and perceptual reconstruction terms, the quantizer's own losses and,
once the GAN has started, the adversarial term (docs/definitions.md §5), each with its weight."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vartok.models.losses import LPIPSLoss
from vartok.nets.weights import WeightsNotFoundError
from vartok.tokenizers.ramp import Ramp
from vartok.tokenizers.tokenizer import TokenizerOutput
from vartok.training.adversary import generator_term
from vartok.training.settings import LossWeights


def pixel_losses(recon: Tensor, target: Tensor, weights: LossWeights) -> dict[str, Tensor]:
    """Unweighted pixel losses that have a positive weight; recon/target (B, 3, H, W) in [0, 1]."""
    losses = {}
    if weights.l1 > 0:
        losses["l1"] = (recon - target).abs().mean()
    if weights.l2 > 0:
        losses["l2"] = (recon - target).pow(2).mean()
    return losses


class Objective:
    """Weighted sum of the loss terms of one training step.

    Not an nn.Module: the frozen LPIPS network it builds is never part of the training module, so never in a
    checkpoint, the EMA, DDP or the export.

    Args:
        weights: the loss weights.
        lpips_weights: VGG16 weights file of the LPIPS loss (None = the torch hub cache).
        lpips_random_init: LPIPS with random weights, nothing loaded (tests and smoke runs only).
    """

    def __init__(self, weights: LossWeights, lpips_weights: str | None = None,
                 lpips_random_init: bool = False) -> None:
        self.weights = weights
        start = weights.entropy if weights.entropy_start is None else weights.entropy_start
        self.entropy_weight = Ramp(start, weights.entropy, 0, weights.entropy_decay_steps)
        self.lpips_weights, self.lpips_random_init = lpips_weights, lpips_random_init
        self._lpips: nn.Module | None = None

    def perceptual(self, device: torch.device) -> nn.Module | None:
        """The frozen LPIPS loss on `device` (built on first use); None when loss.lpips is 0."""
        if self.weights.lpips == 0:
            return None
        if self._lpips is None:
            try:
                self._lpips = LPIPSLoss(vgg_weights=self.lpips_weights, random_init=self.lpips_random_init)
            except WeightsNotFoundError as err:
                raise WeightsNotFoundError(f"LPIPS loss (loss.lpips > 0): {err} In a training config the "
                                           "path is model.lpips_weights.") from None
        return self._lpips.to(device)

    def __call__(self, images: Tensor, out: TokenizerOutput, step: int, discriminator: nn.Module | None,
                 last_layer: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss and its unweighted terms (plus "gan_g" and "gan_weight" in the GAN phase).

        Args:
            images, out.recon: (B, 3, H, W) in [0, 1].
            step: the training step (entropy ramp, GAN start).
            discriminator: the discriminator, or None without a GAN.
            last_layer: the decoder's last weight (the adaptive GAN weight's gradient ratio).
        """
        w = self.weights
        recon = out.recon.float()
        terms = pixel_losses(recon, images, w)
        weights = {"l1": w.l1, "l2": w.l2, "lpips": w.lpips, "commit": w.commit, "codebook": w.codebook,
                   "entropy": self.entropy_weight(step)}
        perceptual = self.perceptual(recon.device)
        if perceptual is not None:
            terms["lpips"] = perceptual(recon, images)
        reconstruction = sum(weights[name] * value for name, value in terms.items())  # pixel + perceptual
        terms.update({name: value for name, value in out.quantizer.losses.items() if name in weights})
        total = sum(weights[name] * value for name, value in terms.items())
        if discriminator is not None and w.gan_active(step):
            gan, weight = generator_term(discriminator, recon, reconstruction, w, last_layer)
            total = total + weight * gan
            terms.update(gan_g=gan, gan_weight=weight)
        return total, terms
