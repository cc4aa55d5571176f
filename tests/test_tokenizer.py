"""Tokenizer: presets, encode/decode contract, save/load round trip, bad input."""

import json
import subprocess
import sys

import pytest
import torch

from vartok import Tokenizer
from vartok.tokenizers import PRESETS, TokenizerConfig, preset_config


# The released TiTok presets take 15-40 s each even at depth 1 (their 1024-wide decoders and the VQGAN pixel
# decoder): their layers run at a small size in tests/test_titok_model.py and tests/test_titok_parity.py.
@pytest.mark.parametrize("name", sorted(n for n in PRESETS if not n.startswith("released_")))
def test_every_preset_forward_backward(name):
    # A small input: presets keep width, heads, tokens and quantizer; the image shrinks to 2x2 patches
    # and depth to 1 so that the 24-block L presets stay seconds long on CPU.
    base = PRESETS[name]
    overrides = {"image_size": 2 * base["patch_size"], "depth": 1} if base["image_size"] > 64 else {}
    tok = Tokenizer.from_config(preset_config(name, **overrides))
    size = tok.image_size
    images = torch.rand(2, 3, size, size)
    out = tok(images)
    assert out.recon.shape == images.shape
    loss = (out.recon - images).pow(2).mean() + sum(out.quantizer.losses.values(), torch.zeros(()))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in tok.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tok.eval()
    with torch.no_grad():
        indices = tok.encode(images).indices
        for k in range(1, tok.num_tokens + 1, max(1, tok.num_tokens // 4)):
            recon = tok.decode(indices, length=k)
            assert recon.shape == images.shape and recon.min() >= 0 and recon.max() <= 1


def test_titok_presets_have_the_published_shapes():
    for size, (width, depth) in {"s": (512, 8), "b": (768, 12), "l": (1024, 24)}.items():
        for tokens in (32, 64, 128, 256):
            config = preset_config(f"titok_{size}_{tokens}")
            assert (config.width, config.depth, config.num_tokens) == (width, depth, tokens)
            assert (config.image_size, config.patch_size) == (256, 16)


@pytest.mark.parametrize("quantizer", ["vq", "fsq", "lfq", "bsq", "gq"])
def test_save_load_round_trip_is_bit_exact(tmp_path, quantizer):
    tok = Tokenizer.from_preset("demo_tiny", quantizer=quantizer, quantizer_args={"bits": 8, "groups": 2}
                                if quantizer == "gq" else {}).eval()
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        indices = tok.encode(images).indices
        recon = tok.decode(indices, length=torch.tensor([1, 3, 4]))
    tok.save_pretrained(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded.encode(images).indices, indices)
        assert torch.equal(loaded.decode(indices, length=torch.tensor([1, 3, 4])), recon)
    assert loaded.config == tok.config


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_an_older_config_json_with_some_quantizer_args_still_loads(tmp_path, quantizer):
    # Exports written before the config recorded every constructor keyword hold only a few of them.
    tok = Tokenizer.from_preset("demo_tiny", quantizer=quantizer).eval()
    tok.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["tokenizer"]["quantizer_args"] == tok.config.quantizer_args  # the complete quantizer
    partial = {"vq": {"codebook_size": 4096, "codebook_dim": 12}, "fsq": {"levels": [5, 5, 5]}}[quantizer]
    meta["tokenizer"]["quantizer_args"] = partial
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.config == tok.config
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.encode(images).indices, tok.encode(images).indices)


def test_loading_imports_no_lightning(tmp_path):
    Tokenizer.from_preset("demo_tiny").save_pretrained(tmp_path)
    code = (
        "import sys, torch; from vartok import Tokenizer; "
        f"t = Tokenizer.from_pretrained({str(tmp_path)!r}); t.decode(t.encode(torch.rand(1, 3, 16, 16)).indices); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_from_pretrained_names_the_wrong_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "absent")
    Tokenizer.from_preset("demo_tiny").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        Tokenizer.from_pretrained(tmp_path)
    Tokenizer.from_preset("demo_tiny").save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        Tokenizer.from_pretrained(tmp_path)
    meta = {"format": "vartok-tokenizer", "version": 1, "tokenizer": {"image_size": 16, "nonsense": 1}}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="nonsense"):
        Tokenizer.from_pretrained(tmp_path)
    # A config that disagrees with the weights (other width) is named too.
    other = Tokenizer.from_config(preset_config("demo_tiny", width=64))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        Tokenizer.from_pretrained(tmp_path / "other")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image_size": 30}, "not divisible by tokenizer.patch_size"),
        ({"num_tokens": 0}, "num_tokens"),
        ({"quantizer": "pq"}, "quantizer 'pq' is unknown"),
        ({"width": 30, "heads": 4}, "width 30 is not divisible"),
        ({"quantizer_args": {"levels": [8, 1]}}, "levels"),
    ],
)
def test_bad_config_names_field_value_and_allowed(overrides, field):
    with pytest.raises(ValueError, match=field):
        Tokenizer.from_config(preset_config("demo_tiny", **overrides))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'nope'; allowed: .*demo"):
        Tokenizer.from_preset("nope")


@pytest.mark.parametrize("length", [0, 5, -1, 2.5, torch.tensor([1, 2]), torch.tensor([1.0, 2.0, 3.0])])
def test_bad_decode_length(length):
    tok = Tokenizer.from_preset("demo_tiny").eval()
    indices = tok.encode(torch.rand(3, 3, 16, 16)).indices
    with pytest.raises(ValueError, match="length"):
        tok.decode(indices, length=length)


def test_bad_images_and_indices():
    tok = Tokenizer.from_preset("demo_tiny").eval()
    with pytest.raises(ValueError, match=r"images must be float \(B, 3, 16, 16\)"):
        tok.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="indices must be"):
        tok.decode(torch.zeros(2, 7, dtype=torch.long))


def test_config_json_is_plain(tmp_path):
    Tokenizer.from_preset("demo").save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert TokenizerConfig.from_dict(meta["tokenizer"]) == preset_config("demo")


def test_import_tokenizers_does_not_resolve_into_vartok():
    code = "import importlib.util as u; s = u.find_spec('tokenizers'); print(s.origin if s else None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert "vartok" not in result.stdout
    import vartok

    assert not hasattr(vartok, "tokenizers") or vartok.tokenizers.__name__ == "vartok.tokenizers"
