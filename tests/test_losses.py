"""Training losses against closed forms and hand computations: LPIPS frozen inside a training module,
hinge / non-saturating GAN losses, LeCam, the adaptive weight, the PatchGAN geometry, and bad input."""

from __future__ import annotations

import math

import lpips
import numpy as np
import pytest
import torch
from torch import nn

from vartok.models.discriminator import PatchDiscriminator, build_discriminator
from vartok.models.losses import LeCam, LPIPSLoss, adaptive_weight, discriminator_loss, generator_loss
from vartok.nets.weights import WeightsNotFoundError
from vartok.training.settings import LossWeights, Optimization

REAL = [2.0, 0.5, -1.0, 0.25]
FAKE = [-2.0, 0.3, 1.5, -0.75]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------- LPIPS as a training loss
class Parent(nn.Module):
    """A training module that holds the loss as a child (the worst case: parent.train() recurses into it)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 3, 1)
        self.lpips = LPIPSLoss(random_init=True, seed=1)


@pytest.fixture(scope="module")
def parent() -> Parent:
    return Parent()


def test_lpips_is_frozen_and_deterministic_in_a_training_module(parent: Parent) -> None:
    parent.train()
    assert parent.layer.training and not any(m.training for m in parent.lpips.modules())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    first, second = parent.lpips(x, y), parent.lpips(x, y)
    assert first.item() == second.item()  # no dropout: bit-identical
    # Oracle: the lpips package itself, same weights, eval mode (its dropout is then identity).
    reference = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    reference.load_state_dict(parent.lpips.net.state_dict())
    assert first.item() == pytest.approx(reference.eval()(x, y, normalize=True).mean().item(), rel=1e-5)


def test_lpips_gradient_reaches_the_input_only(parent: Parent) -> None:
    parent.train()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    recon = parent.layer(x)
    parent.lpips(recon, y).backward()
    assert all(p.grad is None and not p.requires_grad for p in parent.lpips.parameters())
    assert parent.layer.weight.grad is not None and parent.layer.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in parent.parameters() if p.requires_grad) == 12  # only the 1×1 conv


def test_missing_vgg_weights_name_file_folder_and_flag(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(WeightsNotFoundError) as info:
        LPIPSLoss()
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--lpips-weights" in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        LPIPSLoss(vgg_weights=tmp_path / "nope.pth")


# ---------------------------------------------------------------- GAN losses: closed forms
def test_hinge_losses_equal_closed_forms() -> None:
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    d_expected = 0.5 * (_mean([max(0.0, 1 - r) for r in REAL]) + _mean([max(0.0, 1 + f) for f in FAKE]))
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(d_expected, rel=1e-6)
    assert generator_loss(fake, "hinge").item() == pytest.approx(-_mean(FAKE), rel=1e-6)


def test_non_saturating_losses_equal_closed_forms() -> None:
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    # Binary cross-entropy with logits: real → label 1, fake → label 0; generator: fake → label 1.
    d_expected = 0.5 * (_mean([-math.log(1 / (1 + math.exp(-r))) for r in REAL])
                        + _mean([-math.log(1 - 1 / (1 + math.exp(-f))) for f in FAKE]))
    g_expected = _mean([_softplus(-f) for f in FAKE])
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(d_expected, rel=1e-6)
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(g_expected, rel=1e-6)


def test_losses_accept_patch_logits_of_any_shape() -> None:
    real = torch.tensor(REAL).reshape(2, 1, 1, 2)
    fake = torch.tensor(FAKE).reshape(2, 1, 2, 1)
    assert discriminator_loss(real, fake).item() == pytest.approx(
        discriminator_loss(torch.tensor(REAL), torch.tensor(FAKE)).item()
    )


# ---------------------------------------------------------------- LeCam
def test_lecam_penalty_uses_previous_anchors_then_updates() -> None:
    lecam = LeCam(decay=0.9)
    lecam.real_ema.fill_(0.5)
    lecam.fake_ema.fill_(-0.2)
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    expected = (_mean([max(0.0, r - (-0.2)) ** 2 for r in REAL])
                + _mean([max(0.0, 0.5 - f) ** 2 for f in FAKE]))
    assert lecam(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert lecam.real_ema.item() == pytest.approx(0.9 * 0.5 + 0.1 * _mean(REAL), rel=1e-6)
    assert lecam.fake_ema.item() == pytest.approx(0.9 * -0.2 + 0.1 * _mean(FAKE), rel=1e-6)
    assert set(dict(lecam.named_buffers())) == {"real_ema", "fake_ema"}  # saved in checkpoints


# ---------------------------------------------------------------- adaptive weight
def test_adaptive_weight_equals_hand_computed_gradient_norm_ratio() -> None:
    rng = np.random.default_rng(0)
    w_np, x_np, t_np, a_np = (rng.normal(size=s) for s in ((2, 3), (3,), (2,), (2,)))
    weight = torch.tensor(w_np, requires_grad=True)
    out = weight @ torch.tensor(x_np)
    rec = (out - torch.tensor(t_np)).pow(2).sum()
    gan = (torch.tensor(a_np) * out).sum()
    # d/dW Σ(Wx − t)² = 2 (Wx − t) xᵀ ;  d/dW Σ a·(Wx) = a xᵀ
    g_rec = 2 * np.outer(w_np @ x_np - t_np, x_np)
    g_gan = np.outer(a_np, x_np)
    expected = np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4)
    got = adaptive_weight(rec, gan, weight)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert not got.requires_grad and weight.grad is None  # nothing accumulated into .grad
    (rec + got * gan).backward()  # both graphs were kept
    assert weight.grad is not None
    out = weight @ torch.tensor(x_np)
    rec, gan = (out - torch.tensor(t_np)).pow(2).sum(), (torch.tensor(a_np) * out).sum()
    clamped = adaptive_weight(rec, gan, weight, max_weight=expected / 2)
    assert clamped.item() == pytest.approx(expected / 2)


# ---------------------------------------------------------------- discriminator geometry
@pytest.mark.parametrize(("size", "layers", "logits"), [(32, 3, 2), (256, 3, 30), (16, 2, 2)])
def test_patch_discriminator_logit_map(size: int, layers: int, logits: int) -> None:
    disc = PatchDiscriminator(channels=4, num_layers=layers, max_channels=16, norm_groups=2)
    out = disc(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, logits, logits) == (2, 1, disc.output_size(size), disc.output_size(size))


def test_patch_discriminator_receptive_field_is_70_pixels() -> None:
    # pix2pix's 70×70 PatchGAN: one interior logit sees exactly a 70×70 window (no norm: no global coupling).
    disc = PatchDiscriminator(channels=4, num_layers=3, max_channels=16, norm_groups=0).double()
    images = torch.rand(1, 3, 128, 128, dtype=torch.float64, requires_grad=True)
    logits = disc(images)
    logits[0, 0, 6, 6].backward()
    rows = images.grad[0].abs().sum((0, 2)).nonzero().flatten()
    cols = images.grad[0].abs().sum((0, 1)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_too_deep_discriminator_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"discriminator.num_layers=3 is too deep for 16 px.*at most 2"):
        build_discriminator({"num_layers": 3}, 16)
    with pytest.raises(ValueError, match=r"model.discriminator has unknown arguments \['width'\]"):
        build_discriminator({"width": 3}, 32)
    with pytest.raises(ValueError, match="discriminator.channels must be an integer >= 1, got 0"):
        PatchDiscriminator(channels=0)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gan_start_step": -1}, "loss.gan_start_step must be an integer >= 0, got -1"),
        ({"gan_start_step": 2.5}, "loss.gan_start_step must be an integer >= 0, got 2.5"),
        ({"gan_loss": "wgan"}, "loss.gan_loss must be one of hinge, non_saturating, got 'wgan'"),
        ({"lpips": -0.1}, "loss.lpips must be a finite number >= 0, got -0.1"),
        ({"gan": float("nan")}, "loss.gan must be a finite number >= 0"),
        ({"lecam": -1.0}, "loss.lecam must be a finite number >= 0"),
        ({"adaptive_weight_max": 0.0}, "loss.adaptive_weight_max must be a finite number > 0, got 0.0"),
        ({"lecam_decay": 1.0}, r"loss.lecam_decay must be in \(0, 1\), got 1.0"),
    ],
)
def test_bad_loss_settings_fail_with_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossWeights(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"disc_lr": 0.0}, r"optim.disc_lr must be > 0 \(or null = optim.lr\), got 0.0"),
        ({"disc_betas": (1.0, 0.9)}, r"optim.disc_betas must be two numbers in \[0, 1\)"),
        ({"disc_warmup_steps": -5}, "optim.disc_warmup_steps must be >= 0, got -5"),
        ({"disc_grad_clip": -1.0}, "optim.disc_grad_clip must be >= 0"),
    ],
)
def test_bad_discriminator_optimizer_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Optimization(**kwargs)


def test_discriminator_optimizer_inherits_unset_values() -> None:
    opt = Optimization(lr=3e-4, betas=(0.8, 0.95), weight_decay=0.01, grad_clip=2.0, disc_lr=1e-4)
    assert opt.discriminator() == {"lr": 1e-4, "betas": (0.8, 0.95), "weight_decay": 0.01, "grad_clip": 2.0}
    assert LossWeights(gan=0.1, gan_start_step=5).gan_active(5)
    assert not LossWeights(gan=0.1, gan_start_step=5).gan_active(4)
    assert not LossWeights(gan=0.0).gan_active(10)
