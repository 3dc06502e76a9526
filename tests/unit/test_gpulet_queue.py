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
from router.dispatch.gpulet_queue import MAX_BATCHES_IN_FLIGHT, Entry, GpuletQueue
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


class TimedAgent(HeldAgent):
    """Answers at once, reporting the worker time the test sets for each model."""

    def __init__(self, compute_ms: dict[str, float]) -> None:
        super().__init__()
        self.by_model = compute_ms

    async def run(self, agent_url: str, gpulet_id: str, model: str,
                  tensors: dict[str, frames.Array], timeout_s: float,
                  request_id: str) -> frames.Frame:  # fmt: skip
        return frames.Frame({"compute_ms": self.by_model[model]}, {"output": tensors["input"]})


async def send_one(queue: GpuletQueue, model: str, request_id: str) -> None:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pending = Pending(request_id, model, 1, 1_000_000.0, 1_010_000.0)
    inline = queue.submit(Entry(pending, {"input": np.zeros((1, 1), np.float32)}, future))
    assert inline is not None  # an idle gpu-let sends a lone request inline, at once
    await inline
    await future


async def test_a_tiny_models_batches_do_not_move_a_large_models_prediction() -> None:
    # noop-like: profiled at 0.006 ms, measured at 0.5 ms (its session call); a large model
    # beside it on the same gpu-let keeps the figure it learned from its own batches.
    agent = TimedAgent({"tiny": 0.5, "large": 40.0})
    route = Route(GpuletSpec("g", "a", "d", (), (GpuletModel("tiny", 1), GpuletModel("large", 1))),
                  "http://agent")  # fmt: skip
    view = GpuletPlanView(0.0, (ModelTurn("tiny", 1, (0.006,)), ModelTurn("large", 1, (40.0,))))
    queue = GpuletQueue(route, view, agent, lambda: 1000.0, NoObserver())
    await send_one(queue, "large", "l0")
    large_before = queue.view.by_model["large"].predict(1)
    assert large_before == pytest.approx(40.0, rel=0.02)
    for i in range(200):
        await send_one(queue, "tiny", f"t{i}")
    assert queue.view.by_model["large"].predict(1) == pytest.approx(large_before)
    assert queue.view.by_model["tiny"].predict(1) == pytest.approx(0.5, rel=0.05)
    assert queue.estimates()["tiny"]["compute_ms"] == pytest.approx(0.5, rel=0.05)
    await queue.close()
    await agent.close()


@pytest.mark.parametrize("compute_ms", [150.0, 50.0])
async def test_batches_teach_their_models_latency_in_both_directions(compute_ms: float) -> None:
    agent = TimedAgent({"m": compute_ms})
    route = Route(GpuletSpec("g", "a", "d", (), (GpuletModel("m", 1),)), "http://agent")
    view = GpuletPlanView(10.0, (ModelTurn("m", 1, (PREDICTED_MS,)),))
    queue = GpuletQueue(route, view, agent, lambda: 1000.0, NoObserver())
    for i in range(50):
        await send_one(queue, "m", f"r{i}")
    # Slower or faster than profiled alike: nothing clamps the learned figure at the prior.
    assert queue.view.by_model["m"].predict(1) == pytest.approx(compute_ms, rel=0.05)
    await queue.close()
    await agent.close()


async def test_close_waits_for_a_send_handed_to_its_caller_inline() -> None:
    # An idle gpu-let hands a lone request's send to the caller to await. A drain that
    # finished before that send reached the agent would let the gpu-let be stopped under it.
    agent = HeldAgent()
    route = Route(GpuletSpec("g", "a", "d", (), (GpuletModel("m", 1),)), "http://agent")
    queue = GpuletQueue(route, GpuletPlanView(10.0, (ModelTurn("m", 1, (PREDICTED_MS,)),)),
                        agent, lambda: 1000.0, NoObserver())  # fmt: skip
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pending = Pending("r", "m", 1, 1_000_000.0, 1_010_000.0)
    inline = queue.submit(Entry(pending, {"input": np.zeros((1, 1), np.float32)}, future))
    assert inline is not None
    closing = asyncio.create_task(queue.close())
    await asyncio.sleep(0)  # let close run as far as it can; noqa: sleep-ok
    assert not closing.done()
    sending = asyncio.ensure_future(inline)
    await agent.arrived.wait()
    assert not closing.done()
    agent.running[0].set_result(None)
    await sending
    await closing
    assert future.done()
    await agent.close()


def test_each_of_several_routers_keeps_its_share_of_batches_in_flight() -> None:
    from router.dispatch.gpulet_queue import batches_in_flight

    assert batches_in_flight(1.0) == MAX_BATCHES_IN_FLIGHT
    assert batches_in_flight(0.5) == 1
    assert batches_in_flight(0.1) == 1  # always at least one


def test_a_shared_gpulet_doubles_the_predicted_wait_not_the_own_batch() -> None:
    from router.dispatch.batching import NOT_SERVED, Prediction
    from router.dispatch.gpulet_queue import shared_prediction

    now_ms = 1000.0
    alone = Prediction(now_ms + 300 + 200 + 110, wait_ms=300, ahead_ms=200, own_ms=110)
    assert shared_prediction(alone, now_ms, 1.0) == alone  # one router: unchanged
    halved = shared_prediction(alone, now_ms, 0.5)
    assert (halved.wait_ms, halved.ahead_ms, halved.own_ms) == (600, 400, 110)
    assert halved.finish_ms == now_ms + 600 + 400 + 110
    assert shared_prediction(NOT_SERVED, now_ms, 0.5) is NOT_SERVED
