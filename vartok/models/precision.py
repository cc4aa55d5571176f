"""Full-precision regions that work on every device type.

`torch.autocast(device_type=...)` raises for device types without an autocast backend (the `meta` device the
device-placement tests use, some accelerator plugins); `no_autocast(device)` disables autocast where it exists
and is a no-op elsewhere, so the quantizers, the perturbation and validation run anywhere their inputs live.
"""

from __future__ import annotations

import contextlib

import torch

_AUTOCAST_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia")


def no_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for `device`'s type (a null context where autocast does not exist)."""
    device_type = torch.device(device).type
    if device_type in _AUTOCAST_TYPES or device_type == torch._C._get_privateuse1_backend_name():
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
