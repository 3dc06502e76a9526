"""The elastic planner's fallbacks when best-fit placing leaves a model short of its rate.

`Planner.add_model` tries them in order: grow the model's own residual gpu-lets, readjust onto
free slots, merge its residuals (then readjust into the slots that freed), time-share a gpu-let.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.scheduling.state import DeviceState, Slot, Tenant, evaluate_device
from router.scheduling.types import ModelDemand
from router.scheduling.want import Want

if TYPE_CHECKING:
    from router.scheduling.elastic import Planner


def readjust(planner: Planner, demand: ModelDemand, remaining: float) -> float:
    """Fill free slots, largest first, with saturated instances, then a residual one."""
    taken = 0.0
    knee = planner.perf.knee(demand.model, demand.slo_ms, planner.sizes)
    free = sorted(
        ((state, slot) for state in planner.states for slot in state.slots if slot.empty),
        key=lambda c: -c[1].size,
    )
    for state, slot in free:
        if remaining - taken <= planner.config.rate_slack_rps:
            break
        if slot not in state.slots or not slot.empty:
            continue  # split or filled by an earlier step
        size = slot.size
        if knee is not None and planner.can_split(state, slot, knee):
            size = knee
        saturated = planner.perf.saturated(demand.model, size, demand.slo_ms)
        if saturated is None:
            continue
        rate = remaining - taken
        if saturated.throughput_rps >= rate:
            residual = planner.perf.residual(demand.model, size, demand.slo_ms, rate)
            if residual is None:
                continue
            want = Want(size, residual, rate, False)
        else:
            want = Want(size, saturated, saturated.throughput_rps, True)
        taken += planner.try_slot(state, slot, demand, want, [])
    return taken


def grow(planner: Planner, demand: ModelDemand, remaining: float) -> float:
    """Give a leftover to this model's own residual or shared gpu-lets, if they can take it
    (a cheaper home for it than a new gpu-let: the original's mergeResidue in spirit)."""
    taken = 0.0
    for state in planner.states:
        for slot in state.slots:
            for tenant in slot.tenants:
                if tenant.demand.name != demand.name or tenant.saturated:
                    continue
                rate = remaining - taken
                if rate <= planner.config.rate_slack_rps:
                    return taken
                snapshot = planner.snapshot(state)
                old_rate = tenant.rate_rps
                tenant.rate_rps = old_rate + rate
                if (
                    evaluate_device(state, planner.perf, planner.interference) is None
                    and tenant.rate_rps >= old_rate + rate - 1e-6
                ):
                    taken += rate
                    continue
                planner.restore(state, snapshot)
                evaluate_device(state, planner.perf, planner.interference)
    return taken


def merge_residue(planner: Planner, demand: ModelDemand) -> bool:
    """Fold a model's residual gpu-lets into the largest of them when it can carry their
    combined rate (the original's mergeResidue); frees the others. True if it merged."""
    mine = [
        (state, slot)
        for state in planner.states
        for slot in state.slots
        if len(slot.tenants) == 1
        and slot.tenants[0].demand.name == demand.name
        and not slot.tenants[0].saturated
    ]
    if len(mine) < 2:
        return False
    total = sum(slot.tenants[0].rate_rps for _, slot in mine)
    keep_state, keep = max(mine, key=lambda c: c[1].size)
    choice = planner.perf.residual(demand.model, keep.size, demand.slo_ms, total)
    if choice is None or choice.throughput_rps < total - 1e-6:
        return False
    states = {id(state): state for state, _ in mine}
    saved = {
        key: (
            list(s.slots),
            planner.snapshot(s),
            [(x, x.duty_ms, list(x.tenants)) for x in s.slots],
        )
        for key, s in states.items()
    }
    for state, slot in mine:
        if slot is not keep:
            slot.tenants.clear()
            slot.duty_ms = 0.0
            if not planner.frozen and not state.used():
                state.slots[:] = [Slot(state.full_size)]
    keep.tenants[0].rate_rps = total
    if all(evaluate_device(s, planner.perf, planner.interference) is None for s in states.values()):
        planner.explanation.append(
            f"{demand.name}: merged {len(mine)} residual gpu-lets into one of "
            f"{keep.size:g} on {keep_state.device.device_id}"
        )
        return True
    for key, state in states.items():
        slots, snapshot, contents = saved[key]
        state.slots[:] = slots
        for slot, duty, tenants in contents:
            slot.duty_ms, slot.tenants[:] = duty, tenants
        planner.restore(state, snapshot)
        evaluate_device(state, planner.perf, planner.interference)
    return False


def time_share(planner: Planner, demand: ModelDemand, remaining: float) -> float:
    """Join gpu-lets with spare time, one batch per duty cycle each (allocateTimeShare)."""
    taken = 0.0
    shared = sorted(
        (
            (state, slot)
            for state in planner.states
            for slot in state.slots
            if slot.tenants
            and len(slot.tenants) < planner.config.max_models_per_gpulet
            and slot.occupancy() < 1
            and all(t.demand.name != demand.name for t in slot.tenants)
            and not any(t.saturated for t in slot.tenants)
        ),
        key=lambda c: -c[1].occupancy(),
    )
    for state, slot in shared:
        rate = remaining - taken
        if rate <= planner.config.rate_slack_rps:
            break
        taken += join(planner, state, slot, demand, rate)
    return taken


def join(
    planner: Planner, state: DeviceState, slot: Slot, demand: ModelDemand, rate: float
) -> float:
    top = min(planner.config.max_batch, int(slot.duty_ms * rate / 1000))
    if top < 1:
        return join_slow(planner, state, slot, demand, rate)
    for batch in range(top, 0, -1):
        duty = 1000 * batch / rate
        latency = planner.perf.estimate_ms(demand.model, batch, slot.size)
        if latency is None or duty > slot.duty_ms:
            continue
        # d + L̂ < SLO and the new batch fits in the slot's spare share of the cycle.
        if duty + latency < demand.slo_ms and latency / duty < 1 - slot.occupancy():
            return admit(planner, state, slot, Tenant(demand, batch, rate, False), duty)
    return 0.0


# Below the SLO by this much, so that rounding never breaks the bound the cycle was cut to.
SLO_TOLERANCE_MS = 1e-6


def join_slow(
    planner: Planner, state: DeviceState, slot: Slot, demand: ModelDemand, rate: float
) -> float:
    """A rate too low to fill one batch within the slot's cycle (perf.residual's corner case):
    batch 1 in every cycle, the cycle cut where needed so that every tenant still meets its
    SLO with the newcomer's batch in it, Σ L̂ + d ≤ min SLO. It then serves up to 1000/d
    req/s, more than asked; the others keep their rates on a shorter cycle."""
    latency = planner.perf.estimate_ms(demand.model, 1, slot.size)
    if latency is None:
        return 0.0
    busy_ms = sum(t.latency_ms for t in slot.tenants) + latency
    tightest_ms = min([t.demand.slo_ms for t in slot.tenants] + [demand.slo_ms])
    duty = min(slot.duty_ms, tightest_ms - busy_ms - SLO_TOLERANCE_MS)
    if duty < busy_ms:  # the batches would not fit in one cycle: occupancy > 1
        return 0.0
    return admit(planner, state, slot, Tenant(demand, 1, rate, False), duty)


def admit(planner: Planner, state: DeviceState, slot: Slot, tenant: Tenant, duty: float) -> float:
    """Add `tenant` on a cycle of `duty` if memory and every SLO on the device allow it (the
    rate it takes), else leave the device as it was (0)."""
    if not planner.memory_fits(state, tenant.demand, new_process=False):
        return 0.0
    snapshot = planner.snapshot(state)
    old_duty = slot.duty_ms
    slot.tenants.append(tenant)
    slot.duty_ms = duty
    if evaluate_device(state, planner.perf, planner.interference) is None:
        return tenant.rate_rps
    slot.tenants.remove(tenant)
    slot.duty_ms = old_duty
    planner.restore(state, snapshot)
    evaluate_device(state, planner.perf, planner.interference)
    return 0.0
