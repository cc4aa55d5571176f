"""Training a token prior (`PriorModule`, `vartok-prior`) on a frozen tokenizer export's tokens.

Fast (one process, CPU, 16 px crops, a randomly initialised `demo_tiny` VQ export: 4 tokens of 4096 codes):
- a short fit lowers the held-out bits per token, which equal a hand computation over the validation images
  with the exported prior (measured again at the last step when the last validation was earlier); the export
  loads and passes check_tokenizer; the tokenizer's weights are bit-identical after the fit and in no state
  dict or checkpoint; a checkpoint resumes, and one of a prior for other tokens is refused;
- `length` models a prefix; a class-conditional prior trains on labelled batches and is one sentence on
  vartok's unlabelled image data or on a batch without labels;
- bad settings (tokenizer folder, length, init_from for another tokenizer or architecture, image size) are
  one sentence; `vartok-prior --help`, and a scaled-down `vartok-prior fit --config configs/prior/demo.yaml`.

Slow (2 gloo processes through torchrun, this file being the script): the logged `val/bits_per_token` equals
the single-process value on the same weights and images (and the hand computation): sums over ranks, each
image once, padding samples excluded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tests.fixtures import commands
from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.processes import free_port, state_hash
from vartok.cli.prior import main
from vartok.data import ImageDataModule, val_loader
from vartok.models.prior import TokenPrior, TokenSpec
from vartok.tokenizers.tokenizer import Tokenizer
from vartok.training.prior_module import PriorModule

ROOT = Path(__file__).resolve().parents[1]
VAL_COUNT, TOKENS, WORLD = 13, 4, 2  # 13 held-out crops: not a multiple of the ranks x batch
TINY = {"width": 32, "depth": 1, "heads": 2, "lr": 3e-3, "warmup_steps": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny VQ export (4 tokens, 4096 codes, 16 px), 64 training and 13 validation crops."""
    root = tmp_path_factory.mktemp("prior_training")
    torch.manual_seed(0)
    export = Tokenizer.from_preset("demo_tiny", quantizer="vq").save_pretrained(root / "export")
    return {"export": str(export), "train": photo_shards(root / "train", count=64, size=16, shards=2, seed=0),
            "val": photo_shards(root / "val", count=VAL_COUNT, size=16, shards=2, seed=1)}


def data(setup: dict, **kwargs) -> ImageDataModule:
    settings = {"train_shards": setup["train"], "val_shards": setup["val"], "image_size": 16, "batch_size": 16,
                "val_batch_size": 4, "num_workers": 0, "epoch_size": 64, "shuffle_buffer": 16}
    return ImageDataModule(**{**settings, **kwargs})


def trainer(root: Path, max_steps: int, devices: int = 1, **kwargs) -> pl.Trainer:
    settings = {"default_root_dir": root, "max_steps": max_steps, "accelerator": "cpu", "devices": devices,
                "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                "enable_checkpointing": False, "num_sanity_val_steps": 0, "check_val_every_n_epoch": None,
                "val_check_interval": max_steps}
    return pl.Trainer(**{**settings, **kwargs})


def held_out_bits(prior: TokenPrior, export: str, shards: list[str], length: int = TOKENS) -> tuple[float, int]:
    """Oracle: bits per token of the first `length` tokens of every validation image, in one process."""
    tokenizer = Tokenizer.from_pretrained(export)
    nats, count = 0.0, 0
    with torch.no_grad():
        for batch in val_loader(shards, 16, 5, rank=0, world_size=1):
            images = batch["image"][batch["valid"]].float() / 255
            indices = tokenizer.encode(images).indices[:, :length]
            nats -= prior.log_prob(indices).double().sum().item()
            count += indices.numel()
    return nats / count / math.log(2), count


