"""Released TiTok-family checkpoints (bytedance/1d-tokenizer's TiTok, One-D-Piece) -> a vartok export.

    export = convert_titok("tokenizer_titok_l32_imagenet/", out="exports/titok_l32")
    tok = Tokenizer.from_pretrained(export)

The weights are read with `weights_only=True` (a `.bin`) or safetensors, never unpickling objects. The
architecture comes from the checkpoint's config.json, the repository's YAML, or a released model's name
(`RELEASED_TITOK`, for the bare `.bin` files); every weight is renamed by `reference_key` and must land on a
weight of the same shape: a missing, unexpected or misshapen key is one sentence naming the file.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from vartok.tokenizers.config import RELEASED_TITOK, TokenizerConfig, titok_fields
from vartok.tokenizers.tokenizer import Tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Entries of a released state dict that are training statistics, not weights (clustering VQ's code usage).
IGNORED_KEYS = ("quantize.embed_prob",)
_BLOCK_NAMES = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_weight": "attn.qkv.weight",
                "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1",
                "mlp.c_proj": "mlp.fc2"}
_BLOCK = re.compile(r"^(encoder|decoder)\.transformer\.(\d+)\.(.+)$")


def reference_key(key: str) -> str:
    """The vartok name of a released TiTok weight (the plain mapping; unknown names come back unchanged)."""
    if key == "latent_tokens":
        return "encoder.latent_tokens"
    if key.startswith("quantize."):
        return "quantizer." + key.removeprefix("quantize.")
    if key == "pixel_quantize.embedding.weight":
        return "decoder.proxy_codebook.weight"
    if key.startswith("pixel_decoder."):
        return "decoder." + key
    block = _BLOCK.match(key)
    if block:
        side, index, rest = block.groups()
        for old, new in _BLOCK_NAMES.items():
            if rest == old or rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        return f"{side}.blocks.{index}.{rest}"
    return key


def find_files(checkpoint: str | Path, config: str | None) -> tuple[Path, Path | str]:
    """(weights file, config file or released name) from the command's --checkpoint and --config.

    Args:
        checkpoint: a weights file (model.safetensors, pytorch_model.bin, a released .bin) or the folder holding it.
        config: a config.json / YAML file, a released name (`RELEASED_TITOK`), or None = config.json beside the weights.
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither {' nor '.join(WEIGHT_FILES)}: give the folder a released "
                                    f"checkpoint was downloaded to, or the weights file itself")
        weights = found[0]
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if config is not None:
        if config in RELEASED_TITOK:
            return weights, config
        config_path = Path(config).expanduser()
        if not config_path.is_file():
            raise FileNotFoundError(f"--config {config} is neither a file nor a released model name "
                                    f"({', '.join(RELEASED_TITOK)})")
        return weights, config_path
    beside = weights.parent / "config.json"
    if not beside.is_file():
        raise FileNotFoundError(
            f"no config.json beside {weights}: pass --config with the checkpoint's config.json, the repository's "
            f"YAML (configs/infer/TiTok/<model>.yaml), or a released model name ({', '.join(RELEASED_TITOK)})")
    return weights, beside


def read_config(config: Path | str) -> TokenizerConfig:
    """The TokenizerConfig of a released config (config.json or YAML with model.vq_model and
    dataset.preprocessing.crop_size) or of a released model's name."""
    if isinstance(config, str):
        return TokenizerConfig(**titok_fields(RELEASED_TITOK[config], 256))
    try:
        text = config.read_text()
        values = json.loads(text) if config.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{config} is not a readable JSON or YAML file: {err}") from None
    try:
        vq_model, crop = values["model"]["vq_model"], values["dataset"]["preprocessing"]["crop_size"]
        return TokenizerConfig(**titok_fields(vq_model, crop))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{config} is not a TiTok-family config: it lacks {err} (a released config has "
                         f"model.vq_model and dataset.preprocessing.crop_size)") from None
    except ValueError as err:
        raise ValueError(f"{config}: {err}") from None


def read_weights(path: Path) -> dict[str, Tensor]:
    """A flat {name: tensor} state dict from safetensors or a `.bin` (torch.load with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} holds Python objects besides tensors, which a load with weights_only=True refuses "
                         f"(vartok never unpickles objects): save the plain state dict, or use its "
                         f"model.safetensors") from None
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as err:
        raise ValueError(f"{path} is not a readable weights file (safetensors, or a .bin loaded with "
                         f"weights_only=True): {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors (a training checkpoint holds one under a "
                         f"key such as 'state_dict'; a released tokenizer is the state dict itself)")
    return state


def convert_state(state: dict[str, Tensor], tokenizer: Tokenizer, weights: Path, config: Path | str) -> dict[str, Tensor]:
    """The released weights under vartok's names, checked against `tokenizer` key by key and shape by shape."""
    renamed = {reference_key(k): v for k, v in state.items() if k not in IGNORED_KEYS}
    expected = tokenizer.state_dict()
    missing = [k for k in expected if k not in renamed]
    unexpected = [k for k in renamed if k not in expected]
    if missing or unexpected:
        foreign = not any(k.startswith("encoder.transformer.") for k in state)
        kind = "not a TiTok-family checkpoint" if foreign else f"does not match the architecture of {config}"
        raise ValueError(f"{weights} is {kind}: {len(missing)} missing keys {missing[:4]}, {len(unexpected)} "
                         f"unexpected keys {unexpected[:4]} (names after the rename to vartok's)")
    wrong = [(k, tuple(renamed[k].shape), tuple(v.shape)) for k, v in expected.items() if renamed[k].shape != v.shape]
    if wrong:
        key, got, want = wrong[0]
        raise ValueError(f"{weights} disagrees with {config}: {len(wrong)} weights have other shapes, first {key} is "
                         f"{got} in the checkpoint but {want} by the config (check the model size, token count, "
                         f"codebook size and token_size in the config)")
    return {k: renamed[k].float() for k in expected}


def convert_titok(checkpoint: str | Path, out: str | Path, config: str | None = None) -> Tokenizer:
    """Convert a released TiTok-family checkpoint into a vartok export folder (config.json + model.safetensors).

    Args:
        checkpoint: weights file or the folder holding it (see `find_files`).
        out: the export folder to write.
        config: config file or released name; None = config.json beside the weights.
    Returns:
        The converted Tokenizer (eval mode), as `Tokenizer.from_pretrained(out)` loads it.
    """
    weights, config_source = find_files(checkpoint, config)
    tokenizer_config = read_config(config_source)
    tokenizer = Tokenizer.from_config(tokenizer_config)
    state = convert_state(read_weights(weights), tokenizer, weights, config_source)
    tokenizer.load_state_dict(state, strict=True)
    source = {"converted_from": str(weights.resolve()), "config": str(config_source)}
    tokenizer.save_pretrained(out, source=source)
    return tokenizer.eval()
