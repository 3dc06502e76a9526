"""The control loop against real Redis and real simulated agents: re-plans under load lose no
request, and an agent that dies has its models re-placed on the others."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import pytest

from common.errors import GpuletError
from common.procs import stop_process
from common.store import Store
from router.control.control import Controller
from router.control.rates import RateMonitor
from router.dispatch.agent_client import AgentClient
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.views import best_latency_ms, plan_view
from tests.support.agents import SimAgent, spawn_sim_agent

pytestmark = pytest.mark.timeout(120)
SLOS_MS = {"resnet50": 108.0, "vgg16": 142.0}
WAIT_S = 30.0
TOKEN = {"input": np.zeros((1, 1), np.float32)}


@dataclass
class Router:
    """The router's control loop and dispatcher, wired as router/http/app.py wires them."""

    controller: Controller
    dispatcher: Dispatcher
    arrivals: RateMonitor

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait, step by control step, until `condition` holds."""
        deadline = time.monotonic() + WAIT_S
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"after {WAIT_S:.0f}s still waiting for {what}")
            with suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.controller.changed.wait()

    def served_by(self) -> dict[str, set[str]]:
        return {m: {r.gpulet.agent_id for r in rs}
                for m, rs in self.controller.table.routes.items()}  # fmt: skip


@pytest.fixture
async def router_factory(store: Store) -> AsyncIterator[Callable[..., Router]]:
    client = AgentClient(connections=32)
    made: list[tuple[Router, asyncio.Task[None]]] = []

    def make(epoch_s: float) -> Router:
        arrivals = RateMonitor()
        controller = Controller(store, client, SLOS_MS, 0.2, scheduler="gpulet+int",
                                arrivals=arrivals, epoch_s=epoch_s)  # fmt: skip
        dispatcher = Dispatcher(
            client, retry_after_s=1.0,
            views=lambda route: plan_view(route, controller.profile),
            best_latency_ms=lambda model: best_latency_ms(controller.profile, model),
        )  # fmt: skip
        controller.on_table = dispatcher.follow
        controller.in_use = dispatcher.in_use
        dispatcher.on_drained = controller.wake
        router = Router(controller, dispatcher, arrivals)
        made.append((router, asyncio.create_task(controller.run_forever(), name="control")))
        return router

    try:
        yield make
    finally:
        for router, task in made:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await router.dispatcher.close()
        await client.close()


@pytest.fixture
def agents(redis_url: str, key_prefix: str, store: Store) -> Iterator[list[SimAgent]]:
    started: list[SimAgent] = []
    try:
        yield started
    finally:
        for agent in started:
            if agent.process.poll() is None:
                assert stop_process(agent.process, timeout_s=10.0) == 0


class Load:
    """Open-loop requests at a settable rate per model; every answer kept."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.rate_rps = 0.0
        self.answers: list[asyncio.Task[str]] = []
        self._ids = itertools.count()
        self._task = asyncio.create_task(self._send(), name="load")

    async def _one(self, model: str) -> str:
        now_ms = time.monotonic() * 1000
        self.router.arrivals.record(model, now_ms)
        try:
            await self.router.dispatcher.submit(model, TOKEN, 1, SLOS_MS[model],
                                                now_ms + 2 * SLOS_MS[model],
                                                f"r{next(self._ids)}")  # fmt: skip
        except GpuletError as exc:
            return exc.code
        return "ok"

    async def _send(self) -> None:
        next_s = time.monotonic()
        while True:
            if self.rate_rps > 0:
                for model in SLOS_MS:
                    self.answers.append(asyncio.create_task(self._one(model)))
                next_s += 1 / self.rate_rps
            else:
                next_s = time.monotonic() + 0.01
            pause_s = max(0.0, next_s - time.monotonic())
            await asyncio.sleep(pause_s)  # paces an open-loop sender; noqa: sleep-ok

    async def stop(self) -> Counter[str]:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        async with asyncio.timeout(10):
            outcomes = await asyncio.gather(*self.answers)
        return Counter(outcomes)


async def test_replans_under_load_switch_warm_and_lose_no_request(
    redis_url: str, key_prefix: str, agents: list[SimAgent],
    router_factory: Callable[..., Router],
) -> None:  # fmt: skip
    agents.append(spawn_sim_agent(redis_url, key_prefix, 2))
    router = router_factory(epoch_s=1.0)
    controller = router.controller
    await router.until(lambda: set(router.served_by()) == set(SLOS_MS), "both models routed")
    first = controller.target.version
    load = Load(router)
    load.rate_rps = 20.0
    # The first plan is for the most the GPUs carry; 20 req/s is far less: shrink at the epoch.
    await router.until(lambda: any(e.reason == "fall" for e in controller.events), "a fall")
    await router.until(lambda: not controller.switching, "the fall's switch")
    shrunk = controller.target
    load.rate_rps = 100.0
    await router.until(lambda: any(e.reason == "rise" for e in controller.events), "a rise")
    await router.until(lambda: not controller.switching, "the rise's switch")
    risen = controller.target
    outcomes = await load.stop()

    assert first < shrunk.version < risen.version
    # Every request answered; none failed because gpulets were replaced under it. (504s would
    # be the queue's own deadline drops while the load outran the shrunk plan: allowed.)
    assert sum(outcomes.values()) == len(load.answers) > 0
    assert set(outcomes) <= {"ok", "deadline_exceeded"}, outcomes
    assert outcomes["ok"] >= 0.9 * len(load.answers), outcomes
    # The replaced gpulets drain and are stopped: the agent ends up running the target only.
    await router.until(lambda: not controller.retiring, "replaced gpulets stopped")
    steps = controller.changed
    await router.until(lambda: steps.is_set(), "one more step")  # it tells the agent
    report = await controller.client.gpulets(agents[0].url)
    assert {g["gpulet_id"] for g in report["gpulets"]} == {
        g.gpulet_id for g in controller.target.gpulets
    }


async def test_an_agent_that_dies_has_its_models_replaced_on_the_others(
    redis_url: str, key_prefix: str, agents: list[SimAgent],
    router_factory: Callable[..., Router],
) -> None:  # fmt: skip
    ttl = {"GPULET_HEARTBEAT_TTL_S": "1.0"}
    agents += [spawn_sim_agent(redis_url, key_prefix, 1, agent_id=f"agent-{i}", env=ttl)
               for i in range(2)]  # fmt: skip
    router = router_factory(epoch_s=0.0)
    await router.until(lambda: bool(router.served_by()) and
                       set().union(*router.served_by().values()) == {"agent-0", "agent-1"},
                       "both agents serving")  # fmt: skip
    victim = agents[0]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    # At once its routes go (it does not answer); once its heartbeat expires, a new placement
    # puts every model on agent-1.
    await router.until(
        lambda: {g.agent_id for g in router.controller.target.gpulets} == {"agent-1"},
        "a placement without agent-0",
    )
    await router.until(lambda: router.served_by() == {m: {"agent-1"} for m in SLOS_MS},
                       "every model routed to agent-1")  # fmt: skip
    load = Load(router)
    load.rate_rps = 20.0
    await router.until(lambda: len(load.answers) >= 20, "some requests")
    outcomes = await load.stop()
    assert set(outcomes) == {"ok"}, outcomes
