"""Keyword arguments given as a dict (a YAML section, a config.json, a Python call), checked against the fields
a dataclass accepts: one sentence naming the unknown keys and the allowed ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


def check_keys(given: Iterable[str], accepting: type, what: str, noun: str = "fields") -> None:
    """Raise ValueError when `given` holds keys that are not fields of the dataclass `accepting`.

    Args:
        given: the keys supplied.
        accepting: the dataclass whose fields are the allowed keys (in their declared order).
        what: where the keys were given, e.g. "model.tokenizer".
        noun: what the keys are called in the message ("fields", "arguments").
    """
    allowed = [f.name for f in dataclasses.fields(accepting)]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{what} has unknown {noun} {unknown}; allowed: {', '.join(allowed)}")
