"""The routing table the hot path reads: ready gpulets per model and where their agents live.

Built by the control loop from the placement and agent reports, and swapped in whole, so a
request never sees a half-updated table and never touches Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.placement import GpuletSpec, Placement


@dataclass(frozen=True)
class Route:
    gpulet: GpuletSpec
    agent_url: str


@dataclass(frozen=True)
class RoutingTable:
    placement: Placement
    routes: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)  # model -> ready routes

    def ready_models(self) -> set[str]:
        return {m for m, routes in self.routes.items() if routes}


def build_table(
    placement: Placement, agent_urls: Mapping[str, str], ready: set[str]
) -> RoutingTable:
    routes: dict[str, list[Route]] = {}
    for gpulet in placement.gpulets:
        url = agent_urls.get(gpulet.agent_id)
        if url is None or gpulet.gpulet_id not in ready:
            continue
        for model in gpulet.model_names:
            routes.setdefault(model, []).append(Route(gpulet, url))
    return RoutingTable(placement, {m: tuple(r) for m, r in routes.items()})
