"""What the elastic planner asks of a slot: one gpu-let's size, batch choice and rate.

Made by the planner's estimate (elastic.py) and its fallbacks (fallbacks.py), taken by `try_slot`.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.scheduling.perf import BatchChoice


@dataclass(frozen=True)
class Want:
    """One gpu-let a model asks for: its size, its batch choice and the rate it takes."""

    size: float
    choice: BatchChoice
    rate_rps: float
    saturated: bool
