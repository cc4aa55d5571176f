"""Weights resolution of the measuring networks (Inception-v3 for FID, VGG16 for LPIPS).

The implementation lives in :mod:`vartok.models.weights` — the training LPIPS loss needs it and models/ never
imports metrics/ — and is re-exported here, so there is one resolver and one set of exception classes.
"""

from vartok.models.weights import (
    INCEPTION,
    VGG16,
    WeightsFileError,
    WeightsNotFoundError,
    WeightsSpec,
    check_state_dict_shapes,
    file_sha256,
    hub_checkpoint_dir,
    load_state_dict_file,
    resolve_weights,
)

__all__ = [
    "INCEPTION", "VGG16", "WeightsFileError", "WeightsNotFoundError", "WeightsSpec", "check_state_dict_shapes",
    "file_sha256", "hub_checkpoint_dir", "load_state_dict_file", "resolve_weights",
]
