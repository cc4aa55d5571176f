"""Fine-tuning from an export (model.init_from) with parts frozen (model.freeze).

The export is a tiny vq tokenizer (demo_tiny, 8 tokens, a 32-code EMA codebook: buffers that an eval-mode
quantizer leaves alone) written by `save_pretrained`. The fits are the real TokenizerModule on 16 px crops
(tests/fixtures/resume_fit.py), a few steps each.

Slow (2 gloo processes through torchrun, this file being the script): decoder-only fine-tuning under plain
`ddp` (no find_unused_parameters) keeps the encoder and quantizer bit-identical on both ranks.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from tests.fixtures import commands
from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.processes import free_port, state_hash
from tests.fixtures.resume_fit import every_step, tiny_data, tiny_data_settings, tiny_trainer, weights
from vartok.tokenizers import LengthPolicy, Tokenizer, preset_config
from vartok.training.module import TokenizerModule
from vartok.training.settings import Optimization

ROOT = Path(__file__).resolve().parents[1]
VQ = {"quantizer": "vq", "quantizer_args": {"codebook_size": 32, "codebook_dim": 4}}
ARCHITECTURE = {"num_tokens": 8, **VQ}  # on demo_tiny
TAIL_DROP = LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.25)
DECODER_ONLY = ["encoder", "quantizer"]


def make_export(folder: Path, **overrides: object) -> Path:
    """A tiny tokenizer with weights unlike a fresh module's (another seed, shifted), saved as an export."""
    torch.manual_seed(123)
    tokenizer = Tokenizer.from_config(preset_config("demo_tiny", **{**ARCHITECTURE, **overrides}))
    with torch.no_grad():
        for param in tokenizer.parameters():
            param.add_(0.01)
    return tokenizer.save_pretrained(folder)


def fine_tune(export: Path, **kwargs: object) -> TokenizerModule:
    settings = {"preset": None, "init_from": str(export), "length_policy": TAIL_DROP,
                "optim": Optimization(lr=2e-3, warmup_steps=1, ema_decay=0.9), **kwargs}
    return TokenizerModule(**settings)


def exported(export: Path) -> dict[str, torch.Tensor]:
    return Tokenizer.from_pretrained(export).state_dict()


def part_state(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return photo_shards(tmp_path_factory.mktemp("shards"), count=64, size=16)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("export") / "tiny")


# ---------------------------------------------------------------- (a) the export's weights, exactly
@pytest.mark.parametrize("settings", [
    {"preset": None},
    # A matching preset; sync_codebook only steers training (the DDP all-reduce), so it may differ.
    {"preset": "demo_tiny", "tokenizer": {"num_tokens": 8, "quantizer": "vq",
                                          "quantizer_args": {"codebook_size": 32, "codebook_dim": 4,
                                                             "sync_codebook": True}}},
], ids=["preset_null", "matching_preset"])
def test_init_from_loads_the_exports_weights_into_the_tokenizer_and_its_ema(export, settings) -> None:
    module = fine_tune(export, **settings)
    assert_same(module.tokenizer.state_dict(), exported(export))
    assert_same(module.ema.module.state_dict(), exported(export))
    fresh = TokenizerModule(preset="demo_tiny", tokenizer=ARCHITECTURE)  # the comparison can tell them apart
    assert not torch.equal(fresh.tokenizer.encoder.proj.weight, module.tokenizer.encoder.proj.weight)
    assert module.hparams["init_from"] == str(export) and module.hparams["freeze"] == []


def test_preset_null_applies_the_overrides_on_top_of_the_exports_architecture(export) -> None:
    module = fine_tune(export, tokenizer={"quantizer_args": {"decay": 0.9}})
    assert module.tokenizer_config.quantizer_args["decay"] == 0.9
    assert module.tokenizer_config.quantizer_args["codebook_size"] == 32  # updated, not replaced
    assert_same(module.tokenizer.state_dict(), exported(export))


# ---------------------------------------------------------------- (b) an architecture that differs
def test_a_preset_that_differs_from_the_export_is_one_sentence_naming_the_fields(export) -> None:
    with pytest.raises(ValueError) as error:
        fine_tune(export, preset="demo_tiny", tokenizer={**ARCHITECTURE, "width": 64, "heads": 4})
    message = str(error.value)
    assert message.startswith(f"model.init_from {export / 'config.json'} has width 32 but the run has 64, heads 2 "
                              "but 4: set model.preset: null")
    assert "or give a matching preset" in message and "\n" not in message


