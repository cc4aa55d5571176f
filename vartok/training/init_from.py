"""Fine-tuning: a training run whose tokenizer starts from an export (`model.init_from`), with parts of it frozen
(`model.freeze`; encoder + quantizer frozen = decoder-only fine-tuning).

The export is read when the module is built, so a wrong folder or an architecture that differs from the run's
is one sentence before any work. A resume from a checkpoint replaces these weights with the checkpoint's
(Lightning loads it after the module is built); the export folder must still exist then, since the module
reads it again (and, with `model.preset: null`, takes its architecture from it), and LightningCLI resumes with
the checkpoint's own `init_from`.

A frozen part has requires_grad False (so the optimizer, DDP's gradient buckets and clipping never see it) and
stays in eval mode while the rest trains: no EMA codebook update, no dead-code reset, no training-only draw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from vartok.models.export_folder import CONFIG_FILE, WEIGHTS_FILE
from vartok.tokenizers.config import TokenizerConfig, preset_config
from vartok.tokenizers.tokenizer import Tokenizer

PARTS = ("encoder", "quantizer", "decoder")
# quantizer_args that steer training only (the DDP all-reduce of statistics), never the weights: a run may set
# them differently from the export. Everything else in the config must match.
TRAINING_ONLY_QUANTIZER_ARGS = frozenset({"sync_codebook", "sync_entropy"})
SHOWN_KEYS = 3  # weight names quoted per kind of mismatch


def check_freeze(freeze: list[str] | None) -> list[str]:
    """The parts to freeze, in the tokenizer's order, or one sentence for a list that cannot train.

    Args:
        freeze: names among encoder, quantizer, decoder (None or [] = train everything).
    """
    if freeze is None:
        return []
    if isinstance(freeze, str) or not all(isinstance(part, str) for part in freeze):
        raise TypeError(f"model.freeze must be a list of parts among {', '.join(PARTS)} (e.g. [encoder, quantizer]), "
                        f"got {freeze!r}")
    unknown = [part for part in freeze if part not in PARTS]
    if unknown:
        raise ValueError(f"model.freeze names the unknown part(s) {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(PARTS)}")
    parts = [part for part in PARTS if part in freeze]
    if len(parts) == len(PARTS):
        raise ValueError("model.freeze names every part of the tokenizer (encoder, quantizer, decoder), so nothing "
                         "would train; leave out the part to fine-tune ([encoder, quantizer] fine-tunes the decoder)")
    if "quantizer" in parts and "encoder" not in parts:
        raise ValueError("model.freeze freezes the quantizer but not the encoder: a frozen quantizer runs in eval "
                         "mode and passes no gradient back to the encoder (vq's straight-through path is training-mode "
                         "only); freeze the encoder too, or leave the quantizer trainable")
    return parts


def read_export(path: str | Path) -> Tokenizer:
    """The tokenizer of the export folder `path` (config.json + model.safetensors), or one sentence naming it.

    Args:
        path: the model.init_from value.
    """
    folder = Path(path)
    if not folder.exists():
        raise ValueError(f"model.init_from {folder} does not exist: give the export folder the run starts from "
                         f"({CONFIG_FILE} + {WEIGHTS_FILE}, as vartok-export or a run's <run dir>/export write it); "
                         "a resume of a run started from it reads it again, so keep it in place")
    if not folder.is_dir():
        raise ValueError(f"model.init_from {folder} is a file, not an export folder ({CONFIG_FILE} + {WEIGHTS_FILE}): "
                         "export a training checkpoint first with vartok-export --checkpoint CKPT --out DIR, or "
                         "continue its run with --ckpt_path")
    try:
        return Tokenizer.from_pretrained(folder)
    except (ValueError, FileNotFoundError) as err:  # its sentences name the file and what is wrong with it
        raise ValueError(f"model.init_from {folder}: {err}") from None


def run_config(preset: str | None, overrides: dict[str, Any], export: Tokenizer | None) -> TokenizerConfig:
    """The run's architecture: the preset's with `overrides`, or, with no preset, the export's with `overrides`
    on top (quantizer_args given for the export's own quantizer update its arguments, not replace them).

    Args:
        preset: a preset name, or None to take the export's architecture.
        overrides: model.tokenizer fields that were given.
        export: the model.init_from tokenizer, or None.
    """
    if preset is not None:
        return preset_config(preset, **overrides)
    if export is None:
        raise ValueError("model.preset is null, which takes the architecture from model.init_from, but no "
                         "model.init_from is given; name a preset, or an export folder to start from")
    values, given = export.config.to_dict(), dict(overrides)
    if given.get("quantizer", values["quantizer"]) != values["quantizer"]:
        values["quantizer_args"] = {}  # another quantizer: its own defaults, as for a preset
    elif "quantizer_args" in given:
        given["quantizer_args"] = {**values["quantizer_args"], **given["quantizer_args"]}
    values.update(given)
    return TokenizerConfig(**values)


def check_same_architecture(export: TokenizerConfig, run: TokenizerConfig, path: str | Path) -> None:
    """One sentence when a run with a preset would not build the export's architecture.

    Fields that change only how training behaves may differ: the training-only quantizer arguments, and
    decode_fill from "pad" to "mask_token" (nested dropout adds a fresh drop token to the export's weights).

    Args:
        export: the export's config; run: the run's; path: the model.init_from value (named in the message).
    """
    differences = architecture_differences(export, run)
    if not differences:
        return
    found = ", ".join(f"{name} {_show(saved)} but {'the run has ' if i == 0 else ''}{_show(wanted)}"
                      for i, (name, saved, wanted) in enumerate(differences))
    raise ValueError(f"model.init_from {Path(path) / CONFIG_FILE} has {found}: set model.preset: null to take the "
                     "export's architecture (model.tokenizer overrides apply on top), or give a matching preset")


def architecture_differences(export: TokenizerConfig, run: TokenizerConfig) -> list[tuple[str, Any, Any]]:
    """(field, export's value, run's value) for each field that changes the weights; quantizer_args field by
    field when both use the same quantizer."""
    saved, wanted = export.to_dict(), run.to_dict()
    if saved["decode_fill"] == "pad" and wanted["decode_fill"] == "mask_token":
        wanted["decode_fill"] = "pad"
    for values in (saved, wanted):
        args = {k: v for k, v in values.pop("quantizer_args").items() if k not in TRAINING_ONLY_QUANTIZER_ARGS}
        if saved["quantizer"] == wanted["quantizer"]:  # another quantizer: its name is the difference to show
            values.update({f"quantizer_args.{k}": v for k, v in args.items()})
    names = list(wanted) + [name for name in saved if name not in wanted]
    return [(name, saved.get(name), wanted.get(name)) for name in names
            if _plain(saved.get(name)) != _plain(wanted.get(name))]


def load_export_weights(tokenizer: Tokenizer, export: Tokenizer, path: str | Path,
                        overrides: dict[str, Any]) -> None:
    """Copy the export's weights into the run's tokenizer: every tensor, except a drop token the export lacks
    when the run adds one (nested dropout over an export trained without it), which keeps its fresh start.

    Args:
        tokenizer: the run's tokenizer; export: the model.init_from tokenizer.
        path: the model.init_from value; overrides: the model.tokenizer fields given (named in the message).
    """
    state, expected = export.state_dict(), tokenizer.state_dict()
    fresh = {k for k in expected if k.rsplit(".", 1)[-1] == "drop_token"} \
        if tokenizer.decode_fill == "mask_token" and export.decode_fill == "pad" else set()
    missing = sorted(set(expected) - set(state) - fresh)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if not (missing or unexpected or wrong):
        tokenizer.load_state_dict(state, strict=False)
        return
    found = [f"{kind} {_keys(keys)}" for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if wrong:
        shapes = [f"{k} {tuple(state[k].shape)} in the export, {tuple(expected[k].shape)} in the run"
                  for k in wrong[:SHOWN_KEYS]]
        found.append(f"wrong shape {', '.join(shapes)}{_more(wrong)}")
    cause = f" (model.tokenizer sets {', '.join(sorted(overrides))})" if overrides else ""
    raise ValueError(f"model.init_from {Path(path) / WEIGHTS_FILE} does not fit the run's tokenizer{cause}: "
                     f"{'; '.join(found)}; leave out the settings that change the architecture")


def freeze_parts(tokenizer: Tokenizer, parts: list[str]) -> None:
    """requires_grad False and eval mode for each named part, or one sentence when nothing would train.

    Args:
        tokenizer: the run's tokenizer; parts: checked by `check_freeze`.
    """
    for part in parts:
        getattr(tokenizer, part).requires_grad_(False).eval()
    if parts and not any(p.requires_grad for p in tokenizer.parameters()):
        left = [part if part != "quantizer" else f"quantizer ({tokenizer.config.quantizer})" for part in PARTS
                if part not in parts]
        raise ValueError(f"model.freeze [{', '.join(parts)}] leaves nothing to train: the {' and '.join(left)} "
                         f"{'has' if len(left) == 1 else 'have'} no parameters; freeze fewer parts")


def hold_frozen_in_eval(tokenizer: nn.Module, parts: list[str]) -> None:
    """Put the frozen parts back in eval mode (after a `train()` call or a rebuilt submodule)."""
    for part in parts:
        getattr(tokenizer, part).eval()


def parameter_line(counts: dict[str, int], frozen: int, parts: list[str]) -> str:
    """The fit's parameter count line, e.g. "tokenizer: 1,000 parameters (600 trainable, 400 frozen: encoder,
    quantizer), discriminator: 50 parameters".

    Args:
        counts: name -> parameters (TokenizerModule.parameter_counts); frozen: the tokenizer's frozen ones.
        parts: the frozen parts.
    """
    def one(name: str, count: int) -> str:
        text = f"{name}: {count:,} parameters"
        if name == "tokenizer" and parts:
            text += f" ({count - frozen:,} trainable, {frozen:,} frozen: {', '.join(parts)})"
        return text

    return ", ".join(one(name, count) for name, count in counts.items())


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + _more(keys)


def _more(keys: list[str]) -> str:
    return f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal."""
    return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
    """A config value as it is written in YAML."""
    return value if isinstance(value, str) else json.dumps(value)