# ---------------------------------------------------------------------- fit, export, tokenizer untouched
@pytest.mark.timeout(120)
def test_fit_lowers_held_out_bits_exports_and_leaves_the_tokenizer_alone(setup, tmp_path) -> None:
    module = PriorModule(setup["export"], **TINY)
    tokenizer_before = state_hash(module.tokenizer)
    bits_before, _ = held_out_bits(module.prior, setup["export"], setup["val"])
    fit = trainer(tmp_path / "run", max_steps=20, val_check_interval=15)  # the last validation is at step 15
    fit.fit(module, datamodule=data(setup))
    summary = json.loads((tmp_path / "run" / "prior" / "training.json").read_text())
    assert summary["steps"] == summary["val_step"] == 20  # measured again at the last step
    prior = TokenPrior.from_pretrained(tmp_path / "run" / "prior")
    prior.check_tokenizer(module.spec, "the export", "the tokenizer")
    bits, count = held_out_bits(prior, setup["export"], setup["val"])
    assert summary["val_tokens"] == count == VAL_COUNT * TOKENS  # every image once, all its tokens
    assert summary["val_bits_per_token"] == pytest.approx(bits, rel=1e-6)
    assert bits < bits_before - 1, (bits_before, bits)
    assert summary["tokenizer"] == setup["export"] == prior.source["tokenizer"]
    # The tokenizer: bit-identical to the export, and in no state dict or checkpoint.
    assert state_hash(module.tokenizer) == tokenizer_before == state_hash(Tokenizer.from_pretrained(setup["export"]))
    assert all(key.startswith("prior.") for key in module.state_dict())
    fit.save_checkpoint(tmp_path / "step20.ckpt")
    saved = torch.load(tmp_path / "step20.ckpt", weights_only=True)
    assert all(key.startswith("prior.") for key in saved["state_dict"])

    # A resume continues; a checkpoint of a prior for other tokens is refused before its weights load.
    resumed = PriorModule(setup["export"], **TINY)
    trainer(tmp_path / "resumed", max_steps=22).fit(resumed, datamodule=data(setup), ckpt_path=tmp_path / "step20.ckpt")
    assert json.loads((tmp_path / "resumed" / "prior" / "training.json").read_text())["steps"] == 22
    other = Tokenizer.from_preset("demo_tiny", quantizer="vq", num_tokens=2).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"trained for the tokenizer .*export.*not for model.tokenizer .*other"):
        trainer(tmp_path / "refused", max_steps=22).fit(PriorModule(str(other), **TINY), datamodule=data(setup),
                                                        ckpt_path=tmp_path / "step20.ckpt")


@pytest.mark.timeout(60)
def test_length_models_a_prefix(setup, tmp_path) -> None:
    module = PriorModule(setup["export"], length=2, **TINY)
    trainer(tmp_path, max_steps=2).fit(module, datamodule=data(setup))
    summary = json.loads((tmp_path / "prior" / "training.json").read_text())
    assert summary["length"] == 2 and summary["val_tokens"] == VAL_COUNT * 2
    prior = TokenPrior.from_pretrained(tmp_path / "prior")
    assert summary["val_bits_per_token"] == pytest.approx(held_out_bits(prior, setup["export"], setup["val"], 2)[0],
                                                          rel=1e-6)


# ---------------------------------------------------------------------- class labels
class _Labelled(pl.LightningDataModule):
    """16 px images with a class label each (vartok's own data has none): class 1 images are brighter."""

    def __init__(self, labels: bool = True) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 128, (24, 3, 16, 16), dtype=torch.uint8, generator=generator)
        self.labels = torch.arange(24) % 2
        self.images[self.labels == 1] += 127
        self.with_labels = labels

    def _loader(self) -> DataLoader:
        items = [{"image": image, **({"label": label} if self.with_labels else {})}
                 for image, label in zip(self.images, self.labels)]
        return DataLoader(items, batch_size=8)

    train_dataloader = val_dataloader = _loader


