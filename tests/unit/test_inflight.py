"""router.http.inflight: the router's door caps inference requests in flight from its measured
capacity, so the excess is refused at once (503, Retry-After, the numbers) before any parsing."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from router.http.inflight import (
    MIN_IN_FLIGHT,
    WINDOW_REQUESTS,
    CapacityMeter,
    Door,
    InflightLimiter,
)

pytestmark = pytest.mark.timeout(10)


def test_no_cap_before_the_first_measurement() -> None:
    assert CapacityMeter().limit(0.5) is None


def test_capacity_is_requests_per_cpu_second_of_the_loop() -> None:
    meter = CapacityMeter()
    meter.completed(cpu_s=0.0, wall_s=0.0)  # opens the window
    # 1 ms of the loop's CPU per request (1,000 req/s of capacity), however idle the wall clock.
    for i in range(1, WINDOW_REQUESTS + 1):
        meter.completed(cpu_s=i * 0.001, wall_s=i * 0.01)
    assert meter.capacity_rps == pytest.approx(1000.0)
    assert meter.limit(0.5) == 500
    # A tiny capacity still leaves room for a burst.
    assert CapacityMeter(capacity_rps=10.0).limit(0.5) == MIN_IN_FLIGHT


def test_a_window_needs_enough_requests_and_time() -> None:
    meter = CapacityMeter()
    meter.completed(cpu_s=0.0, wall_s=0.0)
    for i in range(1, WINDOW_REQUESTS + 1):  # all within 0.1 s of wall time: too short
        meter.completed(cpu_s=i * 0.001, wall_s=i * 0.0005)
    assert meter.capacity_rps is None


class Held:
    """An ASGI app whose requests finish when the test says."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.entered = 0

    async def reached(self, count: int) -> None:
        while self.entered < count:
            await self.arrived.wait()
            self.arrived.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.entered += 1
        self.arrived.set()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def call(app: InflightLimiter, path: str, method: str = "POST") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent


@pytest.mark.parametrize("path", ["/v1/infer", "/v2/models/noop/infer",
                                  "/v2/models/noop/versions/1/infer"])  # fmt: skip
async def test_past_the_cap_inference_is_refused_at_once_with_the_numbers(path: str) -> None:
    held = Held()
    door = Door(backlog_s=0.5, retry_after_s=2.0, meter=CapacityMeter(capacity_rps=100.0))
    limiter = InflightLimiter(held, door)
    admitted = [asyncio.create_task(call(limiter, path)) for _ in range(MIN_IN_FLIGHT)]
    await held.reached(MIN_IN_FLIGHT)
    refused = await call(limiter, path)
    start, body = refused
    assert start["status"] == 503
    assert (b"retry-after", b"2") in start["headers"]
    answer = orjson.loads(body["body"])
    if path.startswith("/v2/"):  # OIP's error shape
        assert answer["code"] == "overloaded"
        assert answer["details"] == {"in_flight": MIN_IN_FLIGHT, "limit": MIN_IN_FLIGHT,
                                     "capacity_rps": 100.0}  # fmt: skip
    else:
        assert answer["error"]["code"] == "overloaded"
        assert answer["error"]["limit"] == MIN_IN_FLIGHT
    assert door.refused == 1 and held.entered == MIN_IN_FLIGHT
    # Other endpoints are never capped: health and metrics answer under any load.
    health = asyncio.create_task(call(limiter, "/readyz", method="GET"))
    await held.reached(MIN_IN_FLIGHT + 1)
    held.release.set()
    await asyncio.gather(health, *admitted)
    assert door.in_flight == 0
    assert [m["status"] for m in (await call(limiter, path))[:1]] == [200]


def test_time_spent_refusing_does_not_count_against_capacity() -> None:
    # 1 ms of CPU a served request, and as much again refusing others: capacity is still
    # 1,000 served requests a CPU-second (counted in, it would halve, refuse more, collapse).
    meter = CapacityMeter()
    meter.completed(cpu_s=0.0, wall_s=0.0)
    cpu = 0.0
    for i in range(1, WINDOW_REQUESTS + 1):
        cpu += 0.002
        meter.exclude(0.001)
        meter.completed(cpu_s=cpu, wall_s=i * 0.01)
    assert meter.capacity_rps == pytest.approx(1000.0)
