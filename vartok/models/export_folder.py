"""The export folder every vartok model is saved as: config.json (a format tag, a version and the settings) beside
model.safetensors. Writing it, and reading it back with every check, shared by the tokenizer and the token prior."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_folder(module: nn.Module, directory: str | Path, meta: dict[str, Any], fmt: str) -> Path:
    """Write `module`'s weights and `meta` (which carries the format tag `fmt`) into `directory` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(module, str(directory / WEIGHTS_FILE), metadata={"format": fmt})
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def folder_files(directory: str | Path, noun: str, holder: str) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of an export folder, or FileNotFoundError in one sentence.

    Args:
        directory: the folder; noun: what it should hold ("tokenizer"), for "<noun> folder X does not exist";
        holder: how the folder is called in "X is missing: <holder> holds config.json and model.safetensors".
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"{noun} folder {directory} does not exist")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {holder} holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return config_path, weights_path


def read_config(config_path: Path, fmt: str) -> dict[str, Any]:
    """config.json's settings: ValueError (JSONDecodeError is one) unless it is a JSON object tagged `fmt`."""
    meta = json.loads(config_path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"'format' is {found!r}, expected {fmt!r}")
    return meta


def load_weights(module: nn.Module, weights_path: Path, config_path: Path, map_location: str | Any,
                 strict: bool = True) -> None:
    """Load model.safetensors into `module` (built from config.json), or ValueError in one sentence naming the
    missing, unexpected (when `strict`) and wrongly shaped keys; with strict False, keys the module lacks are
    ignored."""
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected)) if strict else []
    bad_shape = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unexpected or bad_shape:
        extra = f"unexpected {unexpected[:5]}, " if strict else ""
        raise ValueError(f"{weights_path} does not match {config_path}: missing {missing[:5]}, {extra}"
                         f"wrong shape {bad_shape[:5]}")
    module.load_state_dict(state, strict=strict)
