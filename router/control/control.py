"""The control loop: agents in Redis -> placement -> agents told -> readiness -> routing table.

Each step reads the agents, decides the wanted placement, writes it to Redis as version+1 when it
differs, tells each agent its gpulets (and which replaced ones to keep draining), and swaps in a
routing table that moves each model to its new gpulets only once they are all warm
(switching.py). The placement is planned afresh when the agents or their profiles change (an
agent whose heartbeat expired drops out of `store.agents()`, and its models are re-placed), and
re-planned from the running plan when the measured rates move (replanning.py: at once on a
rise, at an epoch boundary on a fall). Without a feasible plan the static rule serves. A failing
step is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from common.cluster import AgentInfo, measures_own_profile, parse_named_key, parse_simulated_key
from common.errors import GpuletError
from common.interference import InterferenceModel
from common.placement import EMPTY_PLACEMENT, GpuletSpec, Placement, carry_ids
from common.profiles import DeviceProfile, find_profile
from common.store import Store
from router.control.placement_rule import static_placement
from router.control.rates import RateMonitor
from router.control.replanning import Targets, planned_rates, replan_reason, target_rates
from router.control.switching import still_running, switch_routes
from router.dispatch.agent_client import AgentClient
from router.dispatch.routing import RoutingTable
from router.scheduling.live import plan_live, replan_live
from router.scheduling.offline import interference_for
from router.scheduling.types import Plan

STATIC = "static"
# A switch waiting this long on new gpulets that never become ready takes the ready ones.
SWITCH_TIMEOUT_S = 120.0
# After demand no plan can serve, wait this long before trying again (planning is not free).
INFEASIBLE_BACKOFF_S = 5.0
EVENTS_KEPT = 1000  # re-plans remembered for /v1/cluster (a router runs for months)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplanEvent:
    """One placement written, for /v1/cluster and the load generator's plot."""

    version: int
    at_s: float  # time.time()
    reason: str  # "agents" | "rise" | "fall"
    step: str  # the planner's step: "initial", "incremental", "full", "more_devices", "static"
    serving_at_s: float | None = None  # time.time() when every model had switched to it


@dataclass(frozen=True)
class Wanted:
    """A placement to deploy, why, and what the controller adopts once it is written."""

    placement: Placement
    reason: str
    step: str
    plan: Plan | None = None  # the scheduler's plan behind it (None: the static rule)
    inputs: object = None  # the agents and profiles a fresh plan was made for


