"""Make-before-break (pure): which gpu-lets route each model while a new placement warms up.

A model switches to the new placement's gpu-lets once all of them are ready; until then it keeps
the routes it had, so its requests never wait on a cold gpu-let and none is refused for a
re-plan. A model with no old route left (its agent died, or it is new) takes whatever new
gpu-lets are ready. Gpu-lets that no longer route anything are kept running until the
dispatcher has drained them, then stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from common.placement import GpuletSpec, Placement
from router.dispatch.routing import Route, RoutingTable


@dataclass(frozen=True)
class Switch:
    table: RoutingTable
    complete: bool  # every model routes only to the target placement's gpu-lets


def switch_routes(
    target: Placement,
    current: RoutingTable,
    agent_urls: Mapping[str, str],
    ready: Set[str],
    *,
    give_up: bool = False,
) -> Switch:
    """The routing table for `target`, keeping `current`'s routes for models whose new gpu-lets
    are not all ready (unless `give_up`: the switch has waited too long)."""
    models = sorted({m for g in target.gpulets for m in g.model_names} | set(current.routes))
    routes: dict[str, tuple[Route, ...]] = {}
    complete = True
    for model in models:
        wanted = [
            Route(g, agent_urls[g.agent_id])
            for g in target.gpulets_of(model)
            if g.agent_id in agent_urls
        ]
        warm = tuple(r for r in wanted if r.gpulet.gpulet_id in ready)
        if wanted and len(warm) == len(wanted):
            routes[model] = warm
            continue
        old = tuple(
            r
            for r in current.routes.get(model, ())
            if r.gpulet.gpulet_id in ready and agent_urls.get(r.gpulet.agent_id) == r.agent_url
        )
        if wanted:
            complete = False
        chosen = warm if (give_up and warm) or not old else old
        if chosen:
            routes[model] = chosen
    return Switch(RoutingTable(target, routes), complete)


def still_running(
    retiring: Mapping[str, GpuletSpec], table: RoutingTable, in_use: Set[str]
) -> dict[str, GpuletSpec]:
    """The replaced gpu-lets to keep: routed by `table`, or with requests still draining."""
    routed = {r.gpulet.gpulet_id for routes in table.routes.values() for r in routes}
    return {i: g for i, g in retiring.items() if i in routed or i in in_use}
