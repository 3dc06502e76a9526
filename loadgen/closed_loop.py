"""Closed-loop HTTP load: `concurrency` clients each POST back-to-back on one aiohttp session.

The measurement (`closed_loop`) does the I/O; `LoadResult` and `percentile` are pure.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

# A request that raised instead of answering (refused, reset, timed out) is counted as status 0.
NO_RESPONSE_STATUS = 0
DEFAULT_WARMUP_REQUESTS = 10
DEFAULT_TIMEOUT_S = 120.0
JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of `values` at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    ordered = sorted(values)
    # rank = ceil(q/100 * n), 1-based; q = 0 gives the minimum.
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class LoadResult:
    """What one closed-loop run measured; latencies of every answered or failed request."""

    concurrency: int
    latencies_ms: tuple[float, ...]
    statuses: Mapping[int, int]  # HTTP status (NO_RESPONSE_STATUS for none) -> count
    elapsed_s: float
    codes: tuple[int, ...] = ()  # each request's status, in the order of `latencies_ms`

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def non_ok(self) -> dict[int, int]:
        return {code: n for code, n in sorted(self.statuses.items()) if code != 200}

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class _Budget:
    """Shared by the workers of one phase: how many requests may still start, and until when."""

    left: int | None
    stop_at: float | None

    def take(self) -> bool:
        if self.stop_at is not None and time.perf_counter() >= self.stop_at:
            return False
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def closed_loop(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup: int = DEFAULT_WARMUP_REQUESTS,
    headers: Mapping[str, str] = JSON_HEADERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LoadResult:
    """POST `body` to `url` from `concurrency` back-to-back clients.

    First `warmup` requests at the same concurrency, unrecorded; then `requests` in all, or as
    many as start within `duration_s` (whichever ends first when both are given).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if requests is None and duration_s is None:
        raise ValueError("give requests, duration_s or both")
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = NO_RESPONSE_STATUS
            return status, (time.perf_counter() - started) * 1000

        async def phase(budget: _Budget) -> tuple[list[float], list[int], float]:
            latencies: list[float] = []
            codes: list[int] = []

            async def worker() -> None:
                while budget.take():
                    status, latency_ms = await one()
                    latencies.append(latency_ms)
                    codes.append(status)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, codes, time.perf_counter() - started

        if warmup > 0:
            await phase(_Budget(left=warmup, stop_at=None))
        stop_at = None if duration_s is None else time.perf_counter() + duration_s
        latencies, codes, elapsed_s = await phase(_Budget(left=requests, stop_at=stop_at))
    return LoadResult(concurrency, tuple(latencies), dict(Counter(codes)), elapsed_s,
                      tuple(codes))
