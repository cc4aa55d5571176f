"""Step schedule of a loss weight, e.g. a larger entropy weight at the start that decays to the base weight."""

from __future__ import annotations

import math


class WeightSchedule:
    """w(step) = start + (base - start) · step / decay_steps for step < decay_steps, then base.

    Args:
        base: the weight after the decay (and always, when start is None or decay_steps == 0).
        start: the weight at step 0, or None for a constant `base`.
        decay_steps: number of optimizer steps of the linear decay from start to base (>= 0).
    """

    def __init__(self, base: float, start: float | None = None, decay_steps: int = 0) -> None:
        for name, value in (("base", base), ("start", start)):
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"WeightSchedule {name} must be a finite float, got {value!r}")
        if not isinstance(decay_steps, int) or decay_steps < 0:
            raise ValueError(f"WeightSchedule decay_steps must be an int >= 0, got {decay_steps!r}")
        self.base, self.start, self.decay_steps = float(base), start, decay_steps

    def __call__(self, step: int) -> float:
        """Weight at the global optimizer step `step` (negative steps count as 0)."""
        if self.start is None or self.decay_steps == 0 or step >= self.decay_steps:
            return self.base
        frac = max(step, 0) / self.decay_steps
        return float(self.start) + (self.base - float(self.start)) * frac

    def __repr__(self) -> str:
        return f"WeightSchedule(base={self.base}, start={self.start}, decay_steps={self.decay_steps})"
