"""Routing among a model's gpu-lets (pure): in proportion to planned throughput.

Pick the gpu-let with the least outstanding work per unit of planned rate,
(outstanding + 1) / planned_rps: in steady state each gets its planned share, and a gpu-let that
falls behind gets less until it catches up. Ties go to the first in plan order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A gpu-let planned at 0 req/s for a model (e.g. a plan made before any rate was known) still
# takes work, as if planned at this much.
MIN_PLANNED_RPS = 1e-3


@dataclass(frozen=True)
class RouteLoad:
    gpulet_id: str
    planned_rps: float
    outstanding_items: int


def pick(routes: Sequence[RouteLoad]) -> str:
    return ranked(routes)[0]


def ranked(routes: Sequence[RouteLoad]) -> list[str]:
    """Every route, the one to pick first (the next ones: where to go when it cannot take the
    request in time)."""
    if not routes:
        raise ValueError("no route to pick from")
    order = sorted(
        range(len(routes)),
        key=lambda i: (
            (routes[i].outstanding_items + 1) / max(routes[i].planned_rps, MIN_PLANNED_RPS),
            i,
        ),
    )
    return [routes[i].gpulet_id for i in order]
