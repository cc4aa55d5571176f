"""Settings that cannot train together, refused in one sentence before any work: a data image size that is not
the tokenizer's, and a resume from a checkpoint of another architecture than the one requested."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from vartok.models.discriminator import discriminator_args
from vartok.tokenizers.config import TokenizerConfig


def check_image_size(datamodule: Any, config: TokenizerConfig, hparams: Mapping[str, Any]) -> None:
    """One sentence when the data's image size is not the tokenizer's (otherwise found at the first step).

    Args:
        datamodule: the data module (its `image_size`, if any); config: the run's tokenizer.
        hparams: the module's hyperparameters (its `preset` and `init_from` name where the size comes from).
    """
    size, expected = getattr(datamodule, "image_size", None), config.image_size
    if size is None or size == expected:
        return
    init_from = hparams.get("init_from")
    if init_from is not None:  # the export's weights fix the size (position embeddings of its patch grid)
        raise ValueError(f"data.image_size={size} does not match the image size {expected} of the tokenizer in "
                         f"model.init_from {init_from}, whose weights are for {expected} px images; set "
                         f"--data.image_size {expected}")
    raise ValueError(
        f"data.image_size={size} does not match the tokenizer's model.tokenizer.image_size={expected} "
        f"(preset {hparams.get('preset')}); set --data.image_size {expected}, or "
        f"--model.tokenizer.image_size {size} to build a tokenizer for {size} px images"
    )


def check_architecture(checkpoint: dict[str, Any], path: str | None, config: TokenizerConfig,
                       discriminator: dict[str, Any] | None) -> None:
    """Refuse a checkpoint whose tokenizer (or discriminator) differs from the requested one: its weights would
    replace the module's where the shapes agree (or stop at the first that does not).

    Args:
        checkpoint: the loaded Lightning checkpoint.
        path: where it was read from (named in the message), or None.
        config: the requested tokenizer.
        discriminator: the requested discriminator's arguments, when both sides have a discriminator.
    """
    differences = _differences("tokenizer", checkpoint.get("vartok", {}).get("tokenizer"), config.to_dict())
    if discriminator is not None:
        saved = asdict(discriminator_args(checkpoint.get("hyper_parameters", {}).get("discriminator")))
        differences += _differences("discriminator", saved, discriminator)
    if not differences:
        return
    named = f"the checkpoint {path}" if path else "the checkpoint"
    found = "; ".join(f"{name} {saved!r} in the checkpoint, {wanted!r} requested" for name, saved, wanted in differences)
    flags = " ".join(f"--model.{name} {_shell_value(saved)}" for name, saved, _ in differences)
    raise ValueError(f"{named} was trained with another architecture than the one requested ({found}); resume it "
                     f"with its own values ({flags}, or the config.yaml of its run), or start a fresh run without "
                     "--ckpt_path")


def _differences(prefix: str, saved: dict[str, Any] | None, wanted: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(prefix.field, saved value, wanted value) for each field both dicts hold with different values (a field
    the checkpoint lacks predates it, and is not compared)."""
    def plain(value: Any) -> Any:  # tuples and lists compare equal
        return json.loads(json.dumps(value, default=str))

    return [(f"{prefix}.{name}", saved[name], value) for name, value in wanted.items()
            if saved is not None and name in saved and plain(saved[name]) != plain(value)]


def _shell_value(value: Any) -> str:
    """A value as it is written after a command-line flag."""
    return shlex.quote(value if isinstance(value, str) else json.dumps(value))
