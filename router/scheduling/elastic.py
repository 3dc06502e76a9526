"""Elastic partitioning (the gpu-let planner) and the temporal and greedy baselines built on it.

For each model, in ascending rate·SLO order (reference/gpulet-paper.md §2.7):
  1. estimate gpu-lets: saturated ones of the knee size while the rate exceeds their
     throughput, then one residual gpu-let shrunk to the smallest size that meets the SLO;
  2. place them largest first, best fit: an exact-size free slot or a whole device (split into
     size + rest) first, else the free slot with the least left over; a slot is rejected when
     memory does not fit or interference would break this model's or a neighbour's SLO;
  3. if placing fails (fallbacks.py): readjust onto the free slots, largest first; then temporal
     sharing of up to `max_models_per_gpulet` models in one gpu-let (one batch each per duty cycle).
With interference on, models whose planned throughput ends under 85 % of demand are re-placed
once; smaller deficits get extra gpu-lets. A plan is feasible when every model's demand is met.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from common.interference import InterferenceModel, NoInterference
from common.profiles import PROCESS_OVERHEAD_MB
from router.scheduling.fallbacks import grow, merge_residue, readjust, time_share
from router.scheduling.perf import PerfModel
from router.scheduling.state import DeviceState, Slot, Tenant, evaluate_device, to_planned
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig, PlannedGpulet
from router.scheduling.want import Want

DEFICIT_ROUNDS = 2  # extra passes that place capacity lost to neighbours' interference
MAX_REJECTIONS_EXPLAINED = 3


class Planner:
    """One planning run; `frozen_layout` gives pre-split devices (the ideal search, incremental)."""

    def __init__(
        self,
        name: str,
        devices: Sequence[Device],
        config: PlanConfig,
        interference: InterferenceModel | None = None,
        *,
        greedy: bool = False,
        frozen_layout: Sequence[Sequence[float]] | None = None,
        perf: PerfModel | None = None,
    ) -> None:
        if not devices:
            raise ValueError("no devices to plan on")
        self.name = name
        self.config = config
        self.interference = (
            interference if config.interference and interference else (NoInterference())
        )
        self.greedy = greedy
        self.profile = devices[0].profile
        # Variants of one plan share a PerfModel: they differ in policy, not in latency.
        self.perf = perf or PerfModel(self.profile, config)
        self.frozen = frozen_layout is not None
        full = self.profile.full_size
        self.states = [
            DeviceState(d, [Slot(s) for s in (frozen_layout[i] if frozen_layout else [full])])
            for i, d in enumerate(devices)
        ]
        allowed = sorted(self.profile.sizes) if config.allow_split else [full]
        if self.frozen:
            allowed = sorted({s for layout in frozen_layout or [] for s in layout})
        self.sizes = allowed
        self.explanation: list[str] = []

    # top level ----------------------------------------------------------------------------
    def seed(self, gpulets: Sequence[PlannedGpulet], keep: Mapping[str, ModelDemand]) -> None:
        """Put back an earlier plan's gpu-lets for the models in `keep` (incremental re-plan:
        the layout must be frozen from those same gpu-lets)."""
        states = {s.device.device_id: s for s in self.states}
        for gpulet in gpulets:
            state = states.get(gpulet.device_id)
            if state is None:
                continue
            slot = next((s for s in state.slots if s.empty and s.size == gpulet.size), None)
            if slot is None:
                continue
            for model in gpulet.models:
                demand = keep.get(model.name)
                if demand is not None:
                    # Alone and always busy in the old plan: saturated.
                    saturated = len(gpulet.models) == 1 and gpulet.occupancy >= 1 - 1e-6
                    slot.tenants.append(Tenant(demand, model.batch, model.rate_rps, saturated))
            slot.duty_ms = gpulet.duty_cycle_ms if slot.tenants else 0.0
        for state in self.states:
            evaluate_device(state, self.perf, self.interference)

    def plan(self, demands: Sequence[ModelDemand], *, everyone: Sequence[ModelDemand] = ()) -> Plan:
        """Place `demands`; the plan is judged on `everyone` (default: the same demands)."""
        order = sorted(demands, key=lambda d: (d.rate_rps * d.slo_ms, d.name))
        for demand in order:
            self.add_model(demand, demand.rate_rps)
        if self.config.interference:
            redo = [d for d in order if self.planned(d) < self.config.retry_threshold * d.rate_rps]
            for demand in redo:
                self.explanation.append(
                    f"{demand.name}: planned {self.planned(demand):.0f} of "
                    f"{demand.rate_rps:.0f} req/s (< {self.config.retry_threshold:.0%}); "
                    "re-placed once"
                )
                self.remove(demand)
            for demand in redo:
                self.add_model(demand, demand.rate_rps)
        for _ in range(DEFICIT_ROUNDS):
            short = [(d, d.rate_rps - self.planned(d)) for d in order]
            short = [(d, gap) for d, gap in short if gap > max(self.config.rate_slack_rps, 1e-6)]
            if not short:
                break
            for demand, gap in short:
                self.add_model(demand, gap)
        return self.result(list(everyone) or order)

    def result(self, demands: Sequence[ModelDemand]) -> Plan:
        shortfall = {
            d.name: round(d.rate_rps - self.planned(d), 3)
            for d in demands
            if d.rate_rps - self.planned(d) > max(self.config.rate_slack_rps, 1e-6)
        }
        gpulets = tuple(
            to_planned(state, slot)
            for state in self.states
            for slot in state.slots
            if not slot.empty
        )
        used = sum(1 for s in self.states if s.used())
        summary = (
            f"{self.name}: feasible on {used} of {len(self.states)} devices"
            if not shortfall
            else f"{self.name}: infeasible; unmet req/s: "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(shortfall.items()))
        )
        return Plan(
            scheduler=self.name,
            feasible=not shortfall,
            gpulets=gpulets,
            devices_used=used,
            explanation=(summary, *self.explanation),
            shortfall_rps=shortfall,
        )

    def planned(self, demand: ModelDemand) -> float:
        return sum(
            t.rate_rps
            for state in self.states
            for slot in state.slots
            for t in slot.tenants
            if t.demand.name == demand.name
        )

    # one model ----------------------------------------------------------------------------
    def add_model(self, demand: ModelDemand, rate_rps: float) -> None:
        slack = self.config.rate_slack_rps
        remaining = rate_rps
        wants = (
            self.greedy_wants(demand, rate_rps) if self.greedy else self.estimate(demand, rate_rps)
        )
        if not wants:
            self.explanation.append(
                f"{demand.name}: no size meets its {demand.slo_ms:g} ms SLO on {self.profile.name}"
            )
            return
        for want in sorted(wants, key=lambda w: -w.size):
            if remaining <= slack:
                break
            placed = self.place(demand, want)
            if placed <= 0:
                break
            remaining -= placed
        if remaining > slack and not self.greedy:
            remaining -= grow(self, demand, remaining)
        if remaining > slack and not self.greedy:
            remaining -= readjust(self, demand, remaining)
        if remaining > slack and not self.greedy and merge_residue(self, demand):
            remaining -= readjust(self, demand, remaining)  # into the slots the merge freed
        if remaining > slack and self.config.allow_temporal_sharing and not self.greedy:
            remaining -= time_share(self, demand, remaining)

    def estimate(self, demand: ModelDemand, rate_rps: float) -> list[Want]:
        """Saturated gpu-lets of the knee size, then one residual gpu-let, shrunk (§2.4)."""
        knee = self.perf.knee(
            demand.model, demand.slo_ms, self.sizes, include_full=self.config.whole_knee
        )
        if knee is None:
            return []
        full = self.profile.full_size
        if self.config.min_split_gain > 0 and full in self.sizes:
            whole = self.perf.saturated(demand.model, full, demand.slo_ms)
            split = self.perf.best_split_rps(demand.model, demand.slo_ms, self.sizes)
            if whole is not None and split < self.config.min_split_gain * whole.throughput_rps:
                knee = full
        saturated = self.perf.saturated(demand.model, knee, demand.slo_ms)
        assert saturated is not None
        wants, rate = [], rate_rps
        while rate > saturated.throughput_rps:
            wants.append(Want(knee, saturated, saturated.throughput_rps, True))
            rate -= saturated.throughput_rps
        if rate > self.config.rate_slack_rps:
            residual = self.residual_want(demand, rate, knee)
            if residual is not None:
                wants.append(residual)
        if wants:
            self.explanation.append(
                f"{demand.name}: knee {knee:g} (steepest saturated-throughput gain), "
                f"saturated batch {saturated.batch} gives {saturated.throughput_rps:.0f} req/s "
                f"(2·L̂ = {2 * saturated.latency_ms:.1f} ≤ {demand.slo_ms:g} ms); "
                f"estimate {[f'{w.size:g}' for w in wants]} for {rate_rps:.0f} req/s"
            )
        return wants

    def residual_want(self, demand: ModelDemand, rate: float, size: float) -> Want | None:
        choice = self.perf.residual(demand.model, size, demand.slo_ms, rate)
        if choice is None:
            return None
        best = size
        for smaller in sorted((s for s in self.sizes if s < size), reverse=True):
            latency = self.perf.estimate_ms(demand.model, choice.batch, smaller)
            fill_ms = 1000 * choice.batch / rate
            if latency is not None and fill_ms > demand.slo_ms:
                # A rate too low to fill one batch within the SLO (perf.residual's corner
                # case: batch 1 on a cycle of SLO - L̂): shrink while the smaller size still
                # runs it in time. The rule below never shrinks it, and such a model then
                # took a whole device it needs a sliver of.
                shrunk = self.perf.residual(demand.model, smaller, demand.slo_ms, rate)
                if shrunk is None or shrunk.throughput_rps < rate:
                    break
                best = smaller
                continue
            # Shrink while the batch still fills slower than it runs and L̂ + b/r ≤ SLO.
            if latency is None or fill_ms < latency or latency + fill_ms > demand.slo_ms:
                break
            best = smaller
        final = self.perf.residual(demand.model, best, demand.slo_ms, rate)
        return None if final is None else Want(best, final, min(rate, final.throughput_rps), False)

    def greedy_wants(self, demand: ModelDemand, rate_rps: float) -> list[Want]:
        """Smallest size whose saturated throughput covers the remaining rate, else the largest."""
        wants: list[Want] = []
        rate = rate_rps
        table = {
            s: c
            for s in self.sizes
            if (c := self.perf.saturated(demand.model, s, demand.slo_ms)) is not None
        }
        if not table:
            return []
        largest = max(table)
        while rate > self.config.rate_slack_rps and len(wants) < 4 * len(self.states):
            fits = [s for s in sorted(table) if table[s].throughput_rps >= rate]
            size = fits[0] if fits else largest
            choice = table[size]
            take = min(rate, choice.throughput_rps)
            wants.append(Want(size, choice, take, take >= choice.throughput_rps))
            rate -= take
        return wants

    # placing ------------------------------------------------------------------------------
    def place(self, demand: ModelDemand, want: Want) -> float:
        """Best fit for one gpu-let; returns the rate it took (0 if no slot would do).

        Slots are tried in best-fit order. With interference on, the first few that fit are
        compared and the one whose device then serves the most (in whole-device units of each
        model's throughput) is kept: the SLO veto alone would take the first noisy neighbour.
        """
        rejections: list[str] = []
        compare = self.config.compare_fits if self.config.interference else 1
        fits: list[tuple[float, int, DeviceState, Slot]] = []
        for order, (state, slot) in enumerate(self.candidates(want.size)):
            if compare == 1:
                taken = self.try_slot(state, slot, demand, want, rejections)
                if taken > 0:
                    return taken
                continue
            value = self.trial_value(state, slot, demand, want, rejections)
            if value is not None:
                fits.append((value, order, state, slot))
                if len(fits) >= compare:
                    break
        if fits:
            _, _, state, slot = max(fits, key=lambda f: (f[0], -f[1]))
            taken = self.try_slot(state, slot, demand, want, rejections)
            if taken > 0:
                return taken
        if rejections:
            self.explanation.append(
                f"{demand.name}: no slot of ≥{want.size:g} for {want.rate_rps:.0f} req/s; "
                + "; ".join(rejections[:MAX_REJECTIONS_EXPLAINED])
            )
        return 0.0

    def device_value(self, state: DeviceState) -> float:
        """What a device serves, each model's rate over its whole-device saturated throughput."""
        value = 0.0
        for slot in state.slots:
            for t in slot.tenants:
                whole = self.perf.saturated(t.demand.model, state.full_size, t.demand.slo_ms)
                value += t.rate_rps / whole.throughput_rps if whole else 0.0
        return value

    def trial_value(
        self, state: DeviceState, slot: Slot, demand: ModelDemand, want: Want, why: list[str]
    ) -> float | None:
        """The device's value with this gpu-let placed in `slot`; the device is left unchanged."""
        slots = list(state.slots)
        snapshot = self.snapshot(state)
        duties = [(s, s.duty_ms) for s in slots]
        if self.try_slot(state, slot, demand, want, why) <= 0:
            return None
        value = self.device_value(state)
        keep = {id(t) for t, _, _ in snapshot}
        for s in slots:
            s.tenants[:] = [t for t in s.tenants if id(t) in keep]
        state.slots[:] = slots
        self.restore(state, snapshot)
        for s, duty in duties:
            s.duty_ms = duty
        evaluate_device(state, self.perf, self.interference)
        return value

    def candidates(self, size: float) -> list[tuple[DeviceState, Slot]]:
        """Free slots of at least `size`: exact fits and whole devices first, then least left."""
        found = []
        for index, state in enumerate(self.states):
            for slot in state.slots:
                if slot.empty and slot.size >= size:
                    splittable = self.can_split(state, slot, size)
                    leftover = 0.0 if slot.size == size or splittable else slot.size - size
                    found.append((leftover, index, state, slot))
        found.sort(key=lambda c: (c[0], c[1]))
        return [(state, slot) for _, _, state, slot in found]

    def can_split(self, state: DeviceState, slot: Slot, size: float) -> bool:
        rest = slot.size - size
        return (
            not self.frozen
            and self.config.allow_split
            and rest > 0
            and rest in self.profile.sizes
            and len(state.slots) < self.config.max_gpulets_per_device
        )

    def try_slot(
        self, state: DeviceState, slot: Slot, demand: ModelDemand, want: Want, why: list[str]
    ) -> float:
        split = self.can_split(state, slot, want.size)
        size = want.size if split or slot.size == want.size else slot.size
        choice = want.choice
        if size != want.size:
            # A bigger slot than asked for: re-derive batch and duty at its size.
            again = (
                self.perf.saturated(demand.model, size, demand.slo_ms)
                if want.saturated
                else self.perf.residual(demand.model, size, demand.slo_ms, want.rate_rps)
            )
            if again is None:
                return 0.0
            choice = again
        if not self.memory_fits(state, demand, new_process=True):
            used = state.memory_mb(PROCESS_OVERHEAD_MB)
            need = PROCESS_OVERHEAD_MB + self.profile.memory_of(demand.model)
            limit = self.config.memory_fraction * self.profile.memory_mb
            why.append(f"{state.device.device_id}: memory {used:.0f} + {need:.0f} MB > "
                       f"{limit:.0f} MB")  # fmt: skip
            return 0.0
        before = list(state.slots)
        if split:
            index = state.slots.index(slot)
            state.slots[index : index + 1] = [Slot(want.size), Slot(slot.size - want.size)]
            slot = state.slots[index]
        rate = choice.throughput_rps if want.saturated else want.rate_rps
        tenant = Tenant(demand, choice.batch, rate, want.saturated)
        slot.tenants.append(tenant)
        snapshot = self.snapshot(state)
        problem = evaluate_device(state, self.perf, self.interference)
        if problem is not None:
            slot.tenants.remove(tenant)
            state.slots[:] = before
            self.restore(state, snapshot)
            evaluate_device(state, self.perf, self.interference)
            why.append(f"{state.device.device_id}: {problem}")
            return 0.0
        return tenant.rate_rps

    def memory_fits(self, state: DeviceState, demand: ModelDemand, *, new_process: bool) -> bool:
        """Used + this model (+ a process of its own) within memory_fraction of the device."""
        memory = state.memory_mb(PROCESS_OVERHEAD_MB) + self.profile.memory_of(demand.model)
        if new_process:
            memory += PROCESS_OVERHEAD_MB
        return memory <= self.config.memory_fraction * self.profile.memory_mb

    @staticmethod
    def snapshot(state: DeviceState) -> list[tuple[Tenant, int, float]]:
        return [(t, t.batch, t.rate_rps) for s in state.slots for t in s.tenants]

    @staticmethod
    def restore(state: DeviceState, snapshot: list[tuple[Tenant, int, float]]) -> None:
        for tenant, batch, rate in snapshot:
            tenant.batch, tenant.rate_rps = batch, rate

    def remove(self, demand: ModelDemand) -> None:
        for state in self.states:
            for slot in state.slots:
                slot.tenants[:] = [t for t in slot.tenants if t.demand.name != demand.name]
            if not self.frozen and not state.used():
                state.slots[:] = [Slot(state.full_size)]
            evaluate_device(state, self.perf, self.interference)


def with_name(config: PlanConfig, **changes: object) -> PlanConfig:
    return replace(config, **changes)  # type: ignore[arg-type]
