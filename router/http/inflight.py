"""The router's own capacity at the door: inference requests in flight are capped from what the
event loop can do, so the excess gets a fast 503 instead of seconds in the socket backlog.

One event loop parses every body, encodes every answer and drives every batch. When requests
arrive faster than it can do that, they wait before any admission sees them: in the kernel's
socket queue and the loop's ready queue, unmeasured, until their SLO is long gone. The cap
    in_flight ≤ capacity_rps × GPULET_ROUTER_BACKLOG_S   (at least MIN_IN_FLIGHT)
keeps that wait under the backlog time (Little's law). capacity_rps is measured, not assumed:
requests completed per second of the loop thread's CPU time (`CapacityMeter`, pure, fed by the
middleware's clock), so it holds at low load too, when throughput says nothing of capacity.
A refusal costs no body read and no JSON parse: a few tens of µs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from starlette.types import Receive, Scope, Send

App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Never cap below this many requests at once: a measurement taken while nearly idle (a few
# requests, most of the loop's time spent elsewhere) must not refuse a burst the loop can take.
MIN_IN_FLIGHT = 64
# Capacity is re-measured over windows of at least this many completed requests and this long.
WINDOW_REQUESTS = 200
WINDOW_S = 1.0
# EWMA weight of each window's capacity figure.
CAPACITY_WEIGHT = 0.3


@dataclass
class CapacityMeter:
    """Requests per CPU-second of the event loop's thread, smoothed (pure: times passed in)."""

    capacity_rps: float | None = None
    _completed: int = 0
    _window_start_cpu_s: float | None = None
    _window_start_wall_s: float = 0.0
    # CPU spent refusing, in this window: not the cost of a served request. Counted in, it
    # would make capacity look smaller the more is refused, refuse more, and collapse.
    _excluded_cpu_s: float = 0.0

    def exclude(self, cpu_s: float) -> None:
        self._excluded_cpu_s += cpu_s

    def completed(self, cpu_s: float, wall_s: float) -> None:
        if self._window_start_cpu_s is None:
            self._window_start_cpu_s, self._window_start_wall_s = cpu_s, wall_s
            return
        self._completed += 1
        cpu_used_s = cpu_s - self._window_start_cpu_s - self._excluded_cpu_s
        if (self._completed < WINDOW_REQUESTS or wall_s - self._window_start_wall_s < WINDOW_S
                or cpu_used_s <= 0):  # fmt: skip
            return
        measured = self._completed / cpu_used_s
        self.capacity_rps = measured if self.capacity_rps is None else \
            self.capacity_rps + CAPACITY_WEIGHT * (measured - self.capacity_rps)  # fmt: skip
        self._completed = 0
        self._excluded_cpu_s = 0.0
        self._window_start_cpu_s, self._window_start_wall_s = cpu_s, wall_s

    def limit(self, backlog_s: float) -> int | None:
        """Requests in flight the loop clears within `backlog_s`; None before a measurement."""
        if self.capacity_rps is None:
            return None
        return max(MIN_IN_FLIGHT, int(self.capacity_rps * backlog_s))


def is_inference(scope: Scope) -> bool:
    """The paths that carry tensors: /v1/infer and the OIP infer paths."""
    path = str(scope.get("path", ""))
    return scope.get("method") == "POST" and (path == "/v1/infer" or path.endswith("/infer"))


@dataclass
class Door:
    """What the limiter counts, shared with /metrics."""

    backlog_s: float
    retry_after_s: float
    meter: CapacityMeter = field(default_factory=CapacityMeter)
    in_flight: int = 0
    refused: int = 0


class InflightLimiter:
    """ASGI middleware: refuses inference requests past the cap with 503 `overloaded`."""

    def __init__(self, app: App, door: Door,
                 cpu_clock: Callable[[], float] = time.thread_time,
                 wall_clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.app = app
        self.door = door
        self.cpu_clock = cpu_clock
        self.wall_clock = wall_clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not is_inference(scope):
            await self.app(scope, receive, send)
            return
        door = self.door
        limit = door.meter.limit(door.backlog_s)
        if limit is not None and door.in_flight >= limit:
            door.refused += 1
            started_cpu_s = self.cpu_clock()
            await self._refuse(scope, send, limit)
            door.meter.exclude(self.cpu_clock() - started_cpu_s)
            return
        door.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            door.in_flight -= 1
            door.meter.completed(self.cpu_clock(), self.wall_clock())

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        door = self.door
        capacity = round(door.meter.capacity_rps or 0.0, 1)
        message = (f"the router has {door.in_flight} requests in flight, as many as it clears "
                   f"in {door.backlog_s:g} s at its measured {capacity:g} req/s; retry later")
        numbers = {"in_flight": door.in_flight, "limit": limit, "capacity_rps": capacity}
        if str(scope.get("path", "")).startswith("/v2/"):  # OIP clients read {"error": msg}
            body = {"error": message, "code": "overloaded", "details": numbers}
        else:
            body = {"error": {"code": "overloaded", "message": message, **numbers}}
        payload = orjson.dumps(body)
        await send({
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                        (b"retry-after", str(max(1, round(door.retry_after_s))).encode())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": payload})
