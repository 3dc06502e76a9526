"""The planner's working state: devices split into slots, and the models (tenants) in each slot.

Mutable, but private to one call of a planner. `evaluate_device` re-derives every tenant's
batch, duty cycle and throughput with the interference of its neighbours, and says whether every
SLO on the device still holds (the original's adjustSatNode / adjustResNode, §2.8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from common.interference import Corunner, InterferenceModel
from router.scheduling.perf import PerfModel
from router.scheduling.types import Device, ModelDemand, PlannedGpulet, PlannedModel


@dataclass
class Tenant:
    demand: ModelDemand
    batch: int
    rate_rps: float  # the share of the model's rate this slot is planned to serve
    saturated: bool  # alone and always busy: its throughput is whatever 2·L̂ ≤ SLO allows
    latency_ms: float = 0.0  # L̂ with interference, from the last evaluation
    alpha: float = 1.0


@dataclass
class Slot:
    size: float
    tenants: list[Tenant] = field(default_factory=list)
    duty_ms: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.tenants

    def occupancy(self) -> float:
        if not self.tenants or self.duty_ms <= 0:
            return 0.0
        return sum(t.latency_ms for t in self.tenants) / self.duty_ms

    def worst_latency_ms(self, tenant: Tenant) -> float:
        """Queueing for one duty cycle, then every tenant's batch of this cycle."""
        return sum(t.latency_ms for t in self.tenants) + self.duty_ms


@dataclass
class DeviceState:
    device: Device
    slots: list[Slot]

    @property
    def full_size(self) -> float:
        return self.device.profile.full_size

    def used(self) -> bool:
        return any(not s.empty for s in self.slots)

    def memory_mb(self, overhead_mb: float) -> float:
        profile = self.device.profile
        return sum(
            overhead_mb + sum(profile.memory_of(t.demand.model) for t in s.tenants)
            for s in self.slots
            if not s.empty
        )


def corunners(device: DeviceState, slot: Slot) -> list[Corunner]:
    return [
        Corunner(t.demand.model, t.batch, other.size)
        for other in device.slots
        if other is not slot
        for t in other.tenants
    ]


def evaluate_device(
    device: DeviceState, perf: PerfModel, interference: InterferenceModel
) -> str | None:
    """Re-derive every tenant with its neighbours' interference; None if all SLOs hold, else why."""
    for slot in device.slots:
        if slot.empty:
            continue
        neighbours = corunners(device, slot)
        for tenant in slot.tenants:
            tenant.alpha = (
                interference.slowdown(
                    Corunner(tenant.demand.model, tenant.batch, slot.size), neighbours
                )
                if neighbours
                else 1.0
            )
        problem = _evaluate_slot(slot, perf)
        if problem is not None:
            return f"{device.device.device_id}/{slot.size:g}: {problem}"
    return None


def _evaluate_slot(slot: Slot, perf: PerfModel) -> str | None:
    if len(slot.tenants) == 1:
        tenant = slot.tenants[0]
        demand = tenant.demand
        if tenant.saturated:
            # Keep the batch if 2·L̂ ≤ SLO still holds, else shrink it (adjustSatNode).
            for batch in range(tenant.batch, 0, -1):
                latency = perf.estimate_ms(demand.model, batch, slot.size, tenant.alpha)
                if latency is not None and 2 * latency <= demand.slo_ms:
                    tenant.batch, tenant.latency_ms = batch, latency
                    tenant.rate_rps = 1000 * batch / latency
                    slot.duty_ms = latency
                    return None
            return f"{demand.name} cannot meet {demand.slo_ms:g} ms even at batch 1"
        choice = perf.residual(
            demand.model, slot.size, demand.slo_ms, tenant.rate_rps, tenant.alpha
        )
        if choice is None:
            return (f"{demand.name} at {tenant.rate_rps:.0f} req/s cannot meet "
                    f"{demand.slo_ms:g} ms")  # fmt: skip
        tenant.batch, tenant.latency_ms = choice.batch, choice.latency_ms
        tenant.rate_rps = min(tenant.rate_rps, choice.throughput_rps)
        slot.duty_ms = choice.duty_cycle_ms
        return None
    return _evaluate_shared(slot, perf)


def _evaluate_shared(slot: Slot, perf: PerfModel) -> str | None:
    """Tenants take turns: one batch each per duty cycle d (Nexus squishy bin packing)."""
    d = slot.duty_ms
    total = 0.0
    for tenant in slot.tenants:
        # b_i = ceil(d · r_i): every request that arrives in one duty cycle. (The original
        # floors it and absorbs the loss in a 15 req/s slack; ceil keeps the whole rate.)
        batch = max(1, math.ceil(d * tenant.rate_rps / 1000 - 1e-9))
        batch = min(batch, perf.config.max_batch)
        latency = perf.estimate_ms(tenant.demand.model, batch, slot.size, tenant.alpha)
        if latency is None:
            return f"{tenant.demand.name} has no profile at batch {batch}"
        tenant.batch, tenant.latency_ms = batch, latency
        tenant.rate_rps = min(tenant.rate_rps, 1000 * batch / d)
        total += latency
    if total > d:  # occupancy ≤ 1
        return f"time-shared batches take {total:.1f} ms, more than the {d:.1f} ms duty cycle"
    for tenant in slot.tenants:
        # Σ L̂_i + d ≤ SLO_j: wait one cycle, then every model's batch of this cycle runs.
        if total + d > tenant.demand.slo_ms:
            return (f"{tenant.demand.name} would wait {total + d:.1f} ms > SLO "
                    f"{tenant.demand.slo_ms:g} ms")  # fmt: skip
    return None


def to_planned(device: DeviceState, slot: Slot) -> PlannedGpulet:
    return PlannedGpulet(
        device_id=device.device.device_id,
        size=slot.size,
        models=tuple(
            PlannedModel(
                name=t.demand.name,
                model=t.demand.model,
                batch=t.batch,
                rate_rps=t.rate_rps,
                latency_ms=slot.worst_latency_ms(t),
                slo_ms=t.demand.slo_ms,
            )
            for t in slot.tenants
        ),
        duty_cycle_ms=slot.duty_ms,
        occupancy=slot.occupancy(),
        slowdown=max((t.alpha for t in slot.tenants), default=1.0),
    )
