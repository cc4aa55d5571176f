"""The export folder every vartok model is saved as: config.json (a format tag, a version and the settings) beside
model.safetensors. Writing it and the checks before reading it, shared by the tokenizer and the token prior."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_model
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
