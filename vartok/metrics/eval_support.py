"""What the evaluation loop (vartok.metrics.evaluation) needs around it: the frozen networks, the cache of
the originals' Inception statistics, the loader's skip counts summed over ranks, and the progress bar."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vartok.metrics import fid as fid_lib
from vartok.metrics.lpips_net import LPIPS
from vartok.metrics.weights import WeightsNotFoundError

if TYPE_CHECKING:
    from vartok.metrics.evaluation import Evaluation


def rank_world(distributed: bool = True) -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group when there is one and `distributed`, else (0, 1)."""
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def build_networks(metrics: set[str], unavailable: dict[str, str], opts: dict) -> dict[str, nn.Module | None]:
    """The frozen LPIPS and Inception networks the requested metrics need, or the reason they are absent.
    A missing file that the user named explicitly, or a file of the wrong shape, is an error."""
    nets: dict[str, nn.Module | None] = {"lpips": opts.get("lpips_net"), "inception": opts.get("fid_network")}
    if "lpips" in metrics and nets["lpips"] is None:
        try:
            nets["lpips"] = LPIPS(vgg_weights=opts.get("lpips_weights"),
                                  allow_download=opts["allow_download"])
        except WeightsNotFoundError as err:
            if opts.get("lpips_weights") is not None:
                raise
            unavailable["lpips"] = str(err)
    if metrics & {"rfid", "pfid"} and nets["inception"] is None:
        try:
            nets["inception"] = fid_lib.build_inception(
                opts.get("inception_weights"), opts["fid_feature"], opts["allow_download"]
            )
        except WeightsNotFoundError as err:
            if opts.get("inception_weights") is not None:
                raise
            unavailable.update({m: str(err) for m in ("rfid", "pfid") if m in metrics})
    if not metrics & {"rfid", "pfid"}:
        nets["inception"] = None
    return nets


def reference_cache(run: Evaluation, cache_dir: str | os.PathLike | None, data_id: str | None) -> Path | None:
    """Load the originals' statistics from the cache when present; the file to write otherwise."""
    if run.fid is None or cache_dir is None or data_id is None:
        return None
    weights = getattr(run.fid.network, "weights_path", None)
    if weights is None:
        return None
    path = fid_lib.reference_stats_path(cache_dir, data_id, int(run.tok.image_size), "all", weights,
                                        run.fid.num_features)
    state = fid_lib.load_reference_stats(path)
    if state is not None:
        run.fid.load_reference(state, run.rank)
        return path
    return path


def save_reference(run: Evaluation, path: Path | None, unavailable: dict[str, str]) -> None:
    """Write freshly computed reference statistics; check a loaded file against the images seen."""
    if path is None:
        return
    state = run.fid.reference_state()  # synced: identical on every rank
    if run.fid.reference_loaded:
        seen = int(run.images.compute())
        if int(state["count"]) != seen:
            msg = (f"the cached Inception statistics {path} hold {int(state['count'])} images but the data "
                   f"gave {seen}; the file was removed, run again to recompute it")
            unavailable.update({"rfid": msg, "pfid": msg})
            run.fid = None
            if run.rank == 0:
                path.unlink(missing_ok=True)
    elif run.rank == 0:
        fid_lib.save_reference_stats(path, state)


def gather_skipped(loader: Any, distributed: bool) -> dict[str, int]:
    """The loader's skipped-sample counts by reason, summed over ranks."""
    local = dict(loader.skipped()) if hasattr(loader, "skipped") else {}
    _, world = rank_world(distributed)
    if world == 1:
        return local
    everyone: list[dict] = [{} for _ in range(world)]
    torch.distributed.all_gather_object(everyone, local)
    total: Counter[str] = Counter()
    for counts in everyone:
        total.update(counts)
    return dict(total)


def progress(loader: Iterable[dict], show: bool) -> Iterable[dict]:
    if not show:
        yield from loader
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("eval", total=total)
        for batch in loader:
            yield batch
            progress.advance(task)
