"""Decoder post-training (model.posttrain, vartok/training/posttrain.py): the decoder learns from the tokens a
token prior re-predicts, teacher-forced, while the encoder, quantizer and codebook stay bit-identical.

The tokenizer is a tiny vq export (demo_tiny, 8 tokens, a 32-code EMA codebook) and the prior a tiny random
TokenPrior for its tokens, both written to folders in the test; the fits are the real TokenizerModule on 16 px
crops (tests/fixtures/resume_fit.py), a few steps each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.fixtures import commands
from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.resume_fit import every_step, tiny_data, tiny_data_settings, tiny_trainer, weights
from vartok.models.prior import TokenPrior, TokenSpec
from vartok.tokenizers import LengthPolicy, Tokenizer
from vartok.training.module import TokenizerModule
from vartok.training.posttrain import PostTrainConfig
from vartok.training.settings import Optimization

ROOT = Path(__file__).resolve().parents[1]
VQ_ARGS = {"codebook_size": 32, "codebook_dim": 4}
TAIL_DROP = LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.25)
FROZEN = ("tokenizer.encoder.", "tokenizer.quantizer.", "ema.module.encoder.", "ema.module.quantizer.")


def make_tokenizer(**overrides: object) -> Tokenizer:
    torch.manual_seed(123)
    return Tokenizer.from_preset("demo_tiny", quantizer="vq", **{"quantizer_args": VQ_ARGS, "num_tokens": 8,
                                                                 **overrides})


def make_prior(folder: Path, tokenizer: Tokenizer, **settings: object) -> Path:
    torch.manual_seed(7)
    spec = TokenSpec.from_quantizer(tokenizer.quantizer, tokenizer.num_tokens)
    return TokenPrior(spec, **{"width": 32, "depth": 1, "heads": 2, **settings}).save_pretrained(folder)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return photo_shards(tmp_path_factory.mktemp("shards"), count=64, size=16)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path]:
    """(the tokenizer export, a prior export for its tokens)."""
    root = tmp_path_factory.mktemp("exports")
    tokenizer = make_tokenizer()
    return tokenizer.save_pretrained(root / "tokenizer"), make_prior(root / "prior", tokenizer)


def post_train(exports: tuple[Path, Path], keep_prob: float = 0.7, **kwargs: object) -> TokenizerModule:
    export, prior = exports
    settings = {"preset": None, "init_from": str(export), "length_policy": TAIL_DROP,
                "optim": Optimization(lr=2e-3, warmup_steps=1, ema_decay=0.9),
                "posttrain": PostTrainConfig(prior=str(prior), keep_prob=keep_prob), **kwargs}
    return TokenizerModule(**settings)


def prefixed(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# ---------------------------------------------------------------- 1. the frozen parts stay bit-identical
def test_post_training_leaves_encoder_quantizer_and_codebook_bit_identical(exports, shards, tmp_path) -> None:
    module = post_train(exports)
    prior_before = {k: v.clone() for k, v in module.posttrain.prior.state_dict().items()}
    before = weights(module)
    trainer = tiny_trainer(tmp_path, max_steps=3)
    trainer.fit(module, tiny_data(shards))
    after = weights(module)
    assert module.step_count == 3 and module.hparams["freeze"] == ["encoder", "quantizer"]
    assert_same(prefixed(after, FROZEN), prefixed(before, FROZEN))
    assert any("cluster_size" in k for k in prefixed(after, FROZEN))  # the EMA codebook's statistics too
    saved = Tokenizer.from_pretrained(exports[0]).state_dict()
    exported = module.export_tokenizer().state_dict()
    assert_same(prefixed(exported, ("encoder.", "quantizer.")), prefixed(saved, ("encoder.", "quantizer.")))
    decoder = [k for k in after if k.startswith("tokenizer.decoder.") and after[k].is_floating_point()]
    assert any(not torch.equal(after[k], before[k]) for k in decoder)
    for part in (module.tokenizer.encoder, module.tokenizer.quantizer):
        assert not part.training and not any(p.requires_grad for p in part.parameters())
    # The prior: frozen, in eval mode, unchanged, and in neither the checkpoint's state nor the EMA.
    prior = module.posttrain.prior
    assert not prior.training and not any(p.requires_grad for p in prior.parameters())
    assert_same(prior.state_dict(), prior_before)
    assert not [k for k in module.state_dict() if "prior" in k or "codec" in k]
    assert 0.0 <= float(trainer.logged_metrics["train/post_kept"]) <= 1.0


# ---------------------------------------------------------------- 2. keep_prob 1 = decoder-only fine-tuning
class DecoderInputs:
    """Records what the decoder reads at each call: its codes and per-sample lengths."""

    def __init__(self, module: TokenizerModule) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        module.tokenizer.decoder.register_forward_pre_hook(self.record)

    def record(self, decoder, args) -> None:
        codes, keep = args[0], args[1] if len(args) > 1 else None
        self.calls.append((codes.detach().clone(), None if keep is None else keep.clone()))


def test_keep_prob_one_is_exactly_a_decoder_only_fine_tuning_step(exports, shards, tmp_path) -> None:
    export, _ = exports
    plain = TokenizerModule(preset=None, init_from=str(export), freeze=["encoder", "quantizer"],
                            length_policy=TAIL_DROP, optim=Optimization(lr=2e-3, warmup_steps=1, ema_decay=0.9))
    post = post_train(exports, keep_prob=1.0)
    runs = {}
    for name, module in (("plain", plain), ("post", post)):
        inputs = DecoderInputs(module)
        trainer = tiny_trainer(tmp_path / name, max_steps=3)
        trainer.fit(module, tiny_data(shards))
        runs[name] = inputs.calls, weights(module), float(trainer.logged_metrics["train/loss"])
    (plain_inputs, plain_weights, plain_loss), (post_inputs, post_weights, post_loss) = runs["plain"], runs["post"]
    assert len(plain_inputs) == len(post_inputs) == 3
    for (codes, keep), (post_codes, post_keep) in zip(plain_inputs, post_inputs, strict=True):
        assert torch.equal(codes, post_codes)
        assert (keep is None and post_keep is None) or torch.equal(keep, post_keep)
    assert plain_loss == post_loss
    assert_same(post_weights, plain_weights)  # the same gradients at every step, so the same weights
    assert float(post.trainer.logged_metrics["train/post_kept"]) == 1.0


# ---------------------------------------------------------------- 3. the mixed ids reach the decoder directly
def test_the_decoder_reads_the_codes_of_the_mixed_token_ids(exports, shards, tmp_path) -> None:
    module = post_train(exports, keep_prob=0.3)
    tokenizer, prior = module.tokenizer, module.posttrain.prior
    seen: dict[str, list] = {"encoded": [], "mix": [], "lookup": []}
    tokenizer.quantizer.register_forward_hook(lambda m, args, out: seen["encoded"].append(out.indices.clone()))
    mix, lookup = prior.mix, tokenizer.quantizer.lookup_codes

    def recording_mix(indices, *args, **kwargs):
        mixed, kept = mix(indices, *args, **kwargs)
        seen["mix"].append((indices.clone(), mixed.clone(), kept.clone()))
        return mixed, kept

    def recording_lookup(indices):
        codes = lookup(indices)
        seen["lookup"].append((indices.clone(), codes.clone()))
        return codes

    prior.mix, tokenizer.quantizer.lookup_codes = recording_mix, recording_lookup
    inputs = DecoderInputs(module)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, tiny_data(shards))
    assert len(seen["encoded"]) == len(seen["mix"]) == len(seen["lookup"]) == len(inputs.calls) == 2
    for encoded, (clean, mixed, kept), (looked_up, codes), (decoder_codes, _) in zip(
            seen["encoded"], seen["mix"], seen["lookup"], inputs.calls, strict=True):
        assert torch.equal(clean, encoded)  # the prior re-predicts the encoder's own tokens
        assert torch.equal(looked_up, mixed)  # the mixed ids themselves, never re-encoded
        assert torch.equal(mixed[kept], clean[kept]) and not torch.equal(mixed, clean)
        length = decoder_codes.shape[1]
        assert torch.equal(decoder_codes, codes[:, :length])
        assert torch.equal(decoder_codes, lookup(mixed)[:, :length])  # the frozen codebook's codes
    last_kept = seen["mix"][-1][2].float().mean()
    assert float(trainer.logged_metrics["train/post_kept"]) == pytest.approx(float(last_kept))


# ---------------------------------------------------------------- 4. a resume redraws the same mixes
def test_resume_mid_run_equals_the_uninterrupted_run(exports, shards, tmp_path) -> None:
    full = post_train(exports, keep_prob=0.5)
    tiny_trainer(tmp_path / "full", max_steps=4, callbacks=[every_step(tmp_path / "ckpt")]).fit(full, tiny_data(shards))
    torch.randn(1000)  # a resumed process has drawn other numbers before
    resumed = post_train(exports, keep_prob=0.5)
    tiny_trainer(tmp_path / "resumed", max_steps=4).fit(resumed, tiny_data(shards),
                                                        ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert resumed.step_count == 4
    assert_same(weights(resumed), weights(full))
    # Another model.posttrain.seed draws other mixes (so the comparison above could tell them apart).
    other = post_train(exports, posttrain=PostTrainConfig(prior=str(exports[1]), keep_prob=0.5, seed=1))
    tiny_trainer(tmp_path / "other", max_steps=2).fit(other, tiny_data(shards))
    full_at_2 = torch.load(tmp_path / "ckpt" / "step=2.ckpt", weights_only=True)["state_dict"]
    decoder_other, decoder_full = (prefixed(state, ("tokenizer.decoder.",)) for state in (weights(other), full_at_2))
    assert any(not torch.equal(decoder_other[k], decoder_full[k]) for k in decoder_full)


# ---------------------------------------------------------------- 5. bad input: one sentence each
def one_sentence(error: pytest.ExceptionInfo, start: str, *parts: str) -> None:
    message = str(error.value)
    assert message.startswith(start), message
    assert all(part in message for part in parts), message
    assert "\n" not in message


def test_a_prior_for_another_tokenizer_is_refused_naming_both(exports, tmp_path) -> None:
    export, _ = exports
    other = make_prior(tmp_path / "other_prior", make_tokenizer(quantizer_args={**VQ_ARGS, "codebook_size": 64}))
    with pytest.raises(ValueError) as error:
        post_train((export, other))
    one_sentence(error, f"the prior model.posttrain.prior {other} predicts 8 tokens of 64 codes but the tokenizer "
                        f"model.init_from {export} has 8 tokens of 32 codes; train a prior on this tokenizer's tokens")
    shorter = make_prior(tmp_path / "short_prior", make_tokenizer(num_tokens=4))
    with pytest.raises(ValueError, match="predicts 4 tokens of 32 codes but the tokenizer"):
        post_train((export, shorter))


@pytest.mark.parametrize("where", ["missing", "file", "empty"])
def test_a_bad_prior_folder_is_one_sentence_naming_it(exports, tmp_path, where) -> None:
    path = tmp_path / where
    if where == "file":
        path.write_text("not a prior")
    elif where == "empty":
        path.mkdir()
    with pytest.raises(ValueError) as error:
        post_train((exports[0], path))
    expected = {"missing": f"model.posttrain.prior {path} does not exist: give the folder of a token prior",
                "file": f"model.posttrain.prior {path} is a file, not a folder: give the folder of a token prior",
                "empty": f"model.posttrain.prior {path}: {path / 'config.json'} is missing"}[where]
    one_sentence(error, expected)


@pytest.mark.parametrize("freeze", [[], ["encoder"], ["decoder"]])
def test_a_freeze_that_leaves_the_encoder_or_quantizer_trainable_is_one_sentence(exports, freeze) -> None:
    with pytest.raises(ValueError) as error:
        post_train(exports, freeze=freeze)
    one_sentence(error, f"model.posttrain trains the decoder only, but model.freeze is [{', '.join(freeze)}]: the encoder, "
                        "quantizer and codebook must stay frozen", "set model.freeze: [encoder, quantizer] or leave it out")


def test_posttrain_without_init_from_is_one_sentence(exports) -> None:
    with pytest.raises(ValueError) as error:
        TokenizerModule(preset="demo_tiny", posttrain=PostTrainConfig(prior=str(exports[1])))
    one_sentence(error, "model.posttrain post-trains the decoder of an existing tokenizer, but model.init_from is "
                        "not set: give the export folder to post-train (e.g. --model.init_from runs/demo/export)")


def test_other_settings_that_cannot_post_train_are_one_sentence(exports, tmp_path) -> None:
    from vartok.tokenizers.perturb import PerturbationConfig

    with pytest.raises(ValueError) as error:
        post_train(exports, perturbation=PerturbationConfig())
    one_sentence(error, "model.posttrain and model.perturbation cannot be combined")
    conditional = make_prior(tmp_path / "conditional", make_tokenizer(), num_classes=10)
    with pytest.raises(ValueError) as error:
        post_train((exports[0], conditional))
    one_sentence(error, f"model.posttrain.prior {conditional} is class-conditional (10 classes), but the training "
                        "batches carry no class labels")
    with pytest.raises(ValueError, match=r"model.posttrain.keep_prob must be a probability in \[0, 1\]"):
        PostTrainConfig(prior="p", keep_prob=1.5)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        PostTrainConfig(prior="p", temperature=0.0)


# ---------------------------------------------------------------- the shipped recipe, from the command line
def recipe_overrides(tmp_path: Path, exports: tuple[Path, Path], shards: list[str]) -> Path:
    """configs/posttrain/demo.yaml scaled down: the tiny export and prior, 16 px crops, 2 steps."""
    overrides = {
        "trainer": {"default_root_dir": str(tmp_path / "run"), "max_steps": 2, "enable_model_summary": False,
                    "log_every_n_steps": 1},
        "model": {"init_from": str(exports[0]), "posttrain": {"prior": str(exports[1]), "keep_prob": 0.7},
                  "length_policy": {"mode": "tail_drop", "granularity": "batch", "distribution": "list",
                                    "lengths": [1, 2, 4, 8], "weights": [1, 1, 1, 1], "p_full": 0.3}},
        "data": tiny_data_settings(shards),
        "skip_report": True,
    }
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def run_cli(capfd, monkeypatch, *args: str) -> tuple[int, str]:
    from vartok.cli.train import main

    monkeypatch.setattr(sys, "argv", ["vartok-train"])
    code, _, err = commands.run_main(main, capfd, *args)
    return code, err


def test_the_demo_recipe_runs_from_the_command_line(exports, shards, tmp_path, capfd, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "configs" / "posttrain" / "demo.yaml"
    code, err = run_cli(capfd, monkeypatch, "fit", "--config", str(recipe), "--config",
                        str(recipe_overrides(tmp_path, exports, shards)))
    assert code == 0, err[-2000:]
    assert (tmp_path / "run" / "logs" / "checkpoints" / "last.ckpt").is_file()
    rows = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    assert "train/post_kept" in rows[0]
    # Without the demo's exports in place (a fresh folder): one sentence naming model.init_from, exit 2.
    code, err = run_cli(capfd, monkeypatch, "fit", "--config", str(recipe))
    assert code == 2
    assert err.strip().startswith("vartok-train: error: model.init_from runs/demo/export does not exist")