class Controller:
    def __init__(
        self,
        store: Store,
        client: AgentClient,
        slos_ms: Mapping[str, float],
        interval_s: float,
        *,
        scheduler: str = STATIC,
        rates_rps: Mapping[str, float] | None = None,
        arrivals: RateMonitor | None = None,
        epoch_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        serving_ms: Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        # Router and agent CPU per request of each model, charged where they share the
        # workers' cores (router/scheduling/serving_cpu.py).
        self.serving_ms = dict(serving_ms or {})
        self.client = client
        self.models = sorted(slos_ms)
        self.slos_ms = dict(slos_ms)
        self.rates_rps = dict(rates_rps or {})
        self.scheduler = scheduler
        self.interval_s = interval_s
        self.arrivals = arrivals
        self.epoch_s = epoch_s
        self.clock = clock
        # The profile the current plan was made on (None: static rule); the dispatcher predicts
        # batch latencies and admission judges SLOs from it.
        self.profile: DeviceProfile | None = None
        self._interference: InterferenceModel | None = None
        self._inputs: object = None  # what the last fresh plan was made from
        self._plan: Plan | None = None  # the scheduler's plan behind `target`, when there is one
        self._last_plan_s = 0.0
        self._quiet_until_s = 0.0
        self.target = EMPTY_PLACEMENT
        self.retiring: dict[str, GpuletSpec] = {}  # replaced gpulets still draining
        self.switching = False
        self._switch_since_s = 0.0
        self.events: list[ReplanEvent] = []  # the latest EVENTS_KEPT
        self.replans_by_reason: dict[str, int] = {}  # every placement written, by reason
        self.on_table: Callable[[RoutingTable], None] | None = None
        self.in_use: Callable[[], set[str]] = set  # gpulets the dispatcher still has work for
        self.table = RoutingTable(EMPTY_PLACEMENT)
        self.agents: list[AgentInfo] = []
        self.changed = asyncio.Event()  # set after every step, for waiters such as /readyz tests
        self._wake = asyncio.Event()

    @property
    def follows_rates(self) -> bool:
        return self.scheduler != STATIC and not self.rates_rps and self.epoch_s > 0 \
            and self.arrivals is not None  # fmt: skip

    def wake(self) -> None:
        """Run the next step now (e.g. a replaced gpulet finished draining)."""
        self._wake.set()

    @property
    def interference(self) -> InterferenceModel | None:
        """The interference model the current profile's plans use (None: none fitted)."""
        return self._interference

    def add_model(
        self, name: str, slo_ms: float, rate_rps: float | None = None,
        serving_ms: float | None = None,
    ) -> None:  # fmt: skip
        """Serve `name` too (model load): the next step plans afresh for the new model set."""
        self.slos_ms[name] = slo_ms
        if rate_rps is not None:
            self.rates_rps[name] = rate_rps
        if serving_ms is not None:
            self.serving_ms[name] = serving_ms
        self._models_changed()

    def remove_model(self, name: str) -> None:
        """Stop planning `name` (model unload; its requests drained first): plan afresh."""
        self.slos_ms.pop(name, None)
        self.rates_rps.pop(name, None)
        self.serving_ms.pop(name, None)
        self._models_changed()

    async def reload_measured_profile(self) -> None:
        """Read the agents' measured profile again (a model load had them measure one more
        model); the next fresh plan reads it too."""
        keys = sorted(
            {str(a.profile_key) for a in self.agents if measures_own_profile(a.profile_key)}
        )
        profile = await self._stored_profile(keys[0]) if keys else None
        if profile is not None:
            self.profile = profile

    async def _stored_profile(self, key: str) -> DeviceProfile | None:
        found = await self.store.profile(key)
        return DeviceProfile.from_json(found[0]) if found is not None else None

    def _models_changed(self) -> None:
        self.models = sorted(self.slos_ms)
        self._inputs = None  # a fresh plan, as for new agents: the demands are new
        self.wake()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.step()
            except GpuletError as exc:  # e.g. Redis unreachable: expected, and said in one line
                logger.warning("control step failed: %s; retrying", exc.message)
            except Exception:
                logger.exception("control step failed; retrying in %.1fs", self.interval_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def step(self) -> None:
        self.agents = await self.store.agents()
        target = await self._current_placement(self.agents)
        urls = {a.agent_id: a.url for a in self.agents}
        self.retiring = still_running(self.retiring, self.table, self.in_use())
        ready: set[str] = set()
        for agent in self.agents:
            ready |= await self._sync_agent(agent, target)
        now_s = self.clock()
        switch = switch_routes(
            target, self.table, urls, ready,
            give_up=self.switching and now_s - self._switch_since_s > SWITCH_TIMEOUT_S,
        )  # fmt: skip
        if switch.complete and self.switching:
            logger.info("placement version=%d serving (switched in %.2fs)", target.version,
                        now_s - self._switch_since_s)  # fmt: skip
            if self.events and self.events[-1].version == target.version:
                self.events[-1] = replace(self.events[-1], serving_at_s=time.time())
        self.switching = not switch.complete
        # Make-before-break keeps a model's old routes while it has no new ones (its agent
        # died); an unloaded model is not served at all, so its routes go.
        table = RoutingTable(switch.table.placement, {
            m: r for m, r in switch.table.routes.items() if m in self.slos_ms
        })  # fmt: skip
        if table.ready_models() != self.table.ready_models():
            logger.info(
                "routing version=%d ready models=%s", target.version,
                ",".join(sorted(table.ready_models())) or "-",
            )  # fmt: skip
        self.table = table
        if self.on_table is not None:
            self.on_table(table)
        self.changed.set()
        self.changed = asyncio.Event()

    # the placement ----------------------------------------------------------------------------
    async def _current_placement(self, agents: list[AgentInfo]) -> Placement:
        stored = await self.store.placement() or EMPTY_PLACEMENT
        if self.target.version != stored.version:
            self.target = stored
        wanted = await self._wanted(agents)
        if wanted is None:  # agents still measuring their profile, or nothing to change
            return stored
        running = [*stored.gpulets, *self.retiring.values()]
        gpulets = carry_ids(wanted.placement.gpulets, running, stored.version + 1)
        if stored.version > 0 and gpulets == stored.gpulets:
            self._commit(wanted)
            return stored
        written = await self.store.write_placement(
            Placement(0, gpulets, wanted.placement.explanation, wanted.placement.unplaced)
        )
        # Only now is the plan the running one: had the write failed, the next step plans again.
        self._commit(wanted)
        kept = {g.gpulet_id for g in written.gpulets}
        self.retiring.update({g.gpulet_id: g for g in stored.gpulets if g.gpulet_id not in kept})
        for gone in kept & set(self.retiring):
            del self.retiring[gone]
        self.target = written
        self._switch_since_s = self.clock()
        self.switching = True
        self.record(ReplanEvent(written.version, time.time(), wanted.reason, wanted.step))
        logger.info(
            "placement version=%d (%s, %s) gpulets=%d unplaced=%s", written.version,
            wanted.reason, wanted.step, len(written.gpulets), ",".join(written.unplaced) or "-",
        )  # fmt: skip
        for line in written.explanation:
            logger.info("placement: %s", line)
        return written

    def record(self, event: ReplanEvent) -> None:
        """Count a placement written, and keep it among the latest for /v1/cluster."""
        self.events.append(event)
        del self.events[:-EVENTS_KEPT]
        self.replans_by_reason[event.reason] = self.replans_by_reason.get(event.reason, 0) + 1

    def _commit(self, wanted: Wanted) -> None:
        self._plan = wanted.plan
        self._last_plan_s = self.clock()
        if wanted.inputs is not None:
            self._inputs = wanted.inputs

    async def _wanted(self, agents: list[AgentInfo]) -> Wanted | None:
        if self.scheduler == STATIC or not agents:
            return Wanted(static_placement(agents, self.models), "agents", "static")
        keys = sorted({a.profile_key or "" for a in agents})
        if "" in keys:
            return None
        inputs = (tuple((a.agent_id, a.devices) for a in agents), tuple(keys))
        if self._inputs != inputs:
            placement, plan = await self._plan_fresh(agents, keys)
            step = "initial" if plan is not None else "static"
            return Wanted(placement, "agents", step, plan, inputs)
        if not self.follows_rates or self._plan is None or self.profile is None:
            return None
        return await self._replan(agents)

    async def _replan(self, agents: list[AgentInfo]) -> Wanted | None:
        assert self.arrivals is not None and self._plan is not None and self.profile is not None
        now_s = self.clock()
        if now_s < self._quiet_until_s:
            return None
        targets = self.targets(now_s)
        reason, moved = replan_reason(
            planned_rates(self.target), targets,
            epoch_due=now_s - self._last_plan_s >= self.epoch_s, switching=self.switching,
        )  # fmt: skip
        if reason is None:
            return None
        # Planning takes tens to hundreds of ms of CPU: off the event loop, which serves requests.
        started = time.perf_counter()
        found = await asyncio.to_thread(
            replan_live, agents, self.profile, self._plan, dict(self.slos_ms), targets.plan,
            self.scheduler, interference=self._interference, changed=set(moved),
            serving_ms=self.serving_ms,
        )  # fmt: skip
        if found is None:
            return None
        live, step = found
        wanted = ", ".join(f"{m}={targets.plan[m]:.1f}" for m in moved)
        if step == "infeasible":
            logger.warning(
                "re-plan (%s: %s req/s): no plan serves it (searched %.0f ms); keeping "
                "version=%d for %.0fs", reason, wanted, (time.perf_counter() - started) * 1000,
                self.target.version, INFEASIBLE_BACKOFF_S,
            )  # fmt: skip
            self._quiet_until_s = now_s + INFEASIBLE_BACKOFF_S
            return None
        logger.info("re-plan (%s: %s req/s): %s", reason, wanted, step)
        return Wanted(live.placement, reason, step, live.plan)

    def targets(self, now_s: float) -> Targets:
        """The rates each model would be planned for now, and what would trigger a rise."""
        assert self.arrivals is not None
        now_ms = now_s * 1000
        return target_rates(self.models, self.arrivals.rates(now_ms),
                            self.arrivals.recent(now_ms))  # fmt: skip

    async def _plan_fresh(
        self, agents: list[AgentInfo], keys: list[str]
    ) -> tuple[Placement, Plan | None]:
        """The scheduler's placement on the agents' measured profile (and the plan behind it);
        the static rule if none."""
        if len(keys) > 1:
            logger.warning("agents measured %d different profiles; planning on %s", len(keys),
                           keys[0])  # fmt: skip
        interference: InterferenceModel | None = None
        # A shared profile by name: simulated GPUs', or real ones' told GPULET_NVIDIA_PROFILE.
        simulated = parse_simulated_key(keys[0]) or parse_named_key(keys[0])
        if simulated is not None:
            name, time_scale = simulated
            profile = find_profile(name)
            # Slowdowns are ratios: the fit on the profile holds for its time-scaled copy.
            interference, _ = interference_for(profile)
            profile = profile.time_scaled(time_scale)
        else:
            stored = await self._stored_profile(keys[0])
            if stored is None:
                return static_placement(agents, self.models), None
            profile = stored
        self.profile, self._interference = profile, interference
        live = await asyncio.to_thread(plan_live, agents, profile, dict(self.slos_ms),
                                       self._fresh_rates(), self.scheduler,
                                       interference=interference,
                                       serving_ms=self.serving_ms)  # fmt: skip
        if live is None:
            fallback = static_placement(agents, self.models)
            why = (f"{self.scheduler}: no feasible plan for these SLOs on this profile; "
                   "static rule instead")  # fmt: skip
            return Placement(0, fallback.gpulets, (why, *fallback.explanation)), None
        if live.rate_rps is not None:
            logger.info("planned for %.0f req/s per model (the most these devices carry)",
                        live.rate_rps)  # fmt: skip
        return live.placement, live.plan

    def _fresh_rates(self) -> dict[str, float]:
        """Declared rates; else, once traffic was seen, the measured targets; else none (plan
        for the largest equal rate the devices carry)."""
        if self.rates_rps or not self.follows_rates:
            return self.rates_rps
        assert self.arrivals is not None
        if not self.arrivals.rates(self.clock() * 1000):
            return {}
        return self.targets(self.clock()).plan

    # the agents -------------------------------------------------------------------------------
    async def _sync_agent(self, agent: AgentInfo, placement: Placement) -> set[str]:
        """Tell the agent its gpulets if it lags; return the ids of its ready gpulets."""
        desired = placement.for_agent(agent.agent_id)
        try:
            report = await self.client.gpulets(agent.url)
            reported = {str(g["gpulet_id"]) for g in report.get("gpulets", [])}
            keep = sorted(i for i, g in self.retiring.items()
                          if g.agent_id == agent.agent_id and i in reported)  # fmt: skip
            if int(report.get("version", 0)) != placement.version or \
                    reported != {g.gpulet_id for g in desired} | set(keep):  # fmt: skip
                report = await self.client.set_gpulets(agent.url, placement.version, desired, keep)
        except GpuletError as exc:
            logger.warning("agent=%s unreachable: %s", agent.agent_id, exc.message)
            return set()
        return {g["gpulet_id"] for g in report.get("gpulets", []) if g.get("state") == "ready"}
