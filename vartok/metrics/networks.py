"""The frozen networks an evaluation's metrics need (LPIPS-VGG, Inception-v3 from vartok.nets), built once,
with one rule for a missing weights file: a file the user named must exist; a file looked up in the torch hub
cache either stops the run (`missing="error"`, the training callback's default: before any training) or leaves
its metrics out with the reason (`missing="unavailable"`, vartok-eval and the end-of-fit report)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vartok.metrics.plan import FID_METRICS, Networks
from vartok.nets.inception import build_inception
from vartok.nets.lpips import LPIPS, LPIPS_HEADS
from vartok.nets.weights import INCEPTION, VGG16, WeightsNotFoundError, describe_weights

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


def networks_provenance(built: dict[str, nn.Module | None]) -> dict[str, dict]:
    """The weights files of the networks an evaluation used: {"inception"|"lpips": {"path", "sha256", "official",
    "warning"?}}; LPIPS also has "heads" (its linear heads' file, when not the VGG file itself). A network built
    without a file (random weights, tests) has {"path": None}.

    Args:
        built: build_networks' result (a network is None when not used).
    """
    out: dict[str, dict] = {}
    for name, spec in (("inception", INCEPTION), ("lpips", VGG16)):
        net = built.get(name)
        if net is None:
            continue
        path = getattr(net, "weights_path", None)
        out[name] = describe_weights(path, spec) if path else {"path": None}
        heads = getattr(net, "heads_path", None)
        if name == "lpips" and heads and heads != path:
            out[name]["heads"] = describe_weights(heads, LPIPS_HEADS)
    return out


def provenance_warnings(provenance: dict) -> list[str]:
    """Every "warning" sentence in a provenance dict (networks_provenance's, nested entries included)."""
    found = []
    for value in provenance.values():
        if isinstance(value, dict):
            found += ([value["warning"]] if isinstance(value.get("warning"), str) else []) + provenance_warnings(value)
    return found
