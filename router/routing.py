"""The routing table the hot path reads: ready gpulets per model and where their agents live.

Built by the control loop from the placement and agent reports, and swapped in whole, so a
request never sees a half-updated table and never touches Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.errors import Overloaded, Unavailable
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


class InflightCounter:
    """Requests in flight per gpulet; picks the least-loaded ready gpulet of a model."""

    def __init__(self, limit_per_gpulet: int, retry_after_s: float) -> None:
        self.limit = limit_per_gpulet
        self.retry_after_s = retry_after_s
        self.inflight: dict[str, int] = {}

    def acquire(self, table: RoutingTable, model: str) -> Route:
        routes = table.routes.get(model, ())
        if not routes:
            raise Unavailable(
                f"no ready gpulet serves {model} yet; retry shortly",
                model=model,
                retry_after_s=self.retry_after_s,
            )
        best = min(routes, key=lambda r: self.inflight.get(r.gpulet.gpulet_id, 0))
        count = self.inflight.get(best.gpulet.gpulet_id, 0)
        if count >= self.limit:
            raise Overloaded(
                f"every gpulet of {model} has {self.limit} requests in flight",
                model=model,
                queued=count,
                limit=self.limit,
                retry_after_s=self.retry_after_s,
            )
        self.inflight[best.gpulet.gpulet_id] = count + 1
        return best

    def release(self, route: Route) -> None:
        gpulet_id = route.gpulet.gpulet_id
        left = self.inflight.get(gpulet_id, 1) - 1
        if left > 0:
            self.inflight[gpulet_id] = left
        else:
            self.inflight.pop(gpulet_id, None)
