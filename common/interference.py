"""Interference: the predicted slowdown of a gpu-let's model from what runs beside it.

`InterferenceModel.slowdown(target, neighbours)` returns alpha >= 1; co-located latency is
solo latency times alpha. Implementations: `NoInterference`, and fitted models loaded from data
files (see `router/scheduling/interference_fit.py` for how they are made).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Corunner:
    model: str
    batch: int
    size: float  # in the device kind's unit (% of the GPU)


class InterferenceModel(Protocol):
    def slowdown(self, target: Corunner, neighbours: Sequence[Corunner]) -> float: ...


class NoInterference:
    def slowdown(self, target: Corunner, neighbours: Sequence[Corunner]) -> float:
        return 1.0
