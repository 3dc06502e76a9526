"""Admission at the door: a request goes to the first gpu-let (in routing order) predicted to
finish it within its SLO, or is refused at once, never sent; on a fake clock and an agent client
whose batches finish when the test says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from common.errors import DeadlinePassed
from common.placement import GpuletModel, GpuletSpec, Placement
from router.dispatch.batching import GpuletPlanView, ModelTurn
from router.dispatch.dispatcher import Dispatcher, Result
from router.dispatch.routing import Route, build_table
from tests.support.held_agent import Clock, HeldClient

pytestmark = pytest.mark.timeout(30)
BATCH_MS = 100.0  # every batch of one takes this long, as predicted
SLO_MS = 250.0  # two batches fit (with admission's headroom), three do not
DEADLINE_MS = 500.0  # slo x 2: the deadline once queued


def view(route: Route) -> GpuletPlanView:
    return GpuletPlanView(0.0, (ModelTurn("m", 1, (BATCH_MS,)),))


@pytest.fixture
async def door() -> AsyncIterator[tuple[Dispatcher, HeldClient]]:
    client = HeldClient()
    dispatcher = Dispatcher(client, retry_after_s=1.0,  # type: ignore[arg-type]
                            views=view, best_latency_ms=lambda model: None,
                            clock=Clock())  # fmt: skip
    # g1 is planned for nearly all of m's rate, so routing prefers it while it keeps up.
    preferred = GpuletSpec("g1", "a", "sim0", (), (GpuletModel("m", 1, 100.0),), size=50.0)
    spare = GpuletSpec("g2", "a", "sim1", (), (GpuletModel("m", 1, 1.0),), size=50.0)
    dispatcher.follow(build_table(Placement(1, (preferred, spare)), {"a": "http://agent"},
                                  {"g1", "g2"}))  # fmt: skip
    yield dispatcher, client
    await dispatcher.close()


def submit(dispatcher: Dispatcher, request_id: str) -> asyncio.Task[Result]:
    inputs = {"input": np.zeros((1, 1), np.float32)}
    return asyncio.create_task(
        dispatcher.submit("m", inputs, 1, SLO_MS, DEADLINE_MS, request_id, received_ms=0.0)
    )


async def test_a_request_the_preferred_gpulet_cannot_finish_in_time_goes_to_another(
    door: tuple[Dispatcher, HeldClient],
) -> None:
    dispatcher, client = door
    tasks = {}
    for request_id in ("r1", "r2", "r3"):
        tasks[request_id] = submit(dispatcher, request_id)
        assert await client.sent.get() == request_id
    # r1 and r2 fill g1 until 200 ms; r3 there would end at 200 + 110 > 250: it takes g2.
    for request_id in ("r1", "r2", "r3"):
        client.finish(request_id)
    served = {r: (await t).gpulet_id for r, t in tasks.items()}
    assert served == {"r1": "g1", "r2": "g1", "r3": "g2"}
    assert dispatcher.outcomes == {"m": {"ok": 3}}


async def test_when_no_gpulet_can_finish_it_in_time_it_is_refused_at_once_unsent(
    door: tuple[Dispatcher, HeldClient],
) -> None:
    dispatcher, client = door
    tasks = [submit(dispatcher, f"r{i}") for i in range(4)]  # g1 and g2 busy until 200 ms
    for _ in tasks:
        await client.sent.get()
    with pytest.raises(DeadlinePassed, match="overloaded") as refused:
        await submit(dispatcher, "late")
    assert refused.value.details["predicted_ms"] > SLO_MS
    assert client.sent.empty() and "late" not in client.held
    assert dispatcher.outcomes["m"] == {"deadline_exceeded": 1}
    for i in range(4):
        client.finish(f"r{i}")
    await asyncio.gather(*tasks)
