"""Load a tokenizer from an export folder or a Lightning checkpoint (never unpickling objects)."""

from __future__ import annotations

from pathlib import Path

import torch

from vartok.models.export_folder import CONFIG_FILE, WEIGHTS_FILE
from vartok.tokenizers.config import TokenizerConfig
from vartok.tokenizers.tokenizer import Tokenizer


def is_export_folder(path: str | Path) -> bool:
    """Whether `path` is a folder holding an export (config.json + model.safetensors)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def tokenizer_from_checkpoint(path: str | Path, use_ema: bool = True) -> Tokenizer:
    """The (EMA) tokenizer stored in a vartok Lightning checkpoint, loaded with weights_only=True.

    Args:
        path: the `.ckpt` file written by vartok-train.
        use_ema: the EMA weights (True) or the raw trained weights (False).
    """
    path = Path(path)
    if is_export_folder(path):
        raise ValueError(f"{path} is an export folder ({CONFIG_FILE} + {WEIGHTS_FILE}), not a training checkpoint: "
                         "it is already exported, so use the folder as it is (Tokenizer.from_pretrained, "
                         "vartok-eval --checkpoint).")
    if path.is_dir():
        raise ValueError(f"{path} is a folder without {CONFIG_FILE} and {WEIGHTS_FILE}, not a checkpoint; give the "
                         "path of a .ckpt file written by vartok-train.")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we can read"
        raise ValueError(f"{path} is not a readable checkpoint (loaded with weights_only=True): {err}") from None
    meta = checkpoint.get("vartok") if isinstance(checkpoint, dict) else None
    if not meta or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a vartok training checkpoint (no 'vartok' section)")
    tokenizer = Tokenizer.from_config(TokenizerConfig.from_dict(meta["tokenizer"]))
    prefix = "ema.module." if use_ema else "tokenizer."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    tokenizer.load_state_dict(state)
    return tokenizer.eval()


def load_tokenizer(path: str | Path, use_ema: bool = True) -> Tokenizer:
    """An export folder (config.json + model.safetensors) or a `.ckpt` file -> Tokenizer in eval mode.

    Args:
        path: the export folder or checkpoint file.
        use_ema: for a checkpoint, its EMA weights (True) or raw weights (False); an export holds one set.
    """
    path = Path(path)
    if path.is_dir():
        return Tokenizer.from_pretrained(path)
    if path.suffix == ".ckpt" or path.is_file():
        return tokenizer_from_checkpoint(path, use_ema)
    raise FileNotFoundError(f"{path} is neither an export folder nor a checkpoint file")


def checkpoint_provenance(path: str | Path, use_ema: bool = True) -> dict:
    """What an evaluation report records about the evaluated weights: {"path" (absolute), "kind" ("export" or
    "checkpoint"), "weights" ("ema", "raw", or "as exported" for an export folder, which holds the one set of
    weights vartok-export chose)}.

    Args:
        path: the export folder or checkpoint file given to `load_tokenizer`.
        use_ema: the choice passed to `load_tokenizer` (used for a checkpoint only).
    """
    path = Path(path)
    if path.is_dir():
        return {"path": str(path.resolve()), "kind": "export", "weights": "as exported"}
    return {"path": str(path.resolve()), "kind": "checkpoint", "weights": "ema" if use_ema else "raw"}
