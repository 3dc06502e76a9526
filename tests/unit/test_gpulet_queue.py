"""The gpu-let queue's predicted end re-anchors on answers, so margins do not drift."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from common import frames
from common.placement import GpuletModel, GpuletSpec
from router.dispatch.agent_client import AgentClient
from router.dispatch.batching import GpuletPlanView, ModelTurn, Pending
from router.dispatch.dispatcher import MAX_BATCHES_IN_FLIGHT, Entry, GpuletQueue
from router.dispatch.observer import NoObserver
from router.dispatch.routing import Route

pytestmark = pytest.mark.timeout(10)
PREDICTED_MS = 100.0


class HeldAgent(AgentClient):
    """An agent whose batches finish when the test says: the one part this test stands in for."""

    def __init__(self, compute_ms: float | None = None) -> None:
        super().__init__(connections=1)
        self.compute_ms = compute_ms
        self.running: list[asyncio.Future[None]] = []
        self.arrived = asyncio.Event()

    async def run(self, agent_url: str, gpulet_id: str, model: str,
                  tensors: dict[str, frames.Array], timeout_s: float,
                  request_id: str) -> frames.Frame:  # fmt: skip
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.running.append(done)
        self.arrived.set()
        await done
        header = {} if self.compute_ms is None else {"compute_ms": self.compute_ms}
        return frames.Frame(header, {"output": tensors["input"]})


async def test_an_answer_re_anchors_the_predicted_end_on_the_clock() -> None:
    now = [1000.0]  # seconds, the queue's clock
    agent = HeldAgent()
    route = Route(GpuletSpec("g", "a", "d", (), (GpuletModel("m", 1),)), "http://agent")
    view = GpuletPlanView(10.0, (ModelTurn("m", 1, (PREDICTED_MS,)),))
    queue = GpuletQueue(route, view, agent, lambda: now[0], NoObserver())
    futures: list[asyncio.Future[Any]] = []
    for i in range(3):  # three batches of one
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        futures.append(future)
        pending = Pending(f"r{i}", "m", 1, now[0] * 1000, now[0] * 1000 + 10_000)
        inline = queue.submit(Entry(pending, {"input": np.zeros((1, 1), np.float32)}, future))
        if inline is not None:
            futures[-1] = asyncio.ensure_future(inline)
    while len(agent.running) < MAX_BATCHES_IN_FLIGHT:  # the sends reach the agent
        await agent.arrived.wait()
        agent.arrived.clear()
    # The worker holds the running batch and one behind it; the third waits in the queue.
    assert len(agent.running) == MAX_BATCHES_IN_FLIGHT == 2
    assert list(queue.entries) == ["r2"]
    assert queue.busy_until_ms == pytest.approx(now[0] * 1000 + 2 * PREDICTED_MS)
    now[0] += 0.010  # the first batch took 10 ms, not the predicted 100
    agent.running[0].set_result(None)
    await futures[0]
    while len(agent.running) < 3:  # the answer lets the third go
        await agent.arrived.wait()
        agent.arrived.clear()
    # two batches in flight, the next starting now: the 90 ms saved are not kept as phantom work
    assert queue.busy_until_ms == pytest.approx(now[0] * 1000 + 2 * PREDICTED_MS)
    for done in agent.running[1:]:
        done.set_result(None)
    await asyncio.gather(*futures[1:])
    assert queue.busy_until_ms == pytest.approx(now[0] * 1000)
    await queue.close()
    await agent.close()


@pytest.mark.parametrize(("compute_ms", "expected"), [(150.0, 1.1), (50.0, 1.0)])
async def test_batches_slower_than_predicted_raise_the_queues_slowdown(
    compute_ms: float, expected: float
) -> None:
    agent = HeldAgent(compute_ms)
    route = Route(GpuletSpec("g", "a", "d", (), (GpuletModel("m", 1),)), "http://agent")
    view = GpuletPlanView(10.0, (ModelTurn("m", 1, (PREDICTED_MS,)),))
    queue = GpuletQueue(route, view, agent, lambda: 1000.0, NoObserver())
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pending = Pending("r", "m", 1, 1_000_000.0, 1_010_000.0)
    inline = queue.submit(Entry(pending, {"input": np.zeros((1, 1), np.float32)}, future))
    assert inline is not None
    sent = asyncio.ensure_future(inline)
    await agent.arrived.wait()
    agent.running[0].set_result(None)
    await sent
    # 1.5x slower moves the EWMA a fifth of the way (1 -> 1.1); faster never lowers it below 1
    assert queue.slowdown == pytest.approx(expected)
    await queue.close()
    await agent.close()
