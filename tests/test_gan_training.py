"""The GAN phase of TokenizerModule (manual optimization, two optimizers), on CPU in seconds.

Oracles: parameter snapshots around every step, Adam's own step counts, a run without GAN (identical
tokenizer trajectory before the start step), an uninterrupted run (for resuming), and state-dict keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from vartok.nets.weights import WeightsNotFoundError
from vartok.tokenizers import LengthPolicy, Tokenizer, load_tokenizer
from vartok.training.module import TokenizerModule
from vartok.training.settings import LossWeights, Optimization

START, STEPS, BATCH = 3, 6, 8  # 32 images / 8 = 4 steps per epoch


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=generator)


def loader() -> DataLoader:
    return DataLoader([{"image": image} for image in images()], batch_size=BATCH, shuffle=False)


def make_module(gan: float = 0.5, **loss: float) -> TokenizerModule:
    weights = {"l1": 1.0, "l2": 1.0, "lpips": 0.1, "gan": gan, "gan_start_step": START,
               "adaptive_weight": True, "lecam": 0.01, **loss}
    return TokenizerModule(
        preset="demo_tiny",
        length_policy=LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.25),
        loss=LossWeights(**weights),
        optim=Optimization(lr=2e-3, warmup_steps=2, ema_decay=0.9, disc_lr=1e-3, disc_warmup_steps=1),
        discriminator={"channels": 8, "num_layers": 2, "norm_groups": 4},
        lpips_random_init=True,
    )


def make_trainer(root: Path, max_steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, deterministic=True, **kw)


def snapshot(module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    return {} if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


class Watcher(pl.Callback):
    """Per training step: counters, and whether the tokenizer / discriminator weights moved."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.tokenizer_states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._before = (module.step_count, snapshot(module.tokenizer), snapshot(module.discriminator))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step, tok, disc = self._before
        self.rows.append({
            "step": step, "step_after": module.step_count, "global_step": trainer.global_step,
            "tokenizer_moved": changed(tok, snapshot(module.tokenizer)),
            "disc_moved": changed(disc, snapshot(module.discriminator)) if disc else False,
            "disc_grads": any(p.grad is not None for p in module.discriminator.parameters())
            if module.discriminator is not None else False,
        })
        self.tokenizer_states.append(snapshot(module.tokenizer))


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> tuple[TokenizerModule, pl.Trainer, Watcher, Path]:
    root = tmp_path_factory.mktemp("gan")
    pl.seed_everything(0)
    module, watcher = make_module(), Watcher()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    trainer = make_trainer(root, STEPS, callbacks=[watcher, checkpoint])
    trainer.fit(module, loader())
    return module, trainer, watcher, root


def test_discriminator_starts_at_the_start_step_and_then_updates_every_step(gan_run) -> None:
    _, trainer, watcher, _ = gan_run
    assert [r["step"] for r in watcher.rows] == list(range(STEPS))
    assert [r["step_after"] for r in watcher.rows] == list(range(1, STEPS + 1))  # once per training step
    assert [r["global_step"] for r in watcher.rows] == list(range(1, STEPS + 1))  # max_steps = training steps
    assert all(r["tokenizer_moved"] for r in watcher.rows)
    assert [r["disc_moved"] for r in watcher.rows] == [step >= START for step in range(STEPS)]
    assert [r["disc_grads"] for r in watcher.rows] == [step >= START for step in range(STEPS)]
    tok_opt, disc_opt = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
    assert {int(s["step"]) for s in tok_opt.state.values()} == {STEPS}  # Adam's own counters
    assert {int(s["step"]) for s in disc_opt.state.values()} == {STEPS - START}
    tok_sched, disc_sched = (c.scheduler for c in trainer.lr_scheduler_configs)
    assert (tok_sched.last_epoch, disc_sched.last_epoch) == (STEPS, STEPS - START)


def test_adversarial_term_changes_the_tokenizer_from_the_start_step_only(gan_run, tmp_path) -> None:
    _, _, with_gan, _ = gan_run
    pl.seed_everything(0)
    without = Watcher()
    plain = make_module(gan=0.0)
    assert plain.discriminator is None
    make_trainer(tmp_path, STEPS, callbacks=[without]).fit(plain, loader())
    for step in range(STEPS):
        a, b = with_gan.tokenizer_states[step], without.tokenizer_states[step]
        same = all(torch.equal(a[k], b[k]) for k in a)
        assert same == (step < START), step


