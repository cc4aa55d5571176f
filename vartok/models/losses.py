"""Training losses beyond the pixel losses (docs/definitions.md §5): LPIPS, GAN losses, LeCam, adaptive weight.

- LPIPS: `LPIPSLoss` (frozen VGG through the `lpips` package, dropout off, eval mode forced, weights
  resolved from an explicit path or the torch hub cache; see `vartok.nets.lpips`).
- GAN: the discriminator's logits are compared with closed forms,
      hinge            D: 0.5·(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))     G: −mean D(x̂)
      non_saturating   D: 0.5·(mean softplus(−D(x)) + mean softplus(D(x̂)))    G: mean softplus(−D(x̂))
  (softplus(−l) = −log σ(l): the binary cross-entropy of the logits).
- LeCam (Tseng et al. 2021): R = mean relu(D(x) − α_fake)² + mean relu(α_real − D(x̂))², with α the EMAs of
  the discriminator's mean logits on real and on reconstructed images (the official code's form).
- Adaptive weight (Esser et al. 2021): ‖∇_W L_rec‖ / (‖∇_W L_G‖ + ε) at the decoder's last layer W, clamped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vartok.nets.lpips import LPIPS, LPIPSLoss

GAN_LOSSES = ("hinge", "non_saturating")

__all__ = ["GAN_LOSSES", "LPIPS", "LPIPSLoss", "LeCam", "adaptive_weight", "check_gan_loss",
           "discriminator_loss", "generator_loss"]


def check_gan_loss(kind: str) -> str:
    """`kind` if it is one of GAN_LOSSES, else one clear ValueError."""
    if kind not in GAN_LOSSES:
        raise ValueError(f"loss.gan_loss must be one of {', '.join(GAN_LOSSES)}, got {kind!r}")
    return kind


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, kind: str = "hinge") -> Tensor:
    """The discriminator's loss (scalar).

    Args:
        logits_real: D's logits on real images, any shape (e.g. (B, 1, h, w) patch logits).
        logits_fake: D's logits on reconstructions (detached from the generator), any shape.
        kind: "hinge" or "non_saturating".
    """
    check_gan_loss(kind)
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: Tensor, kind: str = "hinge") -> Tensor:
    """The generator's (tokenizer's) adversarial loss (scalar) from D's logits on its reconstructions."""
    check_gan_loss(kind)
    if kind == "hinge":
        return -logits_fake.mean()
    return F.softplus(-logits_fake).mean()


def _grad_norm(loss: Tensor, weight: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(loss, weight, retain_graph=True)
    return grad.detach().float().norm()


def adaptive_weight(
    reconstruction_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4,
    eps: float = 1e-4,
) -> Tensor:
    """clamp(‖∇_W rec‖ / (‖∇_W gan‖ + eps), 0, max_weight), detached; W = the decoder's last layer weight.

    Both graphs are kept (retain_graph) so the caller can still backpropagate the total loss. The gradients
    are taken with `torch.autograd.grad`, so nothing is accumulated into `.grad` (and no DDP hook fires).

    Args:
        reconstruction_loss: scalar, the weighted pixel (+ perceptual) loss.
        gan_loss: scalar, the generator's adversarial loss.
        last_layer: the weight tensor of the decoder's last layer (e.g. `decoder.last_layer`).
        max_weight: upper clamp (> 0).
        eps: keeps the ratio finite when the GAN gradient vanishes.
    """
    ratio = _grad_norm(reconstruction_loss, last_layer) / (_grad_norm(gan_loss, last_layer) + eps)
    return ratio.clamp(0.0, max_weight).detach()


class LeCam(nn.Module):
    """LeCam regulariser of the discriminator, with EMAs of its mean logits as buffers (in checkpoints).

    Under torch.distributed the batch means are averaged over ranks before the EMA update, so every rank
    holds the same anchors.

    Args:
        decay: EMA decay in (0, 1).
    """

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"loss.lecam_decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.register_buffer("real_ema", torch.zeros(()))
        self.register_buffer("fake_ema", torch.zeros(()))

    def penalty(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """mean relu(D(x) − α_fake)² + mean relu(α_real − D(x̂))² with the current anchors (no update)."""
        real_term = F.relu(logits_real - self.fake_ema).pow(2).mean()
        fake_term = F.relu(self.real_ema - logits_fake).pow(2).mean()
        return real_term + fake_term

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        """Move the anchors towards this step's mean logits (averaged over ranks)."""
        means = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(means)
            means /= torch.distributed.get_world_size()
        self.real_ema.lerp_(means[0].to(self.real_ema.dtype), 1.0 - self.decay)
        self.fake_ema.lerp_(means[1].to(self.fake_ema.dtype), 1.0 - self.decay)

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """The penalty with the anchors of the previous steps, then the anchors are updated."""
        penalty = self.penalty(logits_real, logits_fake)
        self.update(logits_real, logits_fake)
        return penalty
