"""Progress of long loops: a live bar on a terminal, plain lines in a log file (SLURM, pipes).

Both go to standard error, so that what a command prints on standard output (a table, JSON) stays clean. A live
bar redraws one line in place, which a log file cannot show (rich prints nothing there), so when standard error is
not a terminal `ProgressLines` prints a line at each further 10 % of the total (at most every `min_seconds`) and
at least every `max_seconds`, with counts and the elapsed time, and one line at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

from vartok.data.batch import parse_batch

T = TypeVar("T")


def _clock() -> float:
    return time.monotonic()


def elapsed_text(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min: the elapsed time of a progress line."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class ProgressLines:
    """Plain progress lines ``<label>: 384 of 512 images (75 %), 12.0 s[, note]`` for a log file.

    Args:
        label: what is running ("evaluating").
        total: units to do (None: unknown; then lines come every `max_seconds` and at the end).
        unit: what is counted ("images", "batches").
        stream: where to print (None: sys.stderr at print time).
        every_fraction: print when another such fraction of the total is done ...
        min_seconds: ... and at least this long after the previous line (a short loop prints only its ends);
        max_seconds: print at least this often while something advances.
    """

    def __init__(self, label: str, total: int | None, unit: str, stream: TextIO | None = None,
                 every_fraction: float = 0.1, min_seconds: float = 5.0, max_seconds: float = 60.0) -> None:
        self.label, self.total, self.unit, self.stream = label, total, unit, stream
        self.every_fraction, self.min_seconds, self.max_seconds = every_fraction, min_seconds, max_seconds
        self.done, self.start = 0, _clock()
        self._last_time, self._last_step = self.start, 0
        self.print_line(self.start)

    def _fraction_step(self) -> int:
        if not self.total:
            return 0
        return int(min(self.done, self.total) / self.total / self.every_fraction + 1e-9)

    def advance(self, amount: int = 1, note: str = "") -> None:
        """Count `amount` more units done; print a line when one is due."""
        self.done += amount
        if self.total and self.done >= self.total:
            return  # the closing line says it
        now = _clock()
        step = self._fraction_step()
        due = step > self._last_step and now - self._last_time >= self.min_seconds
        if due or now - self._last_time >= self.max_seconds:
            self.print_line(now, note)
            self._last_time, self._last_step = now, step

    def finish(self, note: str = "") -> None:
        """The closing line (always printed)."""
        self.print_line(_clock(), note, final=True)

    def print_line(self, now: float, note: str = "", final: bool = False) -> None:
        """Print one line: counts, percentage, elapsed time at `now`, the note."""
        counts = f"{self.done:,} {self.unit}"
        if self.total:
            counts = f"{self.done:,} of {self.total:,} {self.unit} ({100 * self.done / self.total:.0f} %)"
        text = f"{self.label}: {'done, ' if final else ''}{counts}, {elapsed_text(now - self.start)}"
        print(text + (f", {note}" if note else ""), file=self.stream or sys.stderr, flush=True)


def _valid_count(batch: Any) -> int:
    """The number of real (valid) images of an evaluation batch; 0 when the batch has no such fields."""
    return int(parse_batch(batch).valid.sum()) if isinstance(batch, dict) and "image" in batch else 0


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(loader: Iterable[T], show: bool, label: str = "evaluating",
             count: Callable[[T], int] = _valid_count) -> Iterator[T]:
    """Yield the loader's batches; when `show`, a live bar on a terminal or plain lines in a log file.

    Args:
        loader: the batches (its len, when it has one, is the total).
        show: report progress at all (the caller passes False on ranks other than 0).
        label: what is running.
        count: images in a batch, for the lines' running count.
    """
    if not show:
        yield from loader
        return
    total = _length(loader)
    if not getattr(sys.stderr, "isatty", lambda: False)():
        lines, images = ProgressLines(label, total, "batches"), 0
        for batch in loader:
            yield batch
            images += count(batch)
            lines.advance(1, f"{images:,} images")
        lines.finish(f"{images:,} images")
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        for batch in loader:
            yield batch
            bar.advance(task)