def test_overrides_that_change_the_weights_are_one_sentence_naming_the_keys(export) -> None:
    with pytest.raises(ValueError) as error:
        fine_tune(export, tokenizer={"num_tokens": 16})
    message = str(error.value)
    assert f"model.init_from {export / 'model.safetensors'} does not fit the run's tokenizer" in message
    assert "(model.tokenizer sets num_tokens)" in message
    assert "encoder.latent_tokens (8, 32) in the export, (16, 32) in the run" in message


@pytest.mark.parametrize("where, expected", [
    ("missing", "does not exist: give the export folder"),
    ("file", "is a file, not an export folder"),
    ("empty", "config.json is missing: an export folder holds config.json and model.safetensors"),
])
def test_a_bad_export_folder_is_one_sentence_naming_it(tmp_path, where, expected) -> None:
    path = tmp_path / where
    if where == "file":
        path.write_text("not an export")
    elif where == "empty":
        path.mkdir()
    with pytest.raises(ValueError, match=f"^model.init_from {path}") as error:
        fine_tune(path)
    assert expected in str(error.value)


def test_preset_null_without_an_export_is_one_sentence() -> None:
    with pytest.raises(ValueError, match="model.preset is null, which takes the architecture from model.init_from"):
        TokenizerModule(preset=None)


# ---------------------------------------------------------------- (c) nested dropout over an export without it
def test_nested_dropout_over_an_export_without_a_drop_token_starts_only_that_token_fresh(export, shards,
                                                                                          tmp_path) -> None:
    nested = LengthPolicy(mode="nested_dropout", granularity="sample")
    for settings in ({"preset": None}, {"preset": "demo_tiny", "tokenizer": ARCHITECTURE}):
        module = fine_tune(export, length_policy=nested, **settings)
        state, saved = module.tokenizer.state_dict(), exported(export)
        assert set(state) - set(saved) == {"decoder.drop_token"} and set(saved) <= set(state)
        assert_same({k: state[k] for k in saved}, saved)
        assert module.tokenizer_config.decode_fill == "mask_token"
    tiny_trainer(tmp_path, max_steps=2).fit(module, tiny_data(shards))
    assert module.step_count == 2


# ---------------------------------------------------------------- (d) frozen parts stay bit-identical
class ModeRecorder(pl.Callback):
    """The training mode of each part at every training step."""

    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.modes.append({part: getattr(module.tokenizer, part).training for part in ("encoder", "quantizer",
                                                                                       "decoder")})


def test_decoder_only_fine_tuning_leaves_encoder_and_quantizer_bit_identical(export, shards, tmp_path,
                                                                             caplog) -> None:
    module = fine_tune(export, freeze=DECODER_ONLY)
    before = weights(module)
    recorder = ModeRecorder()
    with caplog.at_level(logging.INFO):
        trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[recorder])
        trainer.fit(module, tiny_data(shards))
    after = weights(module)
    assert module.step_count == 3
    for prefix in ("tokenizer.encoder.", "tokenizer.quantizer.", "ema.module.encoder.", "ema.module.quantizer."):
        assert_same({k: v for k, v in after.items() if k.startswith(prefix)},
                    {k: v for k, v in before.items() if k.startswith(prefix)})
    assert any(k.startswith("tokenizer.quantizer.") and "cluster_size" in k for k in after)  # the EMA codebook
    decoder = [k for k in after if k.startswith("tokenizer.decoder.") and after[k].is_floating_point()]
    assert any(not torch.equal(after[k], before[k]) for k in decoder)
    assert recorder.modes == [{"encoder": False, "quantizer": False, "decoder": True}] * 3
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.tokenizer.decoder.parameters()}
    total = module.tokenizer.num_parameters()
    trainable = sum(p.numel() for p in module.tokenizer.decoder.parameters())
    assert (f"tokenizer: {total:,} parameters ({trainable:,} trainable, {total - trainable:,} frozen: encoder, "
            "quantizer)") in caplog.text
    assert f"the tokenizer and its EMA start from the export {export}" in caplog.text


