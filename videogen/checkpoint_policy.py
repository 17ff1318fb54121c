"""When the GPU worker checkpoints: the policy object, with no torch import.

`activities.checkpoint` (the worker's checkpoint code, which needs torch) re-exports these, and
the fleet simulator (`sim/`) uses the same object to decide when a simulated worker
checkpoints, so a change to the policy changes both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POLICIES = ("adaptive", "steps", "seconds", "off")


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to checkpoint: every N steps, every T seconds, adaptively, or never.

    `adaptive` uses the Young–Daly interval sqrt(2 · C · MTBF): C is the measured cost of one
    checkpoint (snapshot, serialisation and upload) and MTBF the mean time between preemptions
    of a worker. Until C is measured the first checkpoint is taken after the first step.
    """

    mode: str = "adaptive"
    every_steps: int = 10
    every_s: float = 30.0
    mtbf_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(
                f"checkpoint policy {self.mode!r}: must be one of {', '.join(POLICIES)}"
            )

    def interval_s(self, cost_s: float | None) -> float | None:
        """The adaptive interval for a measured cost, or None before the first measurement."""
        if cost_s is None:
            return None
        return math.sqrt(2.0 * max(cost_s, 1e-3) * self.mtbf_s)

    def due(self, *, steps_since: int, seconds_since: float, cost_s: float | None) -> bool:
        if steps_since <= 0:
            return False
        if self.mode == "steps":
            return steps_since >= self.every_steps
        if self.mode == "seconds":
            return seconds_since >= self.every_s
        if self.mode == "adaptive":
            interval = self.interval_s(cost_s)
            return interval is None or seconds_since >= interval
        return False

    def describe(self) -> str:
        if self.mode == "steps":
            return f"every {self.every_steps} steps"
        if self.mode == "seconds":
            return f"every {self.every_s:g} s"
        if self.mode == "adaptive":
            return f"adaptive (Young-Daly, MTBF {self.mtbf_s:g} s)"
        return "off"
