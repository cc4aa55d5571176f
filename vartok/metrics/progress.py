"""Progress of a long evaluation: a live bar on a terminal (rank 0)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def progress(loader: Iterable[dict], show: bool, label: str = "evaluating") -> Iterator[dict]:
    """Yield the loader's batches, advancing a progress bar when `show`."""
    if not show:
        yield from loader
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        for batch in loader:
            yield batch
            bar.advance(task)