def test_a_frozen_decoder_stays_bit_identical_while_encoder_and_codebook_train(export, shards, tmp_path) -> None:
    module = fine_tune(export, freeze=["decoder"])
    before = weights(module)
    tiny_trainer(tmp_path, max_steps=2).fit(module, tiny_data(shards))
    after = weights(module)
    assert_same(part_state(module, "tokenizer.decoder."), {k: v for k, v in before.items()
                                                            if k.startswith("tokenizer.decoder.")})
    for prefix in ("tokenizer.encoder.", "tokenizer.quantizer."):  # the encoder's weights, the EMA codebook
        assert any(not torch.equal(after[k], before[k]) for k in after
                   if k.startswith(prefix) and after[k].is_floating_point()), prefix
    module.train()  # a caller's train() keeps the frozen part in eval mode
    assert not module.tokenizer.decoder.training and module.tokenizer.encoder.training


def test_init_from_skips_the_pca_start_of_the_global_linear_path(tmp_path, shards) -> None:
    export = make_export(tmp_path / "linear", global_linear=True)
    module = fine_tune(export, freeze=DECODER_ONLY, pca_images=40)  # the PCA would rewrite the encoder
    tiny_trainer(tmp_path, max_steps=1).fit(module, tiny_data(shards))
    saved = exported(export)
    assert_same(part_state(module.tokenizer, "encoder."), {k: v for k, v in saved.items() if k.startswith("encoder.")})


# ---------------------------------------------------------------- (e) bad freeze lists
@pytest.mark.parametrize("freeze, error, expected", [
    (["encoder", "codebook"], ValueError,
     "model.freeze names the unknown part(s) 'codebook'; allowed: encoder, quantizer, decoder"),
    (["encoder", "quantizer", "decoder"], ValueError, "model.freeze names every part of the tokenizer"),
    (["quantizer"], ValueError, "model.freeze freezes the quantizer but not the encoder"),
    (["encoder", "decoder"], ValueError,
     "model.freeze [encoder, decoder] leaves nothing to train: the quantizer (vq) has no parameters"),
    ("decoder", TypeError, "model.freeze must be a list of parts among encoder, quantizer, decoder"),
], ids=["unknown", "all", "quantizer_alone", "nothing_left", "string"])
def test_a_bad_freeze_list_is_one_sentence(export, freeze, error, expected) -> None:
    with pytest.raises(error) as raised:
        fine_tune(export, freeze=freeze)
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


