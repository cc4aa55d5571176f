"""Load a tokenizer from an export folder or a Lightning checkpoint (never unpickling objects)."""

from __future__ import annotations

from pathlib import Path

import torch

from vartok.tokenizers.config import TokenizerConfig
from vartok.tokenizers.tokenizer import Tokenizer


def tokenizer_from_checkpoint(path: str | Path, use_ema: bool = True) -> Tokenizer:
    """The (EMA) tokenizer stored in a vartok Lightning checkpoint, loaded with weights_only=True."""
    path = Path(path)
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
    """An export folder (config.json + model.safetensors) or a `.ckpt` file -> Tokenizer in eval mode."""
    path = Path(path)
    if path.is_dir():
        return Tokenizer.from_pretrained(path)
    if path.suffix == ".ckpt" or path.is_file():
        return tokenizer_from_checkpoint(path, use_ema)
    raise FileNotFoundError(f"{path} is neither an export folder nor a checkpoint file")