@pytest.mark.timeout(60)
def test_a_class_conditional_prior_needs_labels(setup, tmp_path) -> None:
    module = PriorModule(setup["export"], num_classes=2, **TINY)
    trainer(tmp_path / "labelled", max_steps=2).fit(module, datamodule=_Labelled())
    assert math.isfinite(module.last_val["bits_per_token"]) and module.last_val["tokens"] == 24 * TOKENS
    assert TokenPrior.from_pretrained(tmp_path / "labelled" / "prior").num_classes == 2
    with pytest.raises(ValueError, match="model.num_classes=2 needs class labels, but the batch has no 'label'"):
        trainer(tmp_path / "unlabelled", max_steps=2).fit(PriorModule(setup["export"], num_classes=2, **TINY),
                                                          datamodule=_Labelled(labels=False))
    refused = PriorModule(setup["export"], num_classes=2, **TINY)
    with pytest.raises(ValueError, match="vartok's image data carries no class labels; set model.num_classes 0"):
        trainer(tmp_path / "images", max_steps=2).fit(refused, datamodule=data(setup))
    assert refused.last_val is None and not (tmp_path / "images" / "prior").exists()


# ---------------------------------------------------------------------- bad settings: one sentence
def test_bad_settings_are_one_sentence(setup, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"model.tokenizer .*missing is not a folder: give a tokenizer export"):
        PriorModule(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"model.tokenizer .*empty is not a usable tokenizer export: .*config.json is "
                                         "missing"):
        PriorModule(str(tmp_path / "empty"))
    for length in (0, TOKENS + 1):
        with pytest.raises(ValueError, match=rf"model.length must be in \[1, 4\] .*got {length}"):
            PriorModule(setup["export"], length=length)
    with pytest.raises(ValueError, match="model.lr must be a finite number > 0, got 0"):
        PriorModule(setup["export"], lr=0)
    # init_from: a prior for other tokens names both; one of another architecture names the settings.
    foreign = TokenPrior(TokenSpec(8, "categorical", 16), width=32, depth=1, heads=2).save_pretrained(tmp_path / "p8")
    with pytest.raises(ValueError, match=r"the prior model.init_from .*p8 predicts 8 tokens of 16 codes but the "
                                         r"tokenizer model.tokenizer .*export has 4 tokens of 4096 codes"):
        PriorModule(setup["export"], init_from=str(foreign), **TINY)
    wide = TokenPrior(TokenSpec(TOKENS, "categorical", 4096), width=64, depth=1, heads=2).save_pretrained(tmp_path / "w")
    with pytest.raises(ValueError, match=r"has \{'width': 64\}, but this run asks for \{'width': 32\}; set "
                                         "--model.width 64"):
        PriorModule(setup["export"], init_from=str(wide), **TINY)
    started = PriorModule(setup["export"], init_from=str(wide), **{**TINY, "width": 64})
    assert state_hash(started.prior) == state_hash(TokenPrior.from_pretrained(wide))
    module = PriorModule(setup["export"], **TINY)
    with pytest.raises(ValueError, match="data.image_size=32 does not match the image size 16 of model.tokenizer"):
        trainer(tmp_path / "size", max_steps=1).fit(module, datamodule=data(setup, image_size=32))


# ---------------------------------------------------------------------- the command
@pytest.fixture
def command(monkeypatch) -> None:
    """As the installed command: Lightning reads sys.argv (here pytest's) besides main's arguments."""
    monkeypatch.setattr(sys, "argv", ["vartok-prior"])


def run(capfd, *args: str) -> tuple[int, str, str]:
    """main(args) -> (exit status, stdout, stderr)."""
    return commands.run_main(main, capfd, *args)


def one_sentence(code: int, err: str, *parts: str) -> None:
    commands.assert_one_sentence("vartok-prior", code, err, *parts)


@pytest.mark.timeout(60)
def test_help(command, capfd) -> None:
    code, out, _ = run(capfd, "fit", "--help")
    assert code == 0
    for flag in ("--model.tokenizer", "--model.width", "--model.num_classes", "--model.length", "--model.init_from"):
        assert flag in out, flag
    assert "--optimizer" not in out and "--report_metrics" not in out