# ---------------------------------------------------------------- (f) a resume takes the checkpoint's weights
def test_a_resumed_fine_tune_takes_the_checkpoints_weights_not_the_exports(export, shards, tmp_path) -> None:
    full = fine_tune(export, freeze=DECODER_ONLY)
    tiny_trainer(tmp_path / "full", max_steps=3, callbacks=[every_step(tmp_path / "ckpt")]).fit(full,
                                                                                                tiny_data(shards))
    checkpoint = torch.load(tmp_path / "ckpt" / "step=2.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["init_from"] == str(export)
    assert checkpoint["hyper_parameters"]["freeze"] == DECODER_ONLY
    saved = exported(export)
    assert not torch.equal(checkpoint["state_dict"]["tokenizer.decoder.head.weight"], saved["decoder.head.weight"])
    at_checkpoint = fine_tune(export, freeze=DECODER_ONLY)  # built from the export, then the checkpoint loads
    tiny_trainer(tmp_path / "same", max_steps=2).fit(at_checkpoint, tiny_data(shards),
                                                      ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert_same(weights(at_checkpoint), checkpoint["state_dict"])
    resumed = fine_tune(export, freeze=DECODER_ONLY)
    tiny_trainer(tmp_path / "resumed", max_steps=3).fit(resumed, tiny_data(shards),
                                                         ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert resumed.step_count == 3
    assert_same(weights(resumed), weights(full))


# ---------------------------------------------------------------- the command line
def cli_config(tmp_path: Path, shards: list[str], export: Path, **model: object) -> Path:
    config = {
        "trainer": {"default_root_dir": str(tmp_path / "run"), "accelerator": "cpu", "devices": 1, "max_steps": 2,
                    "num_sanity_val_steps": 0, "enable_model_summary": False, "enable_progress_bar": False,
                    "logger": False},
        "model": {"preset": None, "init_from": str(export), "freeze": DECODER_ONLY,
                  "optim": {"warmup_steps": 1}, **model},
        "data": tiny_data_settings(shards),
        "skip_report": True,
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(capfd, caplog, monkeypatch, *args: str) -> tuple[int, str]:
    """main(args) -> (exit status, what it printed and logged)."""
    from vartok.cli.train import main

    monkeypatch.setattr(sys, "argv", ["vartok-train"])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code, out, err = commands.run_main(main, capfd, *args)
    return code, out + err + "\n".join(record.getMessage() for record in caplog.records)


def test_the_command_line_fine_tunes_and_resumes_from_an_export(export, shards, tmp_path, capfd,
                                                                caplog, monkeypatch) -> None:
    code, text = cli(capfd, caplog, monkeypatch, "fit", "--help")
    assert code == 0 and "--model.init_from" in text and "--model.freeze" in text
    config = cli_config(tmp_path, shards, export)
    code, text = cli(capfd, caplog, monkeypatch, "fit", "--config", str(config))
    assert code == 0, text[-3000:]
    assert "frozen: encoder, quantizer)" in text
    [checkpoint] = (tmp_path / "run").rglob("*.ckpt")
    code, text = cli(capfd, caplog, monkeypatch, "fit", "--config", str(config), "--trainer.max_steps", "3",
                     "--ckpt_path", str(checkpoint))
    assert code == 0, text[-3000:]
    assert "start from the export" not in text  # the checkpoint's weights, not the export's
    [latest] = [p for p in (tmp_path / "run").rglob("*.ckpt") if "step=3" in p.name]
    state = torch.load(latest, map_location="cpu", weights_only=True)["state_dict"]
    saved = exported(export)
    assert_same({k: v for k, v in state.items() if k.startswith("tokenizer.encoder.")},
                {f"tokenizer.{k}": v for k, v in saved.items() if k.startswith("encoder.")})
    assert not torch.equal(state["tokenizer.decoder.head.weight"], saved["decoder.head.weight"])


def test_the_command_line_refuses_a_mismatching_preset_in_one_sentence(export, shards, tmp_path, capfd,
                                                                       caplog, monkeypatch) -> None:
    config = cli_config(tmp_path, shards, export, preset="demo_tiny")
    code, text = cli(capfd, caplog, monkeypatch, "fit", "--config", str(config))
    commands.assert_one_sentence("vartok-train", code, text,
                                 f"model.init_from {export / 'config.json'} has num_tokens 8 but the run has 4")


# ---------------------------------------------------------------- slow: 2 processes (torchrun)
def ddp_main(args: dict) -> None:
    """One torchrun rank: decoder-only fine-tuning under plain `ddp`; writes what each part's weights became."""
    torch.set_num_threads(1)
    module = fine_tune(Path(args["export"]), freeze=DECODER_ONLY)
    before = {part: state_hash(getattr(module.tokenizer, part)) for part in ("encoder", "quantizer", "decoder")}
    data = tiny_data(args["shards"], batch_size=4, epoch_size=16)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, data)
    after = {part: state_hash(getattr(module.tokenizer, part)) for part in ("encoder", "quantizer", "decoder")}
    record = {"before": before, "after": after, "step_count": module.step_count,
              "world_size": trainer.world_size, "ema": state_hash(module.ema)}
    Path(args["out"], f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_decoder_only_fine_tuning_keeps_frozen_parts_and_ranks_identical(export, shards, tmp_path) -> None:
    args = {"export": str(export), "shards": shards, "out": str(tmp_path)}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           __file__, json.dumps(args)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["world_size"] == 2 and ranks[0]["step_count"] == 3
    record = ranks[0]
    assert record["after"]["encoder"] == record["before"]["encoder"]
    assert record["after"]["quantizer"] == record["before"]["quantizer"]  # no EMA codebook update, synced or not
    assert record["after"]["decoder"] != record["before"]["decoder"]


if __name__ == "__main__":
    ddp_main(json.loads(sys.argv[1]))