def test_ema_export_checkpoint_and_parameter_count_exclude_discriminator_and_lpips(gan_run, tmp_path) -> None:
    module, _, _, root = gan_run
    reference = Tokenizer.from_config(module.tokenizer_config).state_dict()
    assert set(module.ema.module.state_dict()) == set(reference)
    exported = module.export_tokenizer()
    assert set(exported.state_dict()) == set(reference)
    assert not any("discriminator" in k or "lecam" in k for k in exported.state_dict())
    counts = module.parameter_counts()
    fresh = Tokenizer.from_config(module.tokenizer_config)
    assert counts["tokenizer"] == exported.num_parameters() == sum(p.numel() for p in fresh.parameters())
    assert counts["discriminator"] == sum(p.numel() for p in module.discriminator.parameters()) > 0
    # The module holds: tokenizer + its EMA + discriminator; LPIPS (14.7M VGG weights) is outside it.
    assert sum(p.numel() for p in module.parameters()) == 2 * counts["tokenizer"] + counts["discriminator"]
    raw = torch.load(root / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = set(raw["state_dict"])
    assert any(k.startswith("discriminator.") for k in keys) and {"lecam.real_ema", "lecam.fake_ema"} <= keys
    assert not any("lpips" in k or k.startswith("net.") for k in keys)
    assert len(raw["optimizer_states"]) == 2 and len(raw["lr_schedulers"]) == 2
    saved = exported.save_pretrained(tmp_path / "export")
    loaded = load_tokenizer(saved)
    assert set(loaded.state_dict()) == set(reference)
    batch = images()[:4].float() / 255
    assert torch.equal(load_tokenizer(root / "ckpt" / "last.ckpt").encode(batch).indices,
                       loaded.encode(batch).indices)


def _assert_state_equal(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_state_equal(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-7), path
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
    elif not callable(a):
        assert a == b, path


def test_resume_in_the_gan_phase_restores_both_optimizers_and_schedulers(tmp_path) -> None:
    pl.seed_everything(0)
    full = make_module()
    every4 = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    full_trainer = make_trainer(tmp_path / "full", 8, callbacks=[every4])
    full_trainer.fit(full, loader())
    middle = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    raw = torch.load(middle, map_location="cpu", weights_only=True)
    assert raw["vartok"]["step_count"] == 4 > START  # saved inside the GAN phase
    disc_state = raw["optimizer_states"][1]["state"]
    assert disc_state and {int(s["step"]) for s in disc_state.values()} == {4 - START}

    pl.seed_everything(123)  # the resumed run must not depend on the global seed
    resumed = make_module()
    trainer = make_trainer(tmp_path / "resumed", 8)
    trainer.fit(resumed, loader(), ckpt_path=middle)
    assert resumed.step_count == full.step_count == 8 and trainer.global_step == full_trainer.global_step == 8
    for mine, theirs in zip(trainer.optimizers, full_trainer.optimizers):
        _assert_state_equal(mine.state_dict(), theirs.state_dict())
        assert [g["lr"] for g in mine.param_groups] == pytest.approx([g["lr"] for g in theirs.param_groups])
    for mine, theirs in zip(trainer.lr_scheduler_configs, full_trainer.lr_scheduler_configs):
        _assert_state_equal(mine.scheduler.state_dict(), theirs.scheduler.state_dict())
        assert mine.scheduler.get_last_lr() == pytest.approx(theirs.scheduler.get_last_lr())
    _assert_state_equal(resumed.state_dict(), full.state_dict())
    # Not vacuous: the run stopped at step 4 differs from the full one.
    part = make_module()
    part.load_state_dict(raw["state_dict"])
    assert changed(snapshot(part.discriminator), snapshot(full.discriminator))


def test_missing_vgg_weights_fail_at_the_start_of_fit(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    module = TokenizerModule(preset="demo_tiny", loss=LossWeights(lpips=0.1))  # building needs no weights
    message = r"vgg16-397923af.pth.*--lpips-weights.*model.lpips_weights"
    with pytest.raises(WeightsNotFoundError, match=message):
        make_trainer(tmp_path, 2).fit(module, loader())
    assert module.step_count == 0


def test_gan_config_errors_are_raised_at_construction() -> None:
    with pytest.raises(ValueError, match="discriminator.num_layers=3 is too deep for 16 px"):
        TokenizerModule(preset="demo_tiny", loss=LossWeights(gan=0.1))  # default 3 layers, 16 px images
    with pytest.raises(ValueError, match=r"model.discriminator has unknown arguments \['depth'\]"):
        TokenizerModule(preset="demo_tiny", loss=LossWeights(gan=0.1), discriminator={"depth": 2})
    plain = TokenizerModule(preset="demo_tiny")
    assert plain.discriminator is None and plain.lecam is None and plain.objective.perceptual(plain.device) is None
