"""The open-loop sender: each request goes out at its due time, whatever earlier ones are doing.

One aiohttp session; a feeder walks the schedule and starts a task per request when it is due
(never awaiting an answer first), so a slow server cannot hold sends back. Records what happened
to each request for `report`, polls `/v1/cluster` for re-plans, and shows progress on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loadgen.arrivals import Arrival
from loadgen.report import (
    CLIENT_OVERLOADED,
    CONNECTION_ERROR,
    OK_STATUS,
    TIMEOUT,
    Record,
    Replan,
)

# Requests in flight beyond this are recorded as CLIENT_OVERLOADED instead of sent: a server
# that stops answering must not make the loadgen itself run out of memory or sockets.
DEFAULT_MAX_INFLIGHT = 20_000
# A request without an answer after max(SLO x TIMEOUT_SLO_FACTOR, MIN_TIMEOUT_S) is a timeout:
# well past any deadline the router sets (GPULET_DEADLINE_FACTOR x SLO), so it is the router's
# answer, not ours, that a slow request normally gets.
TIMEOUT_SLO_FACTOR = 4.0
MIN_TIMEOUT_S = 10.0
# The first request is due this long after the session opens (time to set the loop going).
START_DELAY_S = 0.2
CLUSTER_POLL_S = 1.0
CLUSTER_TIMEOUT_S = 2.0
PROGRESS_REFRESH_S = 0.25
JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}


@dataclass(frozen=True)
class RunConfig:
    url: str  # the router's base URL, e.g. http://127.0.0.1:8000
    bodies: Mapping[str, bytes]  # served name -> request body
    slo_ms: Mapping[str, float]  # served name -> SLO
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    progress: bool = True  # shown only when stderr is a terminal
    cluster_poll_s: float | None = CLUSTER_POLL_S  # None: do not watch for re-plans

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {self.max_inflight}")
        missing = sorted(set(self.bodies) - set(self.slo_ms))
        if missing:
            raise ValueError(f"models {missing} have a body but no SLO")

    @property
    def infer_url(self) -> str:
        return self.url.rstrip("/") + "/v1/infer"

    @property
    def cluster_url(self) -> str:
        return self.url.rstrip("/") + "/v1/cluster"

    def timeout_s(self, model: str) -> float:
        return max(self.slo_ms[model] * TIMEOUT_SLO_FACTOR / 1000, MIN_TIMEOUT_S)


@dataclass(frozen=True)
class RunResult:
    records: tuple[Record, ...]  # in schedule order
    replans: tuple[Replan, ...]
    scheduled: int  # requests in the schedule
    issued: int  # requests put on the wire (scheduled minus CLIENT_OVERLOADED)
    send_span_s: float  # from the first send to the last
    elapsed_s: float  # from the start to the last answer
    cpu_s: float  # CPU time of this process (all threads) over the run

    @property
    def send_rate_rps(self) -> float:
        return self.issued / self.send_span_s if self.send_span_s > 0 else 0.0


@dataclass
class _Counts:
    sent: int = 0
    answered: int = 0
    ok: int = 0
    inflight: int = 0
    replans: list[Replan] = field(default_factory=list)


def error_code(status: int, body: bytes) -> str:
    """The router's `{"error": {"code"}}`, or `http_<status>` for any other answer."""
    try:
        data = orjson.loads(body)
        code = data["error"]["code"]
        if isinstance(code, str):
            return code
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return f"http_{status}"


