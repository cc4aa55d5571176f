"""The adversarial part of training: the generator's term in the tokenizer's loss and the discriminator's loss
with its logged terms (closed forms in `vartok.models.losses`, docs/definitions.md §5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vartok.models.discriminator import frozen
from vartok.models.losses import LeCam, adaptive_weight, discriminator_loss, generator_loss
from vartok.training.settings import LossWeights


def generator_term(discriminator: nn.Module, recon: Tensor, reconstruction: Tensor, weights: LossWeights,
                   last_layer: Tensor) -> tuple[Tensor, Tensor]:
    """The generator's adversarial loss on `recon` (B, 3, H, W) and its weight: loss.gan, times the adaptive
    ratio ‖∇ reconstruction‖ / ‖∇ gan‖ at `last_layer` when loss.adaptive_weight."""
    with frozen(discriminator):  # the generator's loss must not train the discriminator
        gan = generator_loss(discriminator(recon).float(), weights.gan_loss)
    weight = torch.tensor(weights.gan, device=recon.device)
    if weights.adaptive_weight:
        weight = weight * adaptive_weight(reconstruction, gan, last_layer, weights.adaptive_weight_max)
    return gan, weight


def discriminator_terms(discriminator: nn.Module, lecam: LeCam | None, images: Tensor, recon: Tensor,
                        weights: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """The discriminator's loss on real `images` and detached `recon` ((B, 3, H, W) in [0, 1]), LeCam included
    when there is one, and its logged (detached) terms."""
    logits_real = discriminator(images).float()
    logits_fake = discriminator(recon.detach()).float()
    loss = discriminator_loss(logits_real, logits_fake, weights.gan_loss)
    terms = {"disc": loss.detach(), "logits_real": logits_real.detach().mean(),
             "logits_fake": logits_fake.detach().mean()}
    if lecam is not None:
        penalty = lecam(logits_real, logits_fake)
        loss = loss + weights.lecam * penalty
        terms["lecam"] = penalty.detach()
    return loss, terms
