"""Peak rate: the largest sweep rate r with a feasible plan, and the fluid bound it is judged by.

Peak search (after the original's §2.10 sweep): rates are multiples of the scenario's step.
Feasibility is close to monotone in r but heuristics can dip, so after a binary search for the
last feasible step we also probe a few steps above it and keep the highest feasible one.

Fluid bound: each model fills whole devices in its best allowed layout, with no interference and
no packing loss. A device laid out as L serves Σ_{s∈L} T_sat(m, s) of model m, so at sweep rate
r the mix needs Σ_m w_m·r / best_m devices; the bound is r* = N / Σ_m (w_m / best_m).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.scheduling.perf import PerfModel
from router.scheduling.schedulers import layouts
from router.scheduling.types import Plan

PROBE_STEPS_ABOVE = 3


@dataclass(frozen=True)
class PeakResult:
    rate_rps: float  # 0 when even the first step is infeasible
    plan: Plan | None
    plans_made: int


def peak_search(plan_at: Callable[[float], Plan], step_rps: float, max_rps: float) -> PeakResult:
    top = int(max_rps // step_rps)
    made = 0
    plans: dict[int, Plan] = {}

    def feasible(k: int) -> bool:
        nonlocal made
        if k not in plans:
            plans[k] = plan_at(k * step_rps)
            made += 1
        return plans[k].feasible

    if top < 1 or not feasible(1):
        return PeakResult(0.0, plans.get(1), made)
    low, high = 1, top + 1  # feasible(low); high is infeasible or beyond the sweep
    while high - low > 1:
        mid = (low + high) // 2
        if feasible(mid):
            low = mid
        else:
            high = mid
    best = low
    for k in range(low + 1, min(top, low + PROBE_STEPS_ABOVE) + 1):
        if feasible(k):
            best = k
    return PeakResult(best * step_rps, plans[best], made)


def best_device_throughput(
    perf: PerfModel, model: str, slo_ms: float, sizes: Sequence[float], max_parts: int
) -> float:
    """The most req/s one device can give `model` under its SLO: its best layout, saturated."""
    full = perf.profile.full_size
    best = 0.0
    for layout in layouts(sizes, full, max_parts):
        total = 0.0
        for size in layout:
            choice = perf.saturated(model, size, slo_ms)
            total += choice.throughput_rps if choice else 0.0
        best = max(best, total)
    return best


def fluid_bound(
    perf: PerfModel,
    models: Sequence[tuple[str, float, float]],  # (model, slo_ms, weight)
    devices: int,
    sizes: Sequence[float],
    max_parts: int,
) -> float:
    demand_per_rps = 0.0
    for model, slo_ms, weight in models:
        best = best_device_throughput(perf, model, slo_ms, sizes, max_parts)
        if best <= 0:
            return 0.0
        demand_per_rps += weight / best
    return devices / demand_per_rps
