"""Every shipped YAML parses with LightningCLI(run=False) and builds its model and data module."""

from pathlib import Path

import pytest

from vartok.cli.train import VartokCLI
from vartok.data import ImageDataModule
from vartok.training.module import TokenizerModule

ROOT = Path(__file__).resolve().parents[1]
# configs/prior/ configures vartok-prior (tests/test_prior_training.py); every other config vartok-train
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "prior" not in p.relative_to(ROOT).parts)


def fake_shards(tmp_path: Path) -> list[str]:
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            buffer = io.BytesIO()
            Image.fromarray(np.full((40, 40, 3), i * 40, np.uint8)).save(buffer, format="PNG")
            info = tarfile.TarInfo(f"img{i:04d}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
    return [f"--data.train_shards={path}", f"--data.val_shards={path}"]


def tiny_titok_export(tmp_path: Path) -> Path:
    """A small single-stage TiTok-architecture export (what vartok-convert writes, at 32 px)."""
    from vartok import Tokenizer
    from vartok.tokenizers import TokenizerConfig

    config = TokenizerConfig(architecture="titok", image_size=32, patch_size=8, width=32, depth=1, heads=2,
                             num_tokens=8, quantizer="titok_vq", quantizer_args={"codebook_size": 128,
                                                                                 "codebook_dim": 8},
                             linear_shortcut=False)
    return Tokenizer.from_config(config).save_pretrained(tmp_path / "titok_export")


def tiny_demo_export_and_prior(tmp_path: Path) -> tuple[Path, Path]:
    """A narrow demo-preset export (32 tokens, 32 px) and a small token prior for its tokens."""
    from vartok import Tokenizer
    from vartok.models.prior import TokenPrior, TokenSpec

    tok = Tokenizer.from_preset("demo", width=32, depth=1, heads=2)
    export = tok.save_pretrained(tmp_path / "demo_export")
    spec = TokenSpec.from_quantizer(tok.quantizer, tok.num_tokens)
    return export, TokenPrior(spec, width=32, depth=1, heads=2).save_pretrained(tmp_path / "demo_prior")


def test_there_are_configs():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert {"demo.yaml", "imagenet/titok_s128.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_parses_and_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = config.read_text()
    args = ["--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    if "imagenet" in config.parts:
        args += fake_shards(tmp_path)
        args += ["--model.tokenizer", '{"depth": 1, "image_size": 32}', "--data.image_size", "32"]
    if "posttrain" in config.parts:  # a 32-token export (the recipe's tail drop) and a prior for its tokens
        export, prior = tiny_demo_export_and_prior(tmp_path)
        args += ["--model.init_from", str(export), "--model.posttrain.prior", str(prior)]
    if "finetune" in config.parts:  # a fine-tune takes its architecture from the export it starts from
        args += fake_shards(tmp_path) + ["--model.init_from", str(tiny_titok_export(tmp_path)), "--data.image_size",
                                         "32"]
    cli = VartokCLI(TokenizerModule, ImageDataModule, run=False, args=args, save_config_kwargs={"overwrite": True})
    assert isinstance(cli.model, TokenizerModule)
    assert isinstance(cli.datamodule, ImageDataModule)
    assert cli.trainer.max_steps > 0
    assert "preset" in text


def test_imagenet_recipe_requires_shards(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "imagenet" / "titok_s128.yaml"
    with pytest.raises(ValueError, match="data.train_shards is required"):
        VartokCLI(TokenizerModule, ImageDataModule, run=False, args=["--config", str(config)])
