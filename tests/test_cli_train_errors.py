"""`vartok-train`: each user mistake is one sentence (exit 2) before the data, the PCA or the first step, and a
run prints what concerns it (no advertisement, no "Epoch 0/-2", no warning about its own folders).

Every case runs `main([...])` in-process on 16 px crops with a tiny model and a few steps.
"""

from __future__ import annotations

import logging
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.fixtures import commands
from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.resume_fit import tiny_data_settings
from vartok.cli.train import main


@pytest.fixture(autouse=True)
def command_name(monkeypatch) -> None:
    """As the installed command: Lightning reads sys.argv (here pytest's) besides main's arguments."""
    monkeypatch.setattr(sys, "argv", ["vartok-train"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return photo_shards(tmp_path_factory.mktemp("shards"), count=64, size=16, shards=2)


def write_config(tmp_path: Path, shards: list[str], **sections: dict) -> Path:
    """A tiny fit (demo_tiny with 8 tokens, 16 px, 4 batches of 16 per epoch, 3 steps); `sections` update the
    trainer / model / data sections."""
    config = {
        "trainer": {"default_root_dir": str(tmp_path / "run"), "accelerator": "cpu", "devices": 1, "max_steps": 3,
                    "num_sanity_val_steps": 0, "enable_model_summary": False, "log_every_n_steps": 1},
        "model": {"preset": "demo_tiny", "tokenizer": {"num_tokens": 8}, "optim": {"warmup_steps": 1}},
        "data": tiny_data_settings(shards),
        "skip_report": True,
    }
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(capfd, *args: str) -> tuple[int, str, str]:
    """main(args) → (exit status, stdout, stderr)."""
    code, out, err = commands.run_main(main, capfd, *args)
    print(f"vartok-train {' '.join(args)} -> {code}\n{err[-600:]}")  # shown with -s or on a failure
    return code, out, err


def assert_one_sentence(code: int, out: str, err: str, *parts: str) -> None:
    """Exit 2, one `vartok-train: error:` line naming every part, and no step (the module's parameter count is
    printed at the start of the first step's fit, after the PCA)."""
    commands.assert_one_sentence("vartok-train", code, err, *parts)
    assert "parameters" not in out + err


def empty_tar(path: Path, members: dict[str, bytes] | None = None) -> str:
    """A tar holding `members` (none: an empty tar)."""
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


# ---------------------------------------------------------------------- 1. typed tokenizer / discriminator
@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["flag", "yaml_tokenizer", "yaml_discriminator"])
def test_an_unknown_tokenizer_or_discriminator_key_is_refused_by_the_parser(where, shards, tmp_path, capfd):
    if where == "flag":
        config, extra, key = write_config(tmp_path, shards), ["--model.tokenizer.num_tokenz", "8"], "num_tokenz"
    elif where == "yaml_tokenizer":
        config, extra, key = write_config(tmp_path, shards, model={"tokenizer": {"num_tokenz": 8}}), [], "num_tokenz"
    else:  # without a GAN the discriminator is never built: the key was silently ignored
        config, extra, key = write_config(tmp_path, shards, model={"discriminator": {"depth": 2}}), [], "depth"
    code, _out, err = run(capfd, "fit", "--config", str(config), *extra)
    assert code == 2 and key in err.splitlines()[-1] and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
def test_help_lists_the_fields_and_only_what_works(capfd):
    code, out, _ = run(capfd, "fit", "--help")
    assert code == 0
    for flag in ("--model.tokenizer.num_tokens", "--model.tokenizer.quantizer_args",
                 "--model.discriminator.channels", "--model.discriminator.num_layers"):
        assert flag in out, flag
    assert "--optimizer" not in out and "--lr_scheduler" not in out
    code, out, _ = run(capfd, "--help")
    assert code == 0 and "fit" in out and "validate" in out
    assert "predict" not in out and "test " not in out


def test_python_callers_give_a_dict_or_the_dataclass():
    from dataclasses import asdict

    from vartok.models.discriminator import DiscriminatorArgs
    from vartok.tokenizers.config import TokenizerOverrides
    from vartok.training.module import TokenizerModule
    from vartok.training.settings import LossWeights

    by_dict = TokenizerModule(preset="demo_tiny", tokenizer={"num_tokens": 8})
    typed = TokenizerModule(preset="demo_tiny", tokenizer=TokenizerOverrides(num_tokens=8))
    assert by_dict.tokenizer_config == typed.tokenizer_config and typed.tokenizer_config.num_tokens == 8
    assert by_dict.hparams["tokenizer"] == typed.hparams["tokenizer"] == {"num_tokens": 8}  # plain values
    gan = TokenizerModule(preset="demo_tiny", loss=LossWeights(gan=0.1), discriminator={"channels": 8, "num_layers": 2,
                                                                                         "norm_groups": 4})
    assert gan.hparams["discriminator"] == asdict(DiscriminatorArgs(channels=8, num_layers=2, norm_groups=4))
    with pytest.raises(ValueError, match=r"model.tokenizer has unknown fields \['num_tokenz'\]; allowed: image_size"):
        TokenizerModule(preset="demo_tiny", tokenizer={"num_tokenz": 8})
    with pytest.raises(ValueError, match=r"model.discriminator has unknown arguments \['depth'\]; allowed: channels"):
        TokenizerModule(preset="demo_tiny", discriminator={"depth": 2})


# ---------------------------------------------------------------------- 2. image sizes
@pytest.mark.timeout(60)
def test_data_image_size_other_than_the_tokenizers_stops_at_the_start(shards, tmp_path, capfd):
    code, out, err = run(capfd, "fit", "--config", str(write_config(tmp_path, shards)), "--data.image_size", "32")
    assert_one_sentence(code, out, err, "data.image_size=32", "model.tokenizer.image_size=16")


# ---------------------------------------------------------------------- 3, 4. checkpoints
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_ckpt_path_that_is_a_folder_or_missing(kind, shards, tmp_path, capfd):
    path = tmp_path if kind == "folder" else tmp_path / "missing.ckpt"
    code, out, err = run(capfd, "fit", "--config", str(write_config(tmp_path, shards)), "--ckpt_path", str(path))
    assert_one_sentence(code, out, err, f"--ckpt_path {path}",
                        "is a folder, not a checkpoint file" if kind == "folder" else "does not exist")


@pytest.mark.timeout(120)
def test_resuming_another_architecture_names_the_fields(shards, tmp_path, capfd):
    every_step = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1}}
    config = str(write_config(tmp_path, shards, trainer={"max_steps": 2, "callbacks": [every_step]}))
    assert run(capfd, "fit", "--config", config)[0] == 0
    last = tmp_path / "run" / "logs" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # plain values only
    assert saved["hyper_parameters"]["tokenizer"] == {"num_tokens": 8}
    code, _out, err = run(capfd, "fit", "--config", config, "--trainer.max_steps", "4", "--ckpt_path", "last",
                         "--model.tokenizer.latent_attention", "prefix_causal")
    commands.assert_one_sentence("vartok-train", code, err, str(last),
                                 "tokenizer.latent_attention 'full' in the checkpoint, 'prefix_causal' requested",
                                 "--model.tokenizer.latent_attention full", "without --ckpt_path")
    assert torch.load(last, weights_only=True)["global_step"] == 2  # nothing trained


