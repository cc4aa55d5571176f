"""The frozen networks an evaluation's metrics need (LPIPS-VGG, Inception-v3 from vartok.nets), built once,
with one rule for a missing weights file: a file the user named must exist; a file looked up in the torch hub
cache either stops the run (`missing="error"`, the training callback's default: before any training) or leaves
its metrics out with the reason (`missing="unavailable"`, vartok-eval and the end-of-fit report)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vartok.metrics.plan import FID_METRICS, Networks
from vartok.nets.inception import build_inception
from vartok.nets.lpips import LPIPS
from vartok.nets.weights import WeightsNotFoundError

MISSING_WEIGHTS = ("error", "unavailable")
Explain = Callable[[list[str], str], str]


def build_networks(metrics: set[str], networks: Networks, unavailable: dict[str, str], missing: str = "unavailable",
                   explain: Explain | None = None) -> dict[str, nn.Module | None]:
    """{"lpips", "inception"}: the prebuilt or newly built network each requested metric needs, else None.

    Args:
        metrics: the requested metrics (a network is built only when one needs it).
        networks: prebuilt networks and weights files.
        unavailable: metric → reason; filled in for the metrics left out (and read: a metric already there is
            not built again).
        missing: "error" or "unavailable" for a file not found in the hub cache (an explicit file is always an error).
        explain: (metrics, error text) → the message of the error raised (default: the error text), so a
            caller can say where the path is set in its own configuration.
    """
    if missing not in MISSING_WEIGHTS:
        raise ValueError(f"missing_weights must be one of {', '.join(MISSING_WEIGHTS)}, got {missing!r}")
    built: dict[str, nn.Module | None] = {"lpips": None, "inception": None}
    wanted_fid = sorted(metrics & set(FID_METRICS) - set(unavailable))
    if "lpips" in metrics and "lpips" not in unavailable:
        built["lpips"] = networks.lpips or _build(
            ["lpips"], networks.lpips_weights, missing, unavailable, explain,
            lambda: LPIPS(vgg_weights=networks.lpips_weights, allow_download=networks.allow_download))
    if wanted_fid:
        built["inception"] = networks.inception or _build(
            wanted_fid, networks.inception_weights, missing, unavailable, explain,
            lambda: build_inception(networks.inception_weights, networks.fid_feature, networks.allow_download))
    return built


def _build(metrics: list[str], explicit: object, missing: str, unavailable: dict[str, str],
           explain: Explain | None, build: Callable[[], nn.Module]) -> nn.Module | None:
    try:
        return build()
    except WeightsNotFoundError as err:
        if explicit is not None or missing == "error":
            if explain is None:
                raise
            raise WeightsNotFoundError(explain(metrics, str(err))) from None
        unavailable.update({metric: str(err) for metric in metrics})
        return None
