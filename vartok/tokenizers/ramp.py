"""A step schedule of one value: constant, a linear ramp between two steps, or a jump at one step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    """A step schedule: `start` up to `start_step`, linear to `end` at `end_step`, then `end`.

    Args:
        start, end: the values (equal for a constant).
        start_step, end_step: 0 <= start_step <= end_step; equal steps give a jump at that step.
    """

    start: float
    end: float
    start_step: int = 0
    end_step: int = 0

    def __call__(self, step: int) -> float:
        """The value at training step `step`."""
        if step >= self.end_step:
            return float(self.end)
        if step <= self.start_step:
            return float(self.start)
        frac = (step - self.start_step) / (self.end_step - self.start_step)
        return float(self.start) + (float(self.end) - float(self.start)) * frac