# ---------------------------------------------------------------------- 5, 7. data
@pytest.mark.timeout(60)
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_shard_without_samples_is_named(split, shards, tmp_path, capfd):
    empty = empty_tar(tmp_path / "empty.tar")
    no_samples = empty_tar(tmp_path / "readme.tar", {"README": b"not a sample"})
    data = {"train_shards": [*shards, empty]} if split == "train" else {"val_shards": [shards[0], no_samples]}
    code, out, err = run(capfd, "fit", "--config", str(write_config(tmp_path, shards, data=data)))
    assert_one_sentence(code, out, err, f"data.{split}_shards", empty if split == "train" else no_samples,
                        "holds no samples")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["single_pass", "resampled", "epoch_size"])
def test_less_data_than_one_batch(case, shards, tmp_path, capfd):
    data = {"single_pass": {"resampled": False, "epoch_size": None, "batch_size": 128},
            "resampled": {"epoch_size": None, "batch_size": 128},
            "epoch_size": {"epoch_size": 8}}[case]
    code, out, err = run(capfd, "fit", "--config", str(write_config(tmp_path, shards, data=data)))
    parts = {"single_pass": ["data.resampled is false", "64 training samples", "data.batch_size=128"],
             "resampled": ["64 training samples", "data.batch_size=128", "data.epoch_size"],
             "epoch_size": ["data.epoch_size=8 is smaller than data.batch_size=16"]}[case]
    assert_one_sentence(code, out, err, *parts)


# ---------------------------------------------------------------------- 6. what the command offers
@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["test"], ["predict"], ["fit", "--optimizer", "Adam"],
                                  ["fit", "--lr_scheduler", "StepLR"]], ids=lambda a: a[-1])
def test_optimizer_scheduler_test_and_predict_are_refused(args, shards, tmp_path, capfd):
    config = str(write_config(tmp_path, shards))
    code, _out, err = run(capfd, args[0], "--config", config, *args[1:])
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert (f"invalid choice: '{args[0]}'" if len(args) == 1 else f"unrecognized arguments: {args[1]}") in last, last
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
def test_validate_works_and_needs_validation_data(shards, tmp_path, capfd):
    config = str(write_config(tmp_path, shards, data={"val_shards": shards[:1]}))
    code, out, err = run(capfd, "validate", "--config", config)
    assert code == 0 and "val/psnr" in out, err[-2000:]
    code, out, err = run(capfd, "validate", "--config", str(write_config(tmp_path, shards)))
    assert_one_sentence(code, out, err, "data.val_shards")


# ---------------------------------------------------------------------- 8. what a run prints
@pytest.mark.timeout(180)
def test_a_run_prints_steps_and_no_advertisement_or_folder_warning(shards, tmp_path, capfd, caplog, recwarn):
    every_step = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1}}
    # 6 steps over epochs of 4 batches: the bar counts steps across the epoch boundary.
    config = str(write_config(tmp_path, shards, trainer={"max_steps": 6, "callbacks": [every_step]}))
    outputs = []
    with caplog.at_level(logging.INFO):
        for extra in ([], [], ["--trainer.max_steps", "8", "--ckpt_path", "last"]):  # fresh, fresh again, resume
            code, out, err = run(capfd, "fit", "--config", config, *extra)
            assert code == 0, err[-3000:]
            outputs.append(out + err + "\n".join(r.getMessage() for r in caplog.records))
            caplog.clear()
    warned = [str(w.message) for w in recwarn]
    for text in outputs:
        assert "💡" not in text and "litlogger" not in text and "litmodels" not in text
        assert "Epoch 0/-2" not in text and "/-2" not in text
        assert "exists and is not empty" not in text
    assert not [m for m in warned if "exists and is not empty" in m or "LeafSpec" in m], warned
    assert "6/6" in outputs[0] and "8/8" in outputs[2]  # steps out of max_steps
    assert "earlier run" not in outputs[0] and "earlier run" not in outputs[2]
    assert "holds checkpoints of an earlier run" in outputs[1] and "--ckpt_path last" in outputs[1]
