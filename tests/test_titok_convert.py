"""vartok-convert titok: what it accepts (folders, files, config.json, the repository's YAML, a released name)
and the one-sentence refusals of everything else, before any weight is written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.fixtures import commands
from tests.test_titok_parity import released_checkpoint
from vartok import Tokenizer
from vartok.cli.convert import main as convert_main
from vartok.convert.titok import convert_titok, reference_key
from vartok.tokenizers.config import RELEASED_TITOK, titok_fields


@pytest.fixture
def released(tmp_path) -> Path:
    released_checkpoint("single_stage", tmp_path / "released")
    return tmp_path / "released"


def run(capsys, *args: str) -> tuple[int, str, str]:
    return commands.run_main(convert_main, capsys, "titok", *args)


def refused(capsys, *args: str) -> str:
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vartok-convert: error: "), err
    return lines[0]


def test_the_block_names_map_to_timm_names():
    assert reference_key("encoder.transformer.3.attn.in_proj_weight") == "encoder.blocks.3.attn.qkv.weight"
    assert reference_key("decoder.transformer.0.attn.out_proj.bias") == "decoder.blocks.0.attn.proj.bias"
    assert reference_key("decoder.transformer.1.mlp.c_fc.weight") == "decoder.blocks.1.mlp.fc1.weight"
    assert reference_key("encoder.transformer.1.ln_2.bias") == "encoder.blocks.1.norm2.bias"
    assert reference_key("pixel_quantize.embedding.weight") == "decoder.proxy_codebook.weight"
    assert reference_key("pixel_decoder.up.2.block.0.conv1.weight") == "decoder.pixel_decoder.up.2.block.0.conv1.weight"
    assert reference_key("latent_tokens") == "encoder.latent_tokens"
    assert reference_key("quantize.embedding.weight") == "quantizer.embedding.weight"


def test_the_repositorys_yaml_gives_the_same_export_as_config_json(released, tmp_path):
    values = json.loads((released / "config.json").read_text())
    (tmp_path / "titok.yaml").write_text(yaml.safe_dump(values))
    (released / "config.json").unlink()
    convert_titok(released / "pytorch_model.bin", tmp_path / "from_yaml", config=str(tmp_path / "titok.yaml"))
    a = load_file(str(tmp_path / "from_yaml" / "model.safetensors"))
    (released / "config.json").write_text(json.dumps(values))
    convert_titok(released, tmp_path / "from_json")
    b = load_file(str(tmp_path / "from_json" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_released_name_is_a_config_the_converter_reads():
    for name, vq_model in RELEASED_TITOK.items():
        fields = titok_fields(vq_model, 256)
        assert fields["image_size"] == 256 and fields["patch_size"] == 16, name


def test_a_missing_config_names_the_three_ways_to_give_one(released, tmp_path, capsys):
    (released / "config.json").unlink()
    line = refused(capsys, "--checkpoint", str(released), "--out", str(tmp_path / "out"))
    assert "no config.json beside" in line and "--config" in line and "titok_l32" in line
    assert not (tmp_path / "out").exists()


def test_a_config_that_disagrees_with_the_weights_names_the_first_weight(released, tmp_path, capsys):
    values = json.loads((released / "config.json").read_text())
    values["model"]["vq_model"]["token_size"] = 12
    (released / "config.json").write_text(json.dumps(values))
    line = refused(capsys, "--checkpoint", str(released), "--out", str(tmp_path / "out"))
    assert "disagrees with" in line and "(16, 512, 1, 1) in the checkpoint but (12, 512, 1, 1) by the config" in line
    assert not (tmp_path / "out").exists()


def test_a_released_name_of_another_model_is_refused(released, tmp_path, capsys):
    line = refused(capsys, "--checkpoint", str(released / "pytorch_model.bin"), "--config", "titok_s128",
                   "--out", str(tmp_path / "out"))
    assert "does not match the architecture of titok_s128" in line


def test_a_partial_checkpoint_names_the_missing_keys(released, tmp_path, capsys):
    state = torch.load(released / "pytorch_model.bin", weights_only=True)
    del state["decoder.conv_out.weight"]
    state["decoder.extra.weight"] = torch.zeros(1)
    torch.save(state, released / "pytorch_model.bin")
    line = refused(capsys, "--checkpoint", str(released), "--out", str(tmp_path / "out"))
    assert "1 missing keys ['decoder.conv_out.weight']" in line and "1 unexpected keys ['decoder.extra.weight']" in line


def test_a_checkpoint_of_another_architecture_says_so(released, tmp_path, capsys):
    from vartok.tokenizers import preset_config

    Tokenizer.from_config(preset_config("demo_tiny")).save_pretrained(tmp_path / "vartok_export")
    (tmp_path / "vartok_export" / "config.json").write_text((released / "config.json").read_text())
    line = refused(capsys, "--checkpoint", str(tmp_path / "vartok_export"), "--out", str(tmp_path / "out"))
    assert "is not a TiTok-family checkpoint" in line


def test_pickled_objects_are_never_unpickled(released, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    with open(released / "pytorch_model.bin", "wb") as f:
        pickle.dump({"encoder.x": Payload()}, f)
    line = refused(capsys, "--checkpoint", str(released), "--out", str(tmp_path / "out"))
    assert "weights_only=True" in line
    assert "unpickled!" not in capsys.readouterr().out


def test_a_training_checkpoint_is_not_a_state_dict(released, tmp_path, capsys):
    torch.save({"state_dict": torch.load(released / "pytorch_model.bin", weights_only=True), "step": 3},
               released / "pytorch_model.bin")
    line = refused(capsys, "--checkpoint", str(released), "--out", str(tmp_path / "out"))
    assert "not a flat state dict of tensors" in line


@pytest.mark.parametrize(("change", "expected"), [
    ("vae", "quantize_mode 'vae'"),
    ("no_crop", "lacks 'dataset'"),
])
def test_unsupported_or_incomplete_configs(released, tmp_path, capsys, change, expected):
    values = json.loads((released / "config.json").read_text())
    if change == "vae":
        values["model"]["vq_model"]["quantize_mode"] = "vae"
    else:
        del values["dataset"]
    (released / "config.json").write_text(json.dumps(values))
    line = refused(capsys, "--checkpoint", str(released), "--out", str(tmp_path / "out"))
    assert expected in line and str(released / "config.json") in line


def test_missing_paths(tmp_path, capsys):
    assert "does not exist" in refused(capsys, "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    assert "holds neither model.safetensors nor pytorch_model.bin" in refused(
        capsys, "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
