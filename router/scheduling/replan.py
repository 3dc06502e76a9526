"""Re-planning when demand changes (pure): incremental first, then full, then one more device.

1. Incremental: the running layout is frozen (no gpu-let changes size, no whole device is
   split); models whose demand did not change keep their gpu-lets; changed models are placed
   again into what is free (readjust, temporal sharing) (the original's incremental mode).
2. Full re-partition on the devices in use, when the incremental step cannot serve the demand.
3. One more device from the pool, when even that fails.
Every step's plan reports the devices it uses; the others can be released ("shrink").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from common.interference import InterferenceModel
from router.scheduling.elastic import Planner
from router.scheduling.schedulers import config_for, plan
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig

Step = Literal["incremental", "full", "more_devices", "infeasible"]
# A model's demand "changed" when it needs more than its gpu-lets give, or fell by more than
# this share (the original re-plans on a >10 % fall).
FALL_SHARE = 0.10


@dataclass(frozen=True)
class Replan:
    plan: Plan
    step: Step
    devices: tuple[str, ...]  # the devices the plan was made on


def changed_models(previous: Plan, demands: Sequence[ModelDemand]) -> set[str]:
    changed = set()
    served = {m.name for g in previous.gpulets for m in g.models}
    for demand in demands:
        planned = previous.planned_rps(demand.name)
        if (
            demand.name not in served
            or demand.rate_rps > planned + 1e-6
            or demand.rate_rps < (1 - FALL_SHARE) * planned
        ):
            changed.add(demand.name)
    slos = {m.name: m.slo_ms for g in previous.gpulets for m in g.models}
    changed |= {d.name for d in demands if d.name in slos and slos[d.name] != d.slo_ms}
    return changed


def incremental(
    name: str,
    previous: Plan,
    demands: Sequence[ModelDemand],
    devices: Sequence[Device],
    config: PlanConfig,
    interference: InterferenceModel | None,
    changed: set[str],
) -> Plan:
    layout = []
    for device in devices:
        sizes = [g.size for g in previous.gpulets if g.device_id == device.device_id]
        rest = device.profile.full_size - sum(sizes)
        layout.append([*sizes, rest] if rest > 1e-9 else sizes or [device.profile.full_size])
    planner = Planner(name, devices, config_for(name, config), interference, frozen_layout=layout)
    planner.seed(previous.gpulets, {d.name: d for d in demands if d.name not in changed})
    return planner.plan([d for d in demands if d.name in changed], everyone=demands)


def replan(
    name: str,
    previous: Plan,
    demands: Sequence[ModelDemand],
    pool: Sequence[Device],
    config: PlanConfig | None = None,
    interference: InterferenceModel | None = None,
    changed: set[str] | None = None,
) -> Replan:
    """`pool`: every device that may be used, in preference order; the plan's own come first."""
    if name == "ideal":
        raise ValueError("ideal is an offline reference; re-plan with another scheduler")
    config = config or PlanConfig()
    used = {g.device_id for g in previous.gpulets}
    base = [d for d in pool if d.device_id in used] or list(pool[:1])
    spare = [d for d in pool if d.device_id not in used]
    todo = changed if changed is not None else changed_models(previous, demands)
    if previous.gpulets:
        result = incremental(name, previous, demands, base, config, interference, todo)
        if result.feasible:
            return Replan(result, "incremental", _ids(base))
    result = plan(name, demands, base, config, interference)
    if result.feasible:
        return Replan(result, "full", _ids(base))
    if spare:
        more = [*base, spare[0]]
        grown = plan(name, demands, more, config, interference)
        if grown.feasible:
            return Replan(grown, "more_devices", _ids(more))
        result = grown
    return Replan(result, "infeasible", _ids(base))


def _ids(devices: Sequence[Device]) -> tuple[str, ...]:
    return tuple(d.device_id for d in devices)
