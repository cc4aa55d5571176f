"""Training: a short fit lowers the loss; resuming equals an uninterrupted run; bad config fails early."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.fixtures.photo_shards import photo_shards
from vartok.data import ImageDataModule
from vartok.tokenizers import LengthPolicy
from vartok.training.module import TokenizerModule
from vartok.training.settings import LossWeights, Optimization


def make_module(**kw) -> TokenizerModule:
    return TokenizerModule(
        preset="demo_tiny",
        tokenizer={"width": 64, "heads": 4, "depth": 2, "num_tokens": 8},
        length_policy=LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.25),
        optim=Optimization(lr=2e-3, warmup_steps=5, ema_decay=0.9),
        **kw,
    )


def make_data(urls: list[str]) -> ImageDataModule:
    return ImageDataModule(train_shards=urls, val_shards=urls[:1], image_size=16, batch_size=16,
                           num_workers=0, epoch_size=64, shuffle_buffer=16)


def make_trainer(root: Path, max_steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, deterministic=True, **kw)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return photo_shards(tmp_path_factory.mktemp("shards"), count=64, size=16)


class LossRecorder(pl.Callback):
    """The total loss per step, or one logged term of it (`term`, e.g. "train/l2")."""

    def __init__(self, term: str | None = None):
        self.losses, self.term = [], term

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.term is not None:
            self.losses.append(float(trainer.callback_metrics[self.term]))
        else:
            self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def test_short_fit_lowers_the_loss(shards, tmp_path):
    pl.seed_everything(0)
    recorder = LossRecorder()
    module = make_module()
    make_trainer(tmp_path, 60, callbacks=[recorder]).fit(module, make_data(shards))
    first, last = sum(recorder.losses[:10]) / 10, sum(recorder.losses[-10:]) / 10
    assert last < 0.85 * first, (first, last)
    assert module.step_count == 60


def test_resume_equals_uninterrupted_run(shards, tmp_path):
    # 4 steps per epoch (64 samples / 16). The uninterrupted run saves a checkpoint at every epoch end;
    # a new trainer resumes from the one after 8 steps and runs to the same 16 steps (same schedule).
    pl.seed_everything(0)
    full = make_module()
    every_epoch = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1,
                                               every_n_epochs=1, save_on_train_epoch_end=True)
    make_trainer(tmp_path / "full", 16, callbacks=[every_epoch]).fit(full, make_data(shards))
    middle = tmp_path / "ckpt" / "epoch=1.ckpt"
    assert torch.load(middle, weights_only=True)["vartok"]["step_count"] == 8

    pl.seed_everything(123)  # the resumed run must not depend on the global seed
    resumed = make_module()
    make_trainer(tmp_path / "resumed", 16).fit(resumed, make_data(shards), ckpt_path=middle)
    assert resumed.step_count == 16
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=0, atol=1e-6), name
    # The comparison is not vacuous: the weights moved between the checkpoint and the end.
    state = torch.load(middle, weights_only=True)["state_dict"]
    assert not torch.allclose(state["tokenizer.encoder.proj.weight"], full.tokenizer.encoder.proj.weight)


def test_checkpoint_loads_with_weights_only_and_exports(shards, tmp_path):
    from vartok.tokenizers import load_tokenizer

    module = make_module()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, 4, callbacks=[checkpoint]).fit(module, make_data(shards))
    raw = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert raw["vartok"]["step_count"] == 4
    tok = load_tokenizer(tmp_path / "ckpt" / "last.ckpt")
    ema = module.export_tokenizer()
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(tok.encode(images).indices, ema.encode(images).indices)
    assert not any(k.startswith("disc") for k in tok.state_dict())
    # vartok-export writes the same EMA tokenizer; a missing checkpoint is one clear error (exit 2).
    from vartok import Tokenizer
    from vartok.cli.export import main as export_main

    export_main(["--checkpoint", str(tmp_path / "ckpt" / "last.ckpt"), "--out", str(tmp_path / "export")])
    exported = Tokenizer.from_pretrained(tmp_path / "export")
    assert torch.equal(exported.encode(images).indices, ema.encode(images).indices)
    with pytest.raises(SystemExit) as info:
        export_main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (lambda: {"loss": LossWeights(l2=-1.0)}, "loss.l2 must be a finite number >= 0"),
        (lambda: {"optim": Optimization(lr=0.0)}, "optim.lr must be > 0"),
        (lambda: {"val_lengths": [0, 4]}, "val_lengths must be in"),
        (lambda: {"preset": "nope"}, "unknown preset"),
    ],
)
def test_bad_training_config_fails_before_the_first_step(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenizerModule(**{"preset": "demo_tiny", **kwargs()})


def test_short_fit_with_grouped_lookup_free_quantization_trains(shards, tmp_path):
    """gq (2 groups x 4 bits) with the entropy regulariser and its decaying weight: the loss falls and the
    codebook stays in use (measured: 7-8 of the 16 codes of each group on 256 tokens; floor 5 of 16). The
    reconstruction term is compared: the entropy term makes the total negative and its weight decays."""
    pl.seed_everything(0)
    recorder = LossRecorder("train/l2")
    module = TokenizerModule(
        preset="demo_tiny",
        tokenizer={"width": 64, "heads": 4, "depth": 2, "num_tokens": 8, "quantizer": "gq",
                   "quantizer_args": {"bits": 8, "groups": 2, "temperature": 0.1}},
        length_policy=LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.25),
        loss=LossWeights(l2=1.0, entropy=0.02, entropy_start=0.1, entropy_decay_steps=20),
        optim=Optimization(lr=2e-3, warmup_steps=5, ema_decay=0.9),
    )
    assert module.objective.entropy_weight(0) == pytest.approx(0.1) and module.objective.entropy_weight(20) == pytest.approx(0.02)
    make_trainer(tmp_path, 60, callbacks=[recorder]).fit(module, make_data(shards))
    first, last = sum(recorder.losses[:10]) / 10, sum(recorder.losses[-10:]) / 10
    assert last < 0.9 * first, (first, last)
    images = torch.stack([torch.rand(3, 16, 16) for _ in range(32)])
    out = module.tokenizer.train()(images)
    for g in range(2):
        assert out.quantizer.stats[f"usage_group{g}"] >= 5 / 16, out.quantizer.stats


def test_validation_psnr_is_the_reports_psnr(shards, tmp_path):
    """One PSNR: `val/psnr_<k>` of the training module (EMA weights) equals report.json's `psnr` at k for the
    same images (both of the 8-bit reconstruction); the float reconstruction's PSNR differs."""
    from vartok.metrics import EvalPlan, evaluate
    from vartok.pixels import psnr_per_image

    pl.seed_everything(0)
    module, data = make_module(), make_data(shards)
    make_trainer(tmp_path, 6).fit(module, data)
    logged = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False).validate(module, data.val_dataloader(), verbose=False)[0]
    batches = list(data.val_dataloader())
    report = evaluate(module.export_tokenizer(), batches,
                      EvalPlan([2, 8], ["psnr"], baselines=False, grid_images=0, show=False))
    for k in ("2", "8"):
        assert logged[f"val/psnr_{k}"] == pytest.approx(report["lengths"][k]["psnr"], rel=1e-6)
    images = torch.cat([b["image"][b["valid"]] for b in batches]).float() / 255
    tok = module.export_tokenizer()
    with torch.no_grad():
        float_psnr = psnr_per_image(tok.decode(tok.encode(images).indices).clamp(0, 1), images).mean().item()
    assert float_psnr != pytest.approx(report["lengths"]["8"]["psnr"], rel=1e-6)


def test_entropy_weight_ramps_linearly_then_stays() -> None:
    from vartok.training.objective import Objective

    ramp = Objective(LossWeights(entropy=0.1, entropy_start=1.0, entropy_decay_steps=100)).entropy_weight
    for step in [0, 1, 37, 99, 100, 5000]:
        assert ramp(step) == pytest.approx(1.0 + (0.1 - 1.0) * min(step, 100) / 100)
    assert Objective(LossWeights(entropy=0.3)).entropy_weight(0) == 0.3
    assert Objective(LossWeights(entropy=0.3, entropy_start=2.0)).entropy_weight(0) == 0.3  # no decay steps
    with pytest.raises(ValueError, match="entropy_decay_steps"):
        LossWeights(entropy_start=1.0, entropy_decay_steps=-1)
    with pytest.raises(ValueError, match="entropy_start"):
        LossWeights(entropy_start=float("inf"))
