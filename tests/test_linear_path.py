"""The global linear path: PCA start against an independent eigendecomposition, ordering under truncation,
its optimizer group, size limit, and its start inside a fit (and not on resume)."""

from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tests.test_training import make_data, make_trainer, shards  # noqa: F401  (fixture)
from vartok.models.linear_path import PCA_SPREAD
from vartok.tokenizers import LengthPolicy
from vartok.tokenizers.config import preset_config
from vartok.tokenizers.tokenizer import Tokenizer
from vartok.training.module import TokenizerModule
from vartok.training.optim import parameter_groups
from vartok.training.settings import Optimization

TINY = {"num_tokens": 4, "global_linear": True}  # demo_tiny: 16 px, fsq [5, 5, 5] -> D = 3, 12 components


def smooth_images(count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=g)
    fine = F.interpolate(coarse, size=16, mode="bilinear", align_corners=False)
    return (fine + 0.05 * torch.rand(count, 3, 16, 16, generator=g)).clamp(0, 1)


def eig_projection(x: torch.Tensor, fit: torch.Tensor, components: int) -> torch.Tensor:
    """Oracle: projection of x onto the top principal subspace of `fit` (float64 eigh of the covariance)."""
    mean = fit.mean(0)
    values, vectors = torch.linalg.eigh(((fit - mean).T @ (fit - mean)).double())
    top = vectors[:, values.argsort(descending=True)[:components]].float()
    return (x - mean) @ top @ top.T + mean


def test_pca_start_is_the_ordered_pca_codec():
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("demo_tiny", **TINY)
    fit = smooth_images(400)
    explained = tok.init_linear_path(fit)
    test = smooth_images(16, seed=1)
    x = test * 2 - 1
    latents = tok.encoder(x)  # the ViT's last layer is zero: the encoder is the linear path alone
    assert torch.equal(latents, tok.encoder.linear_path(x))
    flat_fit = (fit * 2 - 1).flatten(1)
    # Unit-ish spread: each coefficient has std 1 / spread on the fitting images.
    stds = tok.encoder.linear_path(fit * 2 - 1).flatten(1).std(0)
    assert torch.allclose(stds, torch.full_like(stds, 1 / PCA_SPREAD), rtol=1e-3)
    for k in (1, 2, 4):  # the first k tokens alone reconstruct the projection on the top k*D components
        recon = tok.decoder.linear_path(latents[:, :k]).flatten(1)
        assert torch.allclose(recon, eig_projection(x.flatten(1), flat_fit, 3 * k), atol=2e-4), k
        assert torch.allclose(tok.decoder(latents[:, :k]).flatten(1), recon, atol=1e-6)  # ViT head is zero
    values = torch.linalg.eigvalsh(torch.cov(flat_fit.T).double()).flip(0)
    assert explained == pytest.approx(float(values[:12].sum() / values.sum()), rel=1e-4)


def test_padding_of_the_linear_path_equals_truncation():
    tok = Tokenizer.from_preset("demo_tiny", **TINY)
    tok.init_linear_path(smooth_images(200))
    codes = torch.randn(3, 4, 3)
    keep = torch.tensor([1, 4, 2])
    mixed = tok.decoder.linear_path(codes, torch.arange(4) < keep[:, None])
    for b, k in enumerate(keep.tolist()):
        assert torch.allclose(mixed[b], tok.decoder.linear_path(codes[b : b + 1, :k])[0], atol=1e-6)


def test_bad_global_linear_use_is_one_clear_error():
    with pytest.raises(ValueError, match="tokenizer.global_linear needs .* weights per direction"):
        preset_config("titok_s_128", global_linear=True)
    with pytest.raises(ValueError, match="global_linear=True"):
        Tokenizer.from_preset("demo_tiny").init_linear_path(smooth_images(64))
    with pytest.raises(ValueError, match="more than 12 images"):
        Tokenizer.from_preset("demo_tiny", **TINY).init_linear_path(smooth_images(12))
    with pytest.raises(ValueError, match="pca_images must exceed"):
        TokenizerModule(preset="demo_tiny", tokenizer=TINY, pca_images=12)
    with pytest.raises(ValueError, match="linear_path_lr_scale"):
        Optimization(linear_path_lr_scale=0)


def test_linear_path_has_its_own_learning_rate_and_no_decay():
    tok = Tokenizer.from_preset("demo_tiny", **TINY)
    groups = parameter_groups(tok, 0.1, lr=2e-3, linear_path_lr_scale=0.05)
    assert len(groups) == 3
    linear = {id(p) for m in (tok.encoder.linear_path, tok.decoder.linear_path) for p in m.parameters()}
    assert {id(p) for p in groups[2]["params"]} == linear
    assert groups[2]["lr"] == pytest.approx(1e-4) and groups[2]["weight_decay"] == 0
    assert not linear & {id(p) for g in groups[:2] for p in g["params"]}
    assert len(parameter_groups(Tokenizer.from_preset("demo_tiny"), 0.1)) == 2


class StartRecorder(pl.Callback):
    def on_train_start(self, trainer, module):
        self.weight = module.tokenizer.encoder.linear_path.linear.weight.detach().clone()
        self.ema_weight = module.ema.module.encoder.linear_path.linear.weight.detach().clone()
        self.lr = [g["lr"] for g in trainer.optimizers[0].param_groups]


def linear_module() -> TokenizerModule:
    return TokenizerModule(preset="demo_tiny", tokenizer={"width": 64, "heads": 4, "depth": 2, **TINY},
                           length_policy=LengthPolicy(mode="tail_drop", p_full=0.5),
                           optim=Optimization(lr=2e-3, warmup_steps=0, ema_decay=0.9), pca_images=48)


def test_fit_starts_the_linear_path_at_pca_and_resume_keeps_the_checkpoint(shards, tmp_path):  # noqa: F811
    pl.seed_everything(0)
    start = StartRecorder()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module = linear_module()
    make_trainer(tmp_path / "a", 8, callbacks=[start, checkpoint]).fit(module, make_data(shards))
    assert start.weight.abs().sum() > 0 and torch.equal(start.weight, start.ema_weight)
    assert start.lr[2] == pytest.approx(start.lr[0] * 0.01)
    # Resume: the linear path is the checkpoint's, not a new PCA.
    resumed = linear_module()
    calls = []
    again = StartRecorder()
    with mock.patch("vartok.training.module.start_linear_path", lambda *a: calls.append(1)):
        make_trainer(tmp_path / "b", 12, callbacks=[again]).fit(resumed, make_data(shards),
                                                               ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(again.weight, saved["tokenizer.encoder.linear_path.linear.weight"])
    assert calls == []
