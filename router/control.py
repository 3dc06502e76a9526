"""The control loop: agents in Redis -> placement -> agents told -> readiness -> routing table.

Each step reads state, computes the wanted placement with the (pure) planner on the profile the
agents measured (or the static rule when `scheduler` is "static", or when no plan is feasible),
writes it to Redis as a new version when it differs, tells each agent its gpulets when the
agent's applied version lags, polls readiness, and swaps in a new routing table. Plans are made
again only when their inputs change. A failing step is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from common.cluster import AgentInfo, parse_simulated_key
from common.errors import GpuletError
from common.placement import EMPTY_PLACEMENT, Placement
from common.profiles import DeviceProfile, find_profile
from common.store import Store
from router.agent_client import AgentClient
from router.placement_rule import static_placement
from router.routing import RoutingTable, build_table
from router.scheduling.interference import InterferenceModel
from router.scheduling.live import plan_live
from router.scheduling.offline import interference_for

STATIC = "static"

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
    ) -> None:
        self.store = store
        self.client = client
        self.models = sorted(slos_ms)
        self.slos_ms = dict(slos_ms)
        self.rates_rps = dict(rates_rps or {})
        self.scheduler = scheduler
        self.interval_s = interval_s
        self._planned: tuple[object, Placement | None] | None = None
        # The profile the current plan was made on (None: static rule); the dispatcher predicts
        # batch latencies and admission judges SLOs from it.
        self.profile: DeviceProfile | None = None
        self.on_table: Callable[[RoutingTable], None] | None = None
        self.table = RoutingTable(EMPTY_PLACEMENT)
        self.agents: list[AgentInfo] = []
        self.changed = asyncio.Event()  # set after every step, for waiters such as /readyz tests

    async def run_forever(self) -> None:
        while True:
            try:
                await self.step()
            except GpuletError as exc:  # e.g. Redis unreachable: expected, and said in one line
                logger.warning("control step failed: %s; retrying", exc.message)
            except Exception:
                logger.exception("control step failed; retrying in %.1fs", self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def step(self) -> None:
        self.agents = await self.store.agents()
        placement = await self._current_placement(self.agents)
        urls = {a.agent_id: a.url for a in self.agents}
        ready: set[str] = set()
        for agent in self.agents:
            ready |= await self._sync_agent(agent, placement)
        table = build_table(placement, urls, ready)
        if table.ready_models() != self.table.ready_models():
            logger.info(
                "routing version=%d ready models=%s", placement.version,
                ",".join(sorted(table.ready_models())) or "-",
            )  # fmt: skip
        self.table = table
        if self.on_table is not None:
            self.on_table(table)
        self.changed.set()
        self.changed = asyncio.Event()

    async def _current_placement(self, agents: list[AgentInfo]) -> Placement:
        stored = await self.store.placement() or EMPTY_PLACEMENT
        wanted = await self._wanted(agents)
        if wanted is None:  # agents still measuring their profile: keep what runs
            return stored
        if wanted.gpulets == stored.gpulets and stored.version > 0:
            return stored
        written = await self.store.write_placement(wanted)
        logger.info(
            "placement version=%d gpulets=%d unplaced=%s", written.version, len(written.gpulets),
            ",".join(written.unplaced) or "-",
        )  # fmt: skip
        for line in written.explanation:
            logger.info("placement: %s", line)
        return written

    async def _wanted(self, agents: list[AgentInfo]) -> Placement | None:
        if self.scheduler == STATIC or not agents:
            return static_placement(agents, self.models)
        keys = sorted({a.profile_key or "" for a in agents})
        if "" in keys:
            return None
        inputs = (tuple((a.agent_id, a.devices) for a in agents), tuple(keys))
        if self._planned is not None and self._planned[0] == inputs:
            return self._planned[1]
        wanted = await self._plan(agents, keys)
        self._planned = (inputs, wanted)
        return wanted

    async def _plan(self, agents: list[AgentInfo], keys: list[str]) -> Placement:
        """The scheduler's placement on the agents' measured profile; the static rule if none."""
        if len(keys) > 1:
            logger.warning("agents measured %d different profiles; planning on %s", len(keys),
                           keys[0])  # fmt: skip
        interference: InterferenceModel | None = None
        simulated = parse_simulated_key(keys[0])
        if simulated is not None:
            name, time_scale = simulated
            profile = find_profile(name)
            # Slowdowns are ratios: the fit on the profile holds for its time-scaled copy.
            interference, _ = interference_for(profile)
            profile = profile.time_scaled(time_scale)
        else:
            found = await self.store.profile(keys[0])
            if found is None:
                return static_placement(agents, self.models)
            profile = DeviceProfile.from_json(found[0])
        self.profile = profile
        live = plan_live(
            agents, profile, self.slos_ms, self.rates_rps, self.scheduler,
            interference=interference,
        )  # fmt: skip
        if live is None:
            fallback = static_placement(agents, self.models)
            why = (f"{self.scheduler}: no feasible plan for these SLOs on this profile; "
                   "static rule instead")  # fmt: skip
            return Placement(0, fallback.gpulets, (why, *fallback.explanation))
        if live.rate_rps is not None:
            logger.info("planned for %.0f req/s per model (the most these devices carry)",
                        live.rate_rps)  # fmt: skip
        return live.placement

    async def _sync_agent(self, agent: AgentInfo, placement: Placement) -> set[str]:
        """Tell the agent its gpulets if it lags; return the ids of its ready gpulets."""
        try:
            report = await self.client.gpulets(agent.url)
            if int(report.get("version", 0)) != placement.version:
                report = await self.client.set_gpulets(
                    agent.url, placement.version, placement.for_agent(agent.agent_id)
                )
        except GpuletError as exc:
            logger.warning("agent=%s unreachable: %s", agent.agent_id, exc.message)
            return set()
        return {g["gpulet_id"] for g in report.get("gpulets", []) if g.get("state") == "ready"}
