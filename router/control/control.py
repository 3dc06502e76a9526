"""The control loop: agents in Redis -> placement -> agents told -> readiness -> routing table.

Each step reads the agents, decides the wanted placement, writes it to Redis as version+1 when it
differs, tells each agent its gpulets (and which replaced ones to keep draining), and swaps in a
routing table that moves each model to its new gpulets only once they are all warm
(switching.py). The placement is planned afresh when the agents or their profiles change (an
agent whose heartbeat expired drops out of `store.agents()`, and its models are re-placed), and
re-planned from the running plan when the measured rates move (replanning.py: at once on a
rise, at an epoch boundary on a fall). Without a feasible plan the static rule serves. A failing
step is logged and the loop goes on (Redis unreachable: one WARNING per outage).

Several routers may share a cluster (membership.py): only the lease holder plans, writes the
placement and tells the agents; the others follow the stored placement. Every router adopts a
placement it did not write with what it was planned from (plan_record.py): a router that
starts, or takes the lease over, keeps the running gpu-lets and re-plans only when rates,
agents or models say so. When Redis restarts empty the holder writes its placement back at
its own version, and for REREGISTER_GRACE_S agents that vanished with the store (not by
expiry) keep their routes while their next heartbeat registers them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from common.cluster import AgentInfo, measures_own_profile
from common.errors import GpuletError, Unavailable
from common.interference import InterferenceModel
from common.outage import OutageLog
from common.placement import EMPTY_PLACEMENT, GpuletSpec, Placement, carry_ids
from common.profiles import DeviceProfile
from common.store import FencedOut, Store
from router.control.membership import Membership
from router.control.placement_rule import static_placement
from router.control.plan_record import PlanRecord, ReplanEvent, Wanted, inputs_digest
from router.control.profile_source import load_profile
from router.control.rates import RateMonitor
from router.control.replanning import Targets, planned_rates, replan_reason, target_rates
from router.control.switching import still_running, switch_routes
from router.dispatch.agent_client import AgentClient
from router.dispatch.routing import RoutingTable
from router.scheduling.live import plan_live, replan_live
from router.scheduling.types import Plan

STATIC = "static"
# A switch waiting this long on new gpulets that never become ready takes the ready ones.
SWITCH_TIMEOUT_S = 120.0
# After demand no plan can serve, wait this long before trying again (planning is not free).
INFEASIBLE_BACKOFF_S = 5.0
EVENTS_KEPT = 1000  # re-plans remembered for /v1/cluster (a router runs for months)
# After Redis came back (empty, or after an outage longer than the agents' TTL), agents missing
# from it keep their place this long: their heartbeat (default every 1 s) registers them again.
REREGISTER_GRACE_S = 10.0

logger = logging.getLogger(__name__)


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
        membership: Membership | None = None,
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
        # Several routers: the lease decides who plans (None: this router alone, always).
        self.membership = membership
        self._record: PlanRecord | None = None  # what `target` was planned from
        self._profile_key: str | None = None  # the key `profile` was loaded from
        self._store_back_s = -REREGISTER_GRACE_S  # when Redis came back (empty or after an outage)
        self._failing = False  # the last step could not reach Redis
        # One WARNING per Redis outage, shared with the membership loop when there is one.
        self._outage = membership.outage if membership is not None else \
            OutageLog(logger, "control loop (Redis)")  # fmt: skip
        self.on_store_reset: Callable[[], Awaitable[None]] | None = None  # e.g. re-put the models

    @property
    def leading(self) -> bool:
        """This router plans and tells the agents: it holds the lease, or it is alone."""
        return self.membership is None or self.membership.is_leader

    @property
    def capacity_share(self) -> float:
        """The share of each gpu-let's capacity this router's dispatcher admits against."""
        return 1.0 if self.membership is None else self.membership.capacity_share

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
        loaded = await load_profile(self.store, key)
        return loaded[0] if loaded is not None else None

    def _models_changed(self) -> None:
        self.models = sorted(self.slos_ms)
        self._inputs = None  # a fresh plan, as for new agents: the demands are new
        self.wake()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.step()
                self._outage.ok()
                if self._failing:  # agents' keys may have expired meanwhile
                    self._store_back_s, self._failing = self.clock(), False
            except Unavailable as exc:  # Redis unreachable: expected, one line per outage
                self._outage.failed(exc.message)
                self._failing = True
            except GpuletError as exc:
                logger.warning("control step failed: %s; retrying", exc.message)
            except Exception:
                logger.exception("control step failed; retrying in %.1fs", self.interval_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def step(self, *, lead: bool | None = None) -> None:
        """One pass of the loop; `lead=False`: follow the stored placement only, whoever holds
        the lease (a router starting: it routes to the running gpu-lets before it listens)."""
        stored = await self.store.placement()
        if stored is None and self.target.version > 0:
            self._store_reset()
        self.agents = self._with_vanished(await self.store.agents())
        self.client.know_agents(self.agents)
        if stored is not None and stored.version != self.target.version:
            await self._adopt(stored)
        leading = self.leading if lead is None else lead
        target = await self._current_placement(self.agents, stored) if leading else self.target
        urls = {a.agent_id: a.url for a in self.agents}
        in_use = self.in_use()
        if self.membership is not None:  # other routers may still have work queued for them
            in_use |= self.membership.peer_in_use()
        self.retiring = still_running(self.retiring, self.table, in_use)
        draining = set(self.retiring) | in_use
        ready: set[str] = set()
        for agent in self.agents:
            ready |= await self._sync_agent(agent, target, draining, reconcile=leading)
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

    # Redis restarts and other routers' placements ---------------------------------------------
    def _store_reset(self) -> None:
        """The placement vanished from Redis while we held one: it restarted empty."""
        if self.clock() - self._store_back_s > REREGISTER_GRACE_S:
            logger.warning("placement version=%d is gone from Redis (restarted empty?); %s",
                           self.target.version, "writing it back" if self.leading else
                           "the lease holder writes it back")  # fmt: skip
        self._store_back_s = self.clock()

    def _with_vanished(self, agents: list[AgentInfo]) -> list[AgentInfo]:
        """`agents`, plus, just after Redis came back, the target's agents it no longer lists:
        they vanished with the store, not by expiry, and their next heartbeat is due."""
        if self.clock() - self._store_back_s > REREGISTER_GRACE_S:
            return agents
        listed = {a.agent_id for a in agents}
        placed = {g.agent_id for g in self.target.gpulets}
        kept = [a for a in self.agents if a.agent_id in placed - listed]
        return sorted([*agents, *kept], key=lambda a: a.agent_id)

    async def _adopt(self, stored: Placement) -> None:
        """Work to a placement another router wrote (or that we find at start), with what it was
        planned from: its plan, profile and inputs, as if we had planned it ourselves."""
        first = self.target.version == 0
        self.target = stored
        self._switch_since_s = self.clock()
        self.switching = True
        found = await self.store.placement_plan()
        record = PlanRecord.from_json(found[1]) if found and found[0] == stored.version else None
        self._record = record
        if record is None:  # the static rule, or a writer that stored no plan
            self._plan, self._inputs = None, None
            return
        if record.profile_key is not None and record.profile_key != self._profile_key:
            loaded = await load_profile(self.store, record.profile_key)
            if loaded is not None:
                self.profile, self._interference = loaded
                self._profile_key = record.profile_key
        self._plan = record.plan
        self._last_plan_s = self.clock()
        inputs = self._fresh_inputs(self.agents)
        same = (record.scheduler, dict(record.slos_ms), dict(record.rates_rps)) == (
            self.scheduler, self.slos_ms, self.rates_rps)  # fmt: skip
        # Planned from what we would plan from: adopt it whole. Else the next fresh plan (if
        # we lead) starts from it, keeping the gpu-lets whose partition it keeps.
        self._inputs = inputs if same and inputs_digest(inputs) == record.inputs_digest else None
        if not first:
            self.record(ReplanEvent(stored.version, time.time(), record.reason, record.step))
        logger.info("placement version=%d adopted (%s, %s)%s", stored.version, record.reason,
                    record.step, "" if self._inputs is not None else
                    "; planned from other agents, SLOs or rates")  # fmt: skip

    def _fresh_inputs(self, agents: list[AgentInfo]) -> object:
        keys = tuple(sorted({a.profile_key or "" for a in agents}))
        return (tuple((a.agent_id, a.devices) for a in agents), keys)

    # the placement ----------------------------------------------------------------------------
    async def _current_placement(
        self, agents: list[AgentInfo], found: Placement | None
    ) -> Placement:
        holder = None if self.membership is None else self.membership.router_id
        if found is None and self.target.version > 0:
            plan = None if self._record is None else self._record.to_json()
            if await self.store.restore_placement(self.target, plan, holder=holder):
                logger.info("placement version=%d written back to Redis", self.target.version)
                if self.on_store_reset is not None:
                    await self.on_store_reset()
            return self.target
        stored = found or EMPTY_PLACEMENT
        wanted = await self._wanted(agents)
        if wanted is None:  # agents still measuring their profile, or nothing to change
            return stored
        running = [*stored.gpulets, *self.retiring.values()]
        gpulets = carry_ids(wanted.placement.gpulets, running, stored.version + 1)
        if stored.version > 0 and gpulets == stored.gpulets:
            self._commit(wanted)
            return stored
        record = self._record_for(wanted)
        try:
            written = await self.store.write_placement(
                Placement(0, gpulets, wanted.placement.explanation, wanted.placement.unplaced),
                record.to_json(), holder=holder, expected_version=stored.version,
            )  # fmt: skip
        except FencedOut as exc:  # another router wrote meanwhile, or took the lease
            logger.info("%s; reading the store again", exc)
            return stored
        # Only now is the plan the running one: had the write failed, the next step plans again.
        self._commit(wanted)
        self._record = record
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

    def _record_for(self, wanted: Wanted) -> PlanRecord:
        inputs = wanted.inputs if wanted.inputs is not None else self._inputs
        return PlanRecord(
            self.scheduler, self._profile_key if wanted.plan is not None else None,
            dict(self.slos_ms), dict(self.rates_rps), inputs_digest(inputs), wanted.plan,
            wanted.reason, wanted.step,
        )  # fmt: skip

    async def _wanted(self, agents: list[AgentInfo]) -> Wanted | None:
        if self.scheduler == STATIC or not agents:
            return Wanted(static_placement(agents, self.models), "agents", "static")
        keys = sorted({a.profile_key or "" for a in agents})
        if "" in keys:
            return None
        inputs = self._fresh_inputs(agents)
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
        # Planning takes tens to hundreds of ms of CPU: off the event loop, which serves requests
        # (and yields it the GIL within the switch interval the router sets, serving_process.py).
        started = time.perf_counter()
        found = await asyncio.to_thread(
            replan_live, agents, self.profile, self._plan, dict(self.slos_ms), targets.plan,
            self.scheduler, interference=self._interference, changed=set(moved),
            serving_ms=self.serving_ms, running=self.target.gpulets,
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
        rates, recent = self.arrivals.rates(now_ms), self.arrivals.recent(now_ms)
        if self.membership is not None:  # every router's arrivals: the cluster's demand
            peers, peers_recent = self.membership.peer_rates()
            rates = {m: rates.get(m, 0.0) + peers.get(m, 0.0) for m in {*rates, *peers}}
            recent = {m: recent.get(m, 0.0) + peers_recent.get(m, 0.0)
                      for m in {*recent, *peers_recent}}  # fmt: skip
        return target_rates(self.models, rates, recent)

    async def _plan_fresh(
        self, agents: list[AgentInfo], keys: list[str]
    ) -> tuple[Placement, Plan | None]:
        """The scheduler's placement on the agents' measured profile (and the plan behind it);
        the static rule if none."""
        if len(keys) > 1:
            logger.warning("agents measured %d different profiles; planning on %s", len(keys),
                           keys[0])  # fmt: skip
        loaded = await load_profile(self.store, keys[0])
        if loaded is None:
            return static_placement(agents, self.models), None
        profile, interference = loaded
        self.profile, self._interference, self._profile_key = profile, interference, keys[0]
        live = await asyncio.to_thread(plan_live, agents, profile, dict(self.slos_ms),
                                       self._fresh_rates(), self.scheduler,
                                       interference=interference,
                                       serving_ms=self.serving_ms,
                                       running=self.target.gpulets)  # fmt: skip
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
    async def _sync_agent(
        self, agent: AgentInfo, placement: Placement, draining: set[str], *, reconcile: bool
    ) -> set[str]:
        """Tell the agent its gpulets if it lags (only with `reconcile`: the lease holder
        does), keeping the `draining` ones it runs; return the ids of its ready gpulets."""
        desired = placement.for_agent(agent.agent_id)
        try:
            report = await self.client.gpulets(agent.url)
            reported = {str(g["gpulet_id"]) for g in report.get("gpulets", [])}
            wanted = {g.gpulet_id for g in desired}
            keep = sorted(i for i in reported & draining if i not in wanted)
            if reconcile and (int(report.get("version", 0)) != placement.version or
                              reported != wanted | set(keep)):  # fmt: skip
                report = await self.client.set_gpulets(agent.url, placement.version, desired, keep)
        except GpuletError as exc:
            logger.warning("agent=%s unreachable: %s", agent.agent_id, exc.message)
            return set()
        self.client.know_gpulets(agent.url, report.get("gpulets", []))
        return {g["gpulet_id"] for g in report.get("gpulets", []) if g.get("state") == "ready"}
