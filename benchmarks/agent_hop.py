"""Router -> agent hop: the real aiohttp AgentClient vs a minimal httpx client, noop model.
Run: `python benchmarks/agent_hop.py [--repeats 3] [--requests N]` (GPULET_MODEL_DIR set).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx
import numpy as np
import uvloop

from common import frames, redis_server
from common.settings import CommonSettings
from loadgen.closed_loop import percentile
from router.dispatch.agent_client import AgentClient

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.support is not an installed package
from tests.support.system import RunningSystem, wait_until  # noqa: E402

MODEL = "noop"
CONCURRENCIES = (1, 8, 64)
CONNECTIONS = 256  # the router's default agent_connections; httpx gets the same pool size
WARMUP_REQUESTS = 100
TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0
CLIENTS = ("aiohttp", "httpx")


class Hop(Protocol):
    async def run(
        self,
        agent_url: str,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array],
        timeout_s: float,
        request_id: str,
    ) -> frames.Frame: ...

    async def close(self) -> None: ...


class HttpxAgentClient:
    """AgentClient.run's hot path on one shared httpx.AsyncClient: same frame, URL and decode."""

    def __init__(self, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(limits=limits, timeout=TIMEOUT_S)

    async def close(self) -> None:
        await self._client.aclose()

    async def run(
        self,
        agent_url: str,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array],
        timeout_s: float,
        request_id: str,
    ) -> frames.Frame:
        body = frames.encode(
            {"model": model, "timeout_ms": timeout_s * 1000, "request_id": request_id}, tensors
        )
        url = f"{agent_url}/v1/gpulets/{gpulet_id}/run"
        async with asyncio.timeout(timeout_s):
            response = await self._client.post(url, content=body)
        if response.status_code != 200:
            raise RuntimeError(f"agent answered {response.status_code}: {response.content[:200]!r}")
        return frames.decode(response.content)


def make_client(name: str) -> Hop:
    return AgentClient(CONNECTIONS) if name == "aiohttp" else HttpxAgentClient(CONNECTIONS)


@dataclass(frozen=True)
class Stats:
    rps: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Target:
    agent_url: str
    gpulet_id: str


async def closed_loop(
    call: Callable[[str], Awaitable[frames.Frame]], requests: int, concurrency: int
) -> Stats:
    """`concurrency` coroutines send back-to-back until `requests` calls have been made."""
    tickets = iter(range(requests))
    latencies_ms: list[float] = []

    async def worker() -> None:
        for i in tickets:
            started = time.perf_counter()
            reply = await call(f"bench-{i}")
            latencies_ms.append((time.perf_counter() - started) * 1000)
            if "output" not in reply.tensors:
                raise RuntimeError(f"reply without an output tensor: {reply.header}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    elapsed = time.perf_counter() - started
    return Stats(
        rps=len(latencies_ms) / elapsed,
        p50_ms=percentile(latencies_ms, 50),
        p99_ms=percentile(latencies_ms, 99),
    )


# (client, concurrency) -> Stats for one repeat
Repeat = dict[tuple[str, int], Stats]


async def one_repeat(target: Target, order: Sequence[str], requests: int) -> Repeat:
    tensors = {"input": np.random.default_rng(0).random((1, 16), dtype=np.float32)}
    results: Repeat = {}
    for name in order:
        client = make_client(name)
        try:

            async def call(request_id: str, client: Hop = client) -> frames.Frame:
                return await client.run(
                    target.agent_url, target.gpulet_id, MODEL, tensors, TIMEOUT_S, request_id
                )

            for concurrency in CONCURRENCIES:
                await closed_loop(call, WARMUP_REQUESTS, concurrency)
                results[(name, concurrency)] = await closed_loop(call, requests, concurrency)
        finally:
            await client.close()
    return results


def spread(values: Sequence[float], digits: int) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def render(repeats: Sequence[Repeat]) -> str:
    header = f"{'conc':>4}  {'client':<8} {'req/s':>22} {'p50 ms':>22} {'p99 ms':>24}"
    lines = [header, "-" * len(header)]
    for c in CONCURRENCIES:
        for name in CLIENTS:
            runs = [r[(name, c)] for r in repeats]
            lines.append(
                f"{c:>4}  {name:<8} {spread([s.rps for s in runs], 0):>22} "
                f"{spread([s.p50_ms for s in runs], 2):>22} "
                f"{spread([s.p99_ms for s in runs], 2):>24}"
            )
        ratios = [r[("aiohttp", c)].rps / r[("httpx", c)].rps for r in repeats]
        lines.append(f"{c:>4}  {'ratio':<8} {spread(ratios, 2):>22}  (aiohttp/httpx req/s)")
    lines.append("median [min-max] over repeats")
    return "\n".join(lines)


def find_target(system: RunningSystem) -> Target:
    def probe() -> Target | None:
        body: Any = system.get("/v1/cluster").body
        for agent in body.get("agents", []):
            for gpulet in agent.get("gpulets", []):
                if MODEL in gpulet["models"] and gpulet["state"] == "ready":
                    return Target(agent_url=str(agent["url"]), gpulet_id=str(gpulet["gpulet_id"]))
        return None

    return wait_until(probe, READY_TIMEOUT_S, f"a ready {MODEL} gpulet in /v1/cluster")


async def measure(target: Target, repeats: int, requests: int) -> list[Repeat]:
    results = []
    for r in range(repeats):
        order = CLIENTS if r % 2 == 0 else CLIENTS[::-1]
        print(f"repeat {r + 1}/{repeats}: order {' then '.join(order)}", flush=True)
        results.append(await one_repeat(target, order, requests))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="per client and concurrency")
    args = parser.parse_args(argv)
    model_dir = Path(os.environ.get("GPULET_MODEL_DIR") or CommonSettings().model_dir)

    began = time.monotonic()
    redis = redis_server.resolve(None)
    system = RunningSystem(
        redis_url=redis.url,
        prefix=f"bench-hop-{uuid.uuid4().hex[:8]}",
        model_dir=model_dir,
        models=(MODEL,),
    )
    try:
        system.start().wait_ready(READY_TIMEOUT_S)
        target = find_target(system)
        print(
            f"agent {target.agent_url} gpulet {target.gpulet_id}; httpx {httpx.__version__}, "
            f"aiohttp {aiohttp.__version__}, uvloop; {args.requests} requests per cell, "
            f"{WARMUP_REQUESTS} warm-up; {os.cpu_count()} cores",
            flush=True,
        )
        repeats = uvloop.run(measure(target, args.repeats, args.requests))
        print(render(repeats))
    finally:
        system.stop()
        redis.stop()
    print(f"total {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