@pytest.mark.timeout(60)
def test_command_refusals(command, setup, tmp_path, capfd) -> None:
    config = str(ROOT / "configs" / "prior" / "demo.yaml")
    code, _, err = run(capfd, "fit", "--config", config, "--model.tokenizer", str(tmp_path / "nowhere"),
                       "--trainer.default_root_dir", str(tmp_path / "run"))
    one_sentence(code, err, f"model.tokenizer {tmp_path / 'nowhere'} is not a folder")
    foreign = TokenPrior(TokenSpec(8, "categorical", 16)).save_pretrained(tmp_path / "p8")
    code, _, err = run(capfd, "fit", "--config", config, "--model.tokenizer", setup["export"], "--model.init_from",
                       str(foreign), "--trainer.default_root_dir", str(tmp_path / "run"))
    one_sentence(code, err, "predicts 8 tokens of 16 codes", "has 4 tokens of 4096 codes", str(foreign),
                 setup["export"])
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_the_demo_config_scaled_down_trains_and_exports(command, setup, tmp_path, capfd, caplog) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run(
        capfd, "fit", "--config", str(ROOT / "configs" / "prior" / "demo.yaml"), "--model.tokenizer", setup["export"],
        "--model.width", "32", "--model.depth", "1", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(run_dir), "--data.train_shards", json.dumps(setup["train"]),
        "--data.val_shards", json.dumps(setup["val"]), "--data.image_size", "16", "--data.batch_size", "8",
        "--data.val_batch_size", "4", "--data.epoch_size", "32", "--data.shuffle_buffer", "8")
    assert code == 0, err[-3000:]
    assert "Step" in out and "3/3" in out  # vartok-train's progress bar: training steps out of max_steps
    assert f"exported the prior to {run_dir / 'prior'}" in caplog.text and "Traceback" not in err
    summary = json.loads((run_dir / "prior" / "training.json").read_text())
    assert summary["steps"] == summary["val_step"] == 3 and math.isfinite(summary["val_bits_per_token"])
    assert (run_dir / "logs" / "checkpoints" / "last.ckpt").is_file()
    metrics = (run_dir / "logs" / "metrics.csv").read_text()
    assert "val/bits_per_token" in metrics and "train/bits_per_token" in metrics


# ---------------------------------------------------------------------- slow: 2 processes (torchrun)
def ddp_main(args: dict) -> None:
    """One torchrun rank: a 4-step fit validated at its last step; writes what it logged."""
    torch.set_num_threads(1)
    setup = {"train": args["train"], "val": args["val"]}
    module = PriorModule(args["export"], **TINY)
    fit = trainer(Path(args["out"]), max_steps=4, devices=WORLD, strategy="ddp")
    fit.fit(module, datamodule=data(setup, batch_size=8, val_batch_size=2, epoch_size=32))
    record = {"logged": float(fit.callback_metrics["val/bits_per_token"]), "last_val": module.last_val,
              "prior": state_hash(module.prior), "tokenizer": state_hash(module.tokenizer)}
    Path(args["out"], f"rank{fit.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_ddp_bits_per_token_equal_one_process(setup, tmp_path) -> None:
    args = {**setup, "out": str(tmp_path / "out")}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
           str(free_port()), __file__, json.dumps(args)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0] == ranks[1]  # the same weights and the same (global) figure on both ranks
    assert ranks[0]["last_val"]["tokens"] == VAL_COUNT * TOKENS  # each image once, padding excluded
    # One process on the same weights and images: Lightning's validate, and the hand computation.
    export = tmp_path / "out" / "prior"
    single = PriorModule(setup["export"], init_from=str(export), **TINY)
    logged = trainer(tmp_path / "single", max_steps=1).validate(single, datamodule=data(setup))[0]
    bits, _ = held_out_bits(TokenPrior.from_pretrained(export), setup["export"], setup["val"])
    assert ranks[0]["logged"] == pytest.approx(logged["val/bits_per_token"], rel=1e-6)
    assert ranks[0]["last_val"]["bits_per_token"] == pytest.approx(bits, rel=1e-9)


if __name__ == "__main__":
    ddp_main(json.loads(sys.argv[1]))
