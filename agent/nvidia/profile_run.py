"""Measuring a GPU profile: spawned processes under real MPS limits, each with its partition's
environment set before any CUDA library loads, timing batches with the serving worker's loader.

    solo:  one process per size (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE = size), one model at a
           time, every batch (agent.profiling.plan.measure_series: same budget as the CPU's)
    pairs: two processes at once, one per side; both load and warm up, then run back to back
           through one shared window, and each reports the runs that fell wholly inside it

Blocking: run it in a thread or a CLI. The engine is the GPU worker's (`gpu_engine`), or ONNX
Runtime on the CPU when `gpu_engine` is None, which is how tests drive it without a GPU.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from agent.nvidia.profile_grid import GpuProfileRequest, PairPoint, PairResult
from agent.profiling.measure import profile_inputs
from agent.profiling.plan import RunBudget, measure_series
from common.errors import BackendFailed
from common.modelzoo.cache import onnx_path

logger = logging.getLogger(__name__)

PCT_VAR = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
STALL_TIMEOUT_S = 300.0  # model build (torch) + load + one point; a GPU point takes < 1 s
POLL_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 5.0
# A pair's window: long enough for this many runs of the slower side, and at least this long.
PAIR_MIN_RUNS = 10
PAIR_MIN_WINDOW_S = 1.0
PAIR_START_LEAD_S = 0.2  # both sides get "go" this long before the window opens

Point = tuple[str, float, int, float | None, str]  # model, size, batch, latency_ms, engine
PointFn = Callable[[Point], None]


@dataclass(frozen=True)
class GpuTarget:
    """Where the measuring processes run: the GPU's environment without the share (each
    process adds its size) and the engine."""

    env: Mapping[str, str]
    gpu_engine: str | None
    model_dir: Path
    log_level: str = "WARNING"


@dataclass(frozen=True)
class _Job:
    env: tuple[tuple[str, str], ...]
    gpu_engine: str | None
    models: tuple[str, ...]
    model_paths: tuple[str, ...]
    batches: tuple[int, ...]
    budget: RunBudget
    log_level: str


class _Child:
    """One measuring process and its end of a duplex pipe; stopped however its use ends."""

    def __init__(self, target: Callable[[Connection, _Job], None], job: _Job, label: str):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.process: BaseProcess = ctx.Process(
            target=target, args=(child_end, job), name=label, daemon=True
        )
        self.label = label
        self.process.start()
        child_end.close()  # the child's end is the only writer now: its death reads as EOF

    def receive(self, cancel: threading.Event) -> dict[str, Any]:
        quiet_since = time.monotonic()
        while not self.conn.poll(POLL_INTERVAL_S):
            if cancel.is_set():
                raise InterruptedError(f"{self.label}: cancelled")
            if time.monotonic() - quiet_since > STALL_TIMEOUT_S:
                raise BackendFailed(f"{self.label} sent nothing for {STALL_TIMEOUT_S:.0f}s")
        try:
            message: dict[str, Any] = self.conn.recv()
        except EOFError as exc:
            self.process.join(STOP_TIMEOUT_S)
            raise BackendFailed(f"{self.label} died, exit code {self.process.exitcode}") from exc
        if message.get("op") == "failed":
            raise BackendFailed(f"{self.label} failed: {message['error']}")
        return message

    def close(self) -> None:
        self.conn.close()
        if self.process.exitcode is None:  # terminate -> join(timeout) -> kill -> join
            self.process.terminate()
            self.process.join(STOP_TIMEOUT_S)
            if self.process.exitcode is None:
                self.process.kill()
        self.process.join()


def _job(target: GpuTarget, request: GpuProfileRequest, size: float,
         models: tuple[str, ...], batches: tuple[int, ...]) -> _Job:  # fmt: skip
    env = {**target.env, PCT_VAR: f"{size:g}"}
    paths = tuple(str(onnx_path(target.model_dir, m)) for m in models)
    return _Job(tuple(sorted(env.items())), target.gpu_engine, models, paths, batches,
                request.budget, target.log_level)  # fmt: skip


def measure_solo(
    request: GpuProfileRequest,
    target: GpuTarget,
    on_point: PointFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[dict[tuple[str, float], tuple[tuple[int, float], ...]], str]:
    """((model, size) -> ((batch, latency_ms), ...), engine used); sizes one at a time, since
    two measured at once would interfere."""
    cancel = cancel or threading.Event()
    points: dict[tuple[str, float], tuple[tuple[int, float], ...]] = {}
    engines: set[str] = set()
    for size in request.sizes:
        job = _job(target, request, size, request.models, request.batches)
        for message in _messages(_Child(_solo_main, job, f"profile-{size:g}%"), cancel):
            if message["size_env"] != f"{size:g}":
                raise BackendFailed(f"a process meant for {size:g} % ran under "
                                    f"{PCT_VAR}={message['size_env']!r}")  # fmt: skip
            model, batch, latency_ms = message["model"], message["batch"], message["latency_ms"]
            engines.add(message["engine"])
            if latency_ms is not None:
                key = (model, size)
                points[key] = (*points.get(key, ()), (int(batch), float(latency_ms)))
            if on_point is not None:
                on_point((model, size, int(batch), latency_ms, message["engine"]))
    if len(engines) > 1:
        raise BackendFailed(f"the measuring processes ran on different engines: {engines}")
    return points, next(iter(engines), "")


def _messages(child: _Child, cancel: threading.Event) -> Iterator[dict[str, Any]]:
    try:
        while (message := child.receive(cancel))["op"] != "done":
            yield message
    finally:
        child.close()


def measure_pairs(
    request: GpuProfileRequest,
    target: GpuTarget,
    on_pair: Callable[[PairResult | None, PairPoint], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> list[PairResult]:
    """Each pair's two sides measured while both run; a pair whose window holds no whole run
    of a side is left out (and reported to `on_pair` as None). No pair starts once
    time.monotonic() has passed `deadline`: those measured by then are the result."""
    cancel = cancel or threading.Event()
    results = []
    for pair in request.pairs:
        if deadline is not None and time.monotonic() >= deadline:
            break
        sides: list[_Child] = []
        try:
            for model, batch, size in ((pair.model_a, pair.batch_a, pair.size_a),
                                       (pair.model_b, pair.batch_b, pair.size_b)):  # fmt: skip
                job = _job(target, request, size, (model,), (batch,))
                sides.append(_Child(_pair_main, job, f"pair {model}@{size:g}%"))
            ready = [side.receive(cancel) for side in sides]
            slowest_s = max(float(r["warm_ms"]) for r in ready) / 1000
            window_s = max(PAIR_MIN_WINDOW_S, PAIR_MIN_RUNS * slowest_s)
            start_at = time.monotonic() + PAIR_START_LEAD_S
            for side in sides:
                side.conn.send({"op": "go", "start_at": start_at, "window_s": window_s})
            done = [side.receive(cancel) for side in sides]
        finally:
            for side in sides:
                side.close()
        result = None
        if all(len(d["latencies_ms"]) > 0 for d in done):
            (a, sa), (b, sb) = (_median_std(d["latencies_ms"]) for d in done)
            result = PairResult(pair, a, b, sa, sb)
            results.append(result)
        if on_pair is not None:
            on_pair(result, pair)
    return results


def _median_std(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.pstdev(values)


# the measuring processes ----------------------------------------------------------------------
def _prepare(job: _Job, name: str) -> None:
    """The child's first steps: the partition's environment before anything loads CUDA."""
    from common.logs import configure_logging
    from common.procs import die_with_parent

    os.environ.update(dict(job.env))
    configure_logging(job.log_level, process_name=name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    die_with_parent()


def _load(job: _Job, model: str, path: str) -> Any:
    from agent.worker import WorkerConfig, load_runner

    config = WorkerConfig("profile", 0, "", (), (model,), (path,), gpu_engine=job.gpu_engine)
    return load_runner(config)


def _log_failure(what: str, exc: Exception) -> None:
    """No engine here is a plain fact the parent prints; anything else keeps its traceback."""
    from agent.nvidia.engines import EngineUnavailable

    if isinstance(exc, EngineUnavailable):
        logger.debug("%s: %s", what, exc)
    else:
        logger.exception("%s", what)


def _solo_main(conn: Connection, job: _Job) -> None:
    _prepare(job, f"profiler[{dict(job.env).get(PCT_VAR)}%]")
    size_env = os.environ.get(PCT_VAR, "")
    try:
        for model, path in zip(job.models, job.model_paths, strict=True):
            _measure_model(conn, job, model, path, size_env)
        conn.send({"op": "done"})
    except Exception as exc:  # engines raise several types; the parent gets one message
        _log_failure("GPU profiling failed", exc)
        conn.send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _measure_model(conn: Connection, job: _Job, model: str, path: str, size_env: str) -> None:
    """One model's batches; its session is dropped before the next model loads."""
    runner = _load(job, model, path)
    inputs = {b: profile_inputs(runner.specs[model], b) for b in job.batches}

    def run_once(batch: int) -> float:
        started = time.perf_counter()
        runner.run(model, inputs[batch])
        return (time.perf_counter() - started) * 1000

    def report(batch: int, latency_ms: float | None) -> None:
        conn.send({"op": "point", "model": model, "batch": batch, "engine": runner.engine,
                   "latency_ms": latency_ms, "size_env": size_env})  # fmt: skip

    measure_series(run_once, job.batches, job.budget, report)


def _pair_main(conn: Connection, job: _Job) -> None:
    _prepare(job, "profiler[pair]")
    model, batch = job.models[0], job.batches[0]
    try:
        runner = _load(job, model, job.model_paths[0])
        inputs = profile_inputs(runner.specs[model], batch)
        warm_ms = 0.0
        for _ in range(job.budget.warmup_runs):
            started = time.perf_counter()
            runner.run(model, inputs)
            warm_ms = (time.perf_counter() - started) * 1000
        conn.send({"op": "ready", "warm_ms": warm_ms})
        go = conn.recv()
        start_at, end_at = float(go["start_at"]), float(go["start_at"]) + float(go["window_s"])
        while time.monotonic() < start_at:  # both sides open the window together
            time.sleep(min(POLL_INTERVAL_S, max(0.0, start_at - time.monotonic())))
        latencies = []
        while (began := time.monotonic()) < end_at:
            runner.run(model, inputs)
            ended = time.monotonic()
            if ended <= end_at:  # wholly inside: the other side ran all along
                latencies.append((ended - began) * 1000)
        conn.send({"op": "done", "latencies_ms": latencies})
    except Exception as exc:  # engines raise several types; the parent gets one message
        _log_failure("GPU pair profiling failed", exc)
        conn.send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()
