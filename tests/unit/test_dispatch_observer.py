"""The dispatcher's observer hooks: what each answered request and finished batch reports, on a
fake clock and an agent client whose batches finish when the test says."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from common.errors import BackendFailed, GpuletError
from common.placement import GpuletModel, GpuletSpec, Placement
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.routing import build_table
from router.dispatch.views import plan_view
from tests.support.held_agent import Clock, HeldClient

pytestmark = pytest.mark.timeout(30)
GPULET = "a.sim0.p0"
FAR_MS = 1e9  # a deadline no test reaches


@dataclass
class Recorder:
    requests: list[tuple[str, str, str | None, float, float, float]] = field(default_factory=list)
    batches: list[tuple[str, str, int, float, float]] = field(default_factory=list)

    def request_done(self, model: str, code: str, gpulet_id: str | None, latency_ms: float,
                     slo_ms: float, now_ms: float) -> None:  # fmt: skip
        self.requests.append((model, code, gpulet_id, latency_ms, slo_ms, now_ms))

    def batch_done(self, gpulet_id: str, model: str, items: int, busy_ms: float,
                   now_ms: float) -> None:  # fmt: skip
        self.batches.append((gpulet_id, model, items, busy_ms, now_ms))


@pytest.fixture
async def setup() -> tuple[Dispatcher, HeldClient, Clock, Recorder]:
    client, clock, seen = HeldClient(), Clock(), Recorder()
    # No profile: batch 1, no batching window, so each request goes out alone at once.
    dispatcher = Dispatcher(client, retry_after_s=1.0,  # type: ignore[arg-type]
                            views=lambda route: plan_view(route, None),
                            best_latency_ms=lambda model: None, clock=clock,
                            observer=seen)  # fmt: skip
    spec = GpuletSpec(GPULET, "a", "sim0", (), (GpuletModel("m", 1, 10.0),), size=100.0)
    dispatcher.follow(build_table(Placement(1, (spec,)), {"a": "http://agent"}, {GPULET}))
    yield dispatcher, client, clock, seen
    await dispatcher.close()


SLO_MS = 1000.0  # the requests' SLO: far enough for the latencies these tests step through


def submit(dispatcher: Dispatcher, request_id: str, **kwargs: float) -> asyncio.Task[object]:
    inputs = {"input": np.zeros((1, 1), np.float32)}
    return asyncio.create_task(dispatcher.submit("m", inputs, 1, SLO_MS, FAR_MS, request_id,
                                                 **kwargs))  # fmt: skip


async def test_overlapping_batches_count_their_busy_time_once(setup: tuple) -> None:
    dispatcher, client, clock, seen = setup
    # a runs 0-3 s, b 1-5 s (overlapping: 5 s busy, not 7), then c 10-12 s after an idle gap.
    timeline = [(0.0, "send", "a"), (1.0, "send", "b"), (3.0, "finish", "a"),
                (5.0, "finish", "b"), (10.0, "send", "c"), (12.0, "finish", "c")]  # fmt: skip
    running = {}
    for at_s, action, request_id in timeline:
        clock.now_s = at_s
        if action == "send":
            running[request_id] = submit(dispatcher, request_id)
            assert await client.sent.get() == request_id
        else:
            client.finish(request_id)
            await running.pop(request_id)
    assert [(g, m, n, busy) for g, m, n, busy, _ in seen.batches] == [
        (GPULET, "m", 1, 3000.0), (GPULET, "m", 1, 2000.0), (GPULET, "m", 1, 2000.0),
    ]  # fmt: skip
    assert [now for *_, now in seen.batches] == [3000.0, 5000.0, 12000.0]


async def test_each_answer_reports_its_code_gpulet_and_latency_from_arrival(setup: tuple) -> None:
    dispatcher, client, clock, seen = setup
    clock.now_s = 2.0
    ok = submit(dispatcher, "ok", received_ms=1500.0)  # parsed for 0.5 s before submit
    await client.sent.get()
    clock.now_s = 2.25
    client.finish("ok")
    await ok
    failed = submit(dispatcher, "failed")
    await client.sent.get()
    clock.now_s = 2.5
    client.finish("failed", BackendFailed("worker died"))
    with pytest.raises(BackendFailed):
        await failed
    with pytest.raises(GpuletError, match="no ready gpulet serves"):
        await dispatcher.submit("other", {}, 1, SLO_MS, FAR_MS, "refused")
    assert seen.requests == [
        ("m", "ok", GPULET, 750.0, SLO_MS, 2250.0),
        ("m", "backend_failed", GPULET, 250.0, SLO_MS, 2500.0),
        ("other", "unavailable", None, 0.0, SLO_MS, 2500.0),
    ]
    # The JSON counts by outcome and the observer see the same answers.
    assert dispatcher.outcomes == {"m": {"ok": 1, "backend_failed": 1},
                                   "other": {"unavailable": 1}}  # fmt: skip
