"""Everything that measures: PSNR/SSIM/LPIPS, rFID/pFID, rate, codec baselines, the evaluation loop and
its report.

Submodules are imported lazily (``from vartok.metrics import evaluate`` loads only what it needs), so a
training module that only wants the LPIPS loss does not import matplotlib or torch-fidelity.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "vartok.metrics.evaluation",
    "EvalPlan": "vartok.metrics.plan",
    "Networks": "vartok.metrics.plan",
    "check_lengths": "vartok.metrics.plan",
    "evaluate_after_fit": "vartok.metrics.fit_report",
    "ShardSubset": "vartok.metrics.subset",
    "LoaderSubset": "vartok.metrics.subset",
    "METRICS": "vartok.metrics.plan",
    "FIDBank": "vartok.metrics.fid",
    "build_inception": "vartok.nets.inception",
    "fid_from_features": "vartok.metrics.fid",
    "fid_from_statistics": "vartok.metrics.fid",
    "LPIPS": "vartok.nets.lpips",
    "LPIPSLoss": "vartok.nets.lpips",
    "QualityMeter": "vartok.metrics.quality",
    "psnr_per_image": "vartok.pixels",
    "ssim_per_image": "vartok.metrics.quality",
    "BaselineStats": "vartok.metrics.baselines",
    "CodebookStats": "vartok.metrics.codebook",
    "bytes_per_image": "vartok.metrics.rate",
    "bits_per_pixel": "vartok.metrics.rate",
    "default_lengths": "vartok.metrics.rate",
    "print_table": "vartok.metrics.report",
    "write_report": "vartok.metrics.report",
    "WeightsNotFoundError": "vartok.nets.weights",
    "WeightsFileError": "vartok.nets.weights",
    "resolve_weights": "vartok.nets.weights",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vartok.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
