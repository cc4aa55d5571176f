"""The frozen LPIPS-VGG network, for the metric and the training loss.

The implementation lives in :mod:`vartok.models.lpips` (the training loss uses it and models/ never imports
metrics/) and is re-exported here: ``LPIPS`` gives per-image distances, ``LPIPSLoss`` their batch mean.
"""

from vartok.models.lpips import LPIPS, LPIPS_HEADS, LPIPSLoss, default_heads_path

__all__ = ["LPIPS", "LPIPS_HEADS", "LPIPSLoss", "default_heads_path"]
