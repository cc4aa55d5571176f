"""Counting skipped and converted samples, logging them, and stopping when too many are broken.

Workers count locally and ship the counts accumulated since their previous batch inside the batch (key
``"_stats"``); the loader in the main process merges them, so `ImageDataModule.skipped()` sees every worker.
"""

from __future__ import annotations

import logging
from collections import Counter

from vartok.data.errors import DataError

log = logging.getLogger("vartok.data")

STATS_KEY = "_stats"
# The skip fraction is not judged on fewer samples than this, except at the end of a pass.
MIN_SAMPLES_FOR_CHECK = 200


class SkipCounter:
    """Counts of samples seen, skipped (by reason) and converted (by note).

    Args:
        name: what is being read ("train", "val"), used in log lines and error messages.
        max_skip_fraction: stop with a `DataError` when skipped / seen exceeds this (None: never stop).
        setting: how the user sets that limit, named in the error (e.g. "--max-skip-fraction" for vartok-eval).
    """

    def __init__(self, name: str = "data", max_skip_fraction: float | None = None,
                 setting: str = "max_skip_fraction") -> None:
        self.name = name
        self.max_skip_fraction = max_skip_fraction
        self.setting = setting
        self.seen = 0
        self.skipped: Counter[str] = Counter()
        self.converted: Counter[str] = Counter()
        self._pending: dict = {"seen": 0, "skipped": Counter(), "converted": Counter()}

    def record_ok(self, notes: tuple[str, ...] = ()) -> None:
        """One usable sample, with the conversions it needed."""
        self._add(1, {}, dict.fromkeys(notes, 1))

    def record_skip(self, reason: str, key: str = "", where: str = "", detail: str = "") -> None:
        """One sample left out (or one shard error); logged at WARNING the first time per reason."""
        if self.skipped[reason] == 0:
            log.warning("%s: skipping %s in %s (%s): %s; further '%s' samples are logged at DEBUG level",
                        self.name, key or "a sample", where or "?", reason, detail, reason)
        else:
            log.debug("%s: skipping %s in %s (%s): %s", self.name, key, where, reason, detail)
        self._add(1, {reason: 1}, {})

    def _add(self, seen: int, skipped: dict, converted: dict) -> None:
        self.seen += seen
        self.skipped.update(skipped)
        self.converted.update(converted)
        self._pending["seen"] += seen
        self._pending["skipped"].update(skipped)
        self._pending["converted"].update(converted)

    def take(self) -> dict:
        """The counts since the previous `take` (what a worker attaches to its next batch)."""
        out = {"seen": self._pending["seen"], "skipped": dict(self._pending["skipped"]),
               "converted": dict(self._pending["converted"])}
        self._pending = {"seen": 0, "skipped": Counter(), "converted": Counter()}
        return out

    def merge(self, stats: dict) -> None:
        """Add counts taken from another counter (a worker's batch) without logging them again."""
        self.seen += int(stats.get("seen", 0))
        self.skipped.update(stats.get("skipped", {}))
        self.converted.update(stats.get("converted", {}))

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def check(self, final: bool = False) -> None:
        """Raise `DataError` when the skipped fraction is above the limit.

        Args:
            final: judge even on few samples (end of a pass); otherwise wait for MIN_SAMPLES_FOR_CHECK.
        """
        if self.max_skip_fraction is None or self.seen == 0:
            return
        if not final and self.seen < MIN_SAMPLES_FOR_CHECK:
            return
        fraction = self.num_skipped / self.seen
        if fraction > self.max_skip_fraction:
            reasons = ", ".join(f"{reason}={count}" for reason, count in self.skipped.most_common())
            raise DataError(
                f"{self.name}: {self.num_skipped} of {self.seen} samples could not be used "
                f"({fraction:.1%} > {self.setting}={self.max_skip_fraction}; reasons: {reasons}); "
                f"check the shards (vartok-data make-shards verifies images) or raise {self.setting}.")