async def run_open_loop(arrivals: Sequence[Arrival], config: RunConfig) -> RunResult:
    """Send every arrival at its due time; return once each has an answer, error or timeout."""
    loop = asyncio.get_running_loop()
    # perf_counter, not loop.time(): uvloop's loop time is in whole ms, cached per iteration.
    clock = time.perf_counter
    cpu_start_s = time.process_time()
    records: list[Record | None] = [None] * len(arrivals)
    counts = _Counts()
    timeouts = {name: aiohttp.ClientTimeout(total=config.timeout_s(name)) for name in config.bodies}
    connector = aiohttp.TCPConnector(limit=0)  # no pool limit: open loop, never queue locally
    async with aiohttp.ClientSession(connector=connector, headers=JSON_HEADERS) as session:
        t0 = clock() + START_DELAY_S

        async def one(index: int, arrival: Arrival) -> None:
            sent_s = clock() - t0
            status = 0
            code: str | None = CONNECTION_ERROR
            latency_ms: float | None = None
            try:
                async with session.post(
                    config.infer_url, data=config.bodies[arrival.model],
                    timeout=timeouts[arrival.model],
                ) as response:  # fmt: skip
                    body = await response.read()
                    status = response.status
                latency_ms = (clock() - t0 - sent_s) * 1000
                code = None if status == OK_STATUS else error_code(status, body)
            except TimeoutError:
                code = TIMEOUT
            except aiohttp.ClientError:
                code = CONNECTION_ERROR
            finally:
                counts.inflight -= 1
            done_s = clock() - t0
            slo_ms = config.slo_ms[arrival.model]
            record = Record(arrival.model, arrival.at_s, sent_s, done_s, status, code,
                            latency_ms, slo_ms)  # fmt: skip
            records[index] = record
            counts.answered += 1
            counts.ok += record.ok

        tasks: set[asyncio.Task[None]] = set()
        async with _progress(config.progress, len(arrivals), counts):
            poller = loop.create_task(_poll_cluster(session, config, t0, counts))
            try:
                for index, arrival in enumerate(arrivals):
                    wait_s = t0 + arrival.at_s - clock()
                    if wait_s > 0:
                        await asyncio.sleep(wait_s)
                    counts.sent += 1
                    if counts.inflight >= config.max_inflight:
                        records[index] = Record(arrival.model, arrival.at_s, clock() - t0,
                                                None, 0, CLIENT_OVERLOADED, None,
                                                config.slo_ms[arrival.model])  # fmt: skip
                        counts.answered += 1
                        continue
                    counts.inflight += 1
                    task = loop.create_task(one(index, arrival))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                for task in (*tasks, poller):
                    task.cancel()
                await asyncio.gather(*tasks, poller, return_exceptions=True)
        elapsed_s = clock() - t0
    done = tuple(r for r in records if r is not None)
    sends = [r.sent_s for r in done if r.code != CLIENT_OVERLOADED]
    return RunResult(
        records=done,
        replans=tuple(counts.replans),
        scheduled=len(arrivals),
        issued=len(sends),
        send_span_s=max(sends) - min(sends) if sends else 0.0,
        elapsed_s=elapsed_s,
        cpu_s=time.process_time() - cpu_start_s,
    )


async def _poll_cluster(
    session: aiohttp.ClientSession,
    config: RunConfig,
    t0: float,
    counts: _Counts,
) -> None:
    """Best effort: note when the placement's version changes; any failure is skipped."""
    if config.cluster_poll_s is None:
        return
    timeout = aiohttp.ClientTimeout(total=CLUSTER_TIMEOUT_S)
    seen: int | None = None
    # The first poll, at the start, gives the version the run begins with; changes come after.
    await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
    while True:
        try:
            async with session.get(config.cluster_url, timeout=timeout) as response:
                data = orjson.loads(await response.read()) if response.status == OK_STATUS else {}
            placement = data.get("placement") if isinstance(data, dict) else None
            version = int(placement["version"]) if isinstance(placement, dict) else None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, KeyError, ValueError,
                TypeError):  # fmt: skip
            version = None
        if version is not None:
            if seen is not None and version != seen:
                counts.replans.append(Replan(round(time.perf_counter() - t0, 3), version))
            seen = version
        await asyncio.sleep(config.cluster_poll_s)


@contextlib.asynccontextmanager
async def _progress(enabled: bool, total: int, counts: _Counts) -> AsyncIterator[None]:
    """A rich bar (sent, answered, ok %) on stderr, refreshed by a task; off without a TTY."""
    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield
        return
    bar = Progress(
        TextColumn("loadgen sent"), BarColumn(), MofNCompleteColumn(),
        TextColumn("answered {task.fields[answered]}  ok {task.fields[ok_pct]}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip
    task_id = bar.add_task("loadgen", total=total, answered=0, ok_pct="-")

    def update() -> None:
        ok_pct = f"{100 * counts.ok / counts.answered:.1f}%" if counts.answered else "-"
        bar.update(task_id, completed=counts.sent, answered=counts.answered, ok_pct=ok_pct)

    async def refresh() -> None:
        while True:
            update()
            await asyncio.sleep(PROGRESS_REFRESH_S)

    with bar:
        ticker = asyncio.get_running_loop().create_task(refresh())
        try:
            yield
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            update()
