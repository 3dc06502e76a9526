"""The running cluster's plan as `GET /v1/plan` shows it (pure): each gpu-let of the placement
with its predicted latencies, and the peak equal rate the agents' devices carry.

Predictions use the profile the router plans on and the perf model's rules (perf.py):
    L̂(m, b, s) = margin · L(m, b, s) · α,  α from the gpu-lets beside it on its device;
    worst      = duty + Σ_m L̂(m, b_m)   (a request waits at most one duty cycle, then every
                 model's batch of that cycle runs: the planner's bound, state.py);
    busy share = Σ_m L̂(m, b_m) / duty.
They are re-derived from the placement (what the router runs), so they hold for gpu-lets a
re-plan kept as well as for new ones; α uses the neighbours' final batch sizes, so it may differ
a little from the planner's, which fixed α before the last batch adjustments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common.cluster import AgentInfo
from common.interference import Corunner, InterferenceModel
from common.placement import GpuletSpec, Placement
from common.profiles import DeviceProfile
from router.scheduling.live import plan_live
from router.scheduling.perf import PerfModel
from router.scheduling.report import plan_json
from router.scheduling.schedulers import SCHEDULERS, SearchTooLarge
from router.scheduling.types import PlanConfig


def predicted_gpulets(
    placement: Placement,
    profile: DeviceProfile | None,
    slos_ms: Mapping[str, float],
    interference: InterferenceModel,
    config: PlanConfig | None = None,
) -> list[dict[str, Any]]:
    """The placement's gpu-lets, each model with L̂ and worst case (None: no profile or no
    measurement for that batch and size)."""
    perf = PerfModel(profile, config or PlanConfig()) if profile is not None else None
    out = []
    for spec in placement.gpulets:
        neighbours = _corunners(placement.gpulets, spec)
        latencies: list[float | None] = []
        for model in spec.models:
            latency_ms = None
            if perf is not None:
                alpha = interference.slowdown(
                    Corunner(model.name, model.batch_size, spec.size), neighbours
                ) if neighbours else 1.0  # fmt: skip
                latency_ms = perf.estimate_ms(model.name, model.batch_size, spec.size, alpha)
            latencies.append(latency_ms)
        known = [ms for ms in latencies if ms is not None]
        busy_ms = sum(known) if known and len(known) == len(latencies) else None
        duty = spec.duty_cycle_ms
        models = [
            {
                "name": model.name,
                "batch_size": model.batch_size,
                "planned_rps": model.planned_rps,
                "batch_latency_ms": _rounded(latency_ms),
                "worst_latency_ms": _rounded(None if busy_ms is None else duty + busy_ms),
                "slo_ms": slos_ms.get(model.name),
            }
            for model, latency_ms in zip(spec.models, latencies, strict=True)
        ]
        out.append({
            "gpulet_id": spec.gpulet_id,
            "agent_id": spec.agent_id,
            "device_id": spec.device_id,
            "size": spec.size,
            "cores": list(spec.cores),
            "duty_cycle_ms": duty,
            "occupancy": None if busy_ms is None or duty <= 0 else round(busy_ms / duty, 4),
            "models": models,
        })  # fmt: skip
    return out


def _corunners(gpulets: Sequence[GpuletSpec], spec: GpuletSpec) -> list[Corunner]:
    """What runs beside `spec` on its device (other gpu-lets' models), as the planner sees it."""
    return [
        Corunner(m.name, m.batch_size, other.size)
        for other in gpulets
        if other.gpulet_id != spec.gpulet_id
        and (other.agent_id, other.device_id) == (spec.agent_id, spec.device_id)
        for m in other.models
    ]


def live_peak(
    agents: Sequence[AgentInfo],
    profile: DeviceProfile | None,
    slos_ms: Mapping[str, float],
    scheduler: str,
    interference: InterferenceModel,
    serving_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The largest equal rate r every served model can get at once on these devices (the peak
    search `plan_live` runs when no rates are declared), and the plan that carries it."""
    devices = sum(len(a.devices) for a in agents)
    base: dict[str, Any] = {"scheduler": scheduler, "agents": len(agents), "devices": devices,
                            "slos_ms": dict(slos_ms), "peak_rps": None, "plan": None}  # fmt: skip
    if scheduler not in SCHEDULERS:
        return {**base, "why": f"scheduler {scheduler!r} does not plan by rate; set "
                f"GPULET_SCHEDULER to one of {', '.join(SCHEDULERS)}"}  # fmt: skip
    if profile is None:
        return {**base, "why": "no profile yet: the agents are still measuring theirs"}
    try:
        live = plan_live(agents, profile, slos_ms, {}, scheduler, interference=interference,
                         serving_ms=serving_ms)
    except SearchTooLarge as exc:  # `ideal` on a cluster too large to search exhaustively
        return {**base, "why": str(exc)}
    if live is None:
        return {**base, "why": "no device the profile describes, or no model fits its SLO"}
    return {**base, "peak_rps": live.rate_rps, "plan": plan_json(live.plan)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
