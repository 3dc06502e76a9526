"""Measuring a CPU profile: one spawned process per core-set size, pinned to those cores, times
each model x batch with the serving worker's loader and sends the points back over a pipe.

Called by `agent.profiling.profiler.ensure_profile` in a thread; what to measure comes from
`agent.profiling.plan`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.local_model import LocalModel, zoo_model
from agent.profiling.plan import MachineFacts, ProfileRequest, RunBudget, measure_series
from common.errors import BackendFailed
from common.models import ModelSpec
from common.profiles import DeviceProfile

logger = logging.getLogger(__name__)

# Same seed, same random inputs: conv-net latency does not depend on the values, but stays put.
INPUT_SEED = 20261124
# A measuring process that sends nothing for this long is stuck (model load + one point).
STALL_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.1  # how often the waiting thread checks for cancellation
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ProfileStep:
    """One point done: `latency_ms` is None when the budget skipped it."""

    model: str
    cores: int
    batch: int
    latency_ms: float | None
    done: int
    total: int


ProgressFn = Callable[[ProfileStep], None]


class MeasureFn(Protocol):
    def __call__(
        self,
        request: ProfileRequest,
        model_dir: Path,
        *,
        source: str,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        models: Mapping[str, LocalModel] | None = None,
    ) -> DeviceProfile: ...


class _Cancelled(Exception):
    """The caller gave up; the measuring process has been stopped."""


@dataclass(frozen=True)
class _SizeJob:
    cores: tuple[int, ...]
    models: tuple[ModelSpec, ...]
    model_paths: tuple[str, ...]
    batches: tuple[tuple[int, ...], ...]  # per model
    budget: RunBudget
    log_level: str


def measure_profile(
    request: ProfileRequest,
    model_dir: Path,
    *,
    source: str,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    models: Mapping[str, LocalModel] | None = None,
) -> DeviceProfile:
    """Measure `request` for real; blocks (run it in a thread). Raises BackendFailed.
    `models` gives their files and signatures (default: the zoo's, in `model_dir`)."""
    import multiprocessing

    local = {m: (models or {}).get(m) or zoo_model(model_dir, m) for m in request.models}
    paths = tuple(str(local[m].path) for m in request.models)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"model files missing: {missing}; run `gpulet models build`")
    ctx = multiprocessing.get_context("spawn")
    points: dict[tuple[str, float], tuple[tuple[int, float], ...]] = {}
    done = 0
    for size in request.sizes:  # one at a time: two sizes measured at once would interfere
        job = _SizeJob(
            request.cores_for(size), tuple(local[m].spec for m in request.models), paths,
            tuple(request.batches_for(m) for m in request.models), request.budget,
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )  # fmt: skip
        # closing(): a failing progress callback still stops this size's process at once.
        with contextlib.closing(_run_size(ctx, job, cancel or threading.Event())) as messages:
            for message in messages:
                model, batch, latency_ms = message["model"], message["batch"], message["latency_ms"]
                if latency_ms is not None:
                    key = (model, float(size))
                    points[key] = (*points.get(key, ()), (int(batch), float(latency_ms)))
                done += 1
                if progress is not None:
                    progress(
                        ProfileStep(model, size, batch, latency_ms, done, request.total_points)
                    )
    n = len(request.cores)
    return DeviceProfile(
        name=f"cpu-{n}c",
        kind="cpu",
        sizes=tuple(float(s) for s in range(1, n + 1)),
        full_size=float(n),
        memory_mb=machine_memory_mb(),
        latency_points=points,
        source=source,
    )


def _run_size(
    ctx: Any, job: _SizeJob, cancel: threading.Event
) -> Generator[dict[str, Any], None, None]:
    """Yield the point messages of one size's measuring process; stop it however this ends."""
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_size_main, args=(sender, job), name=f"profile-{len(job.cores)}c", daemon=True
    )
    process.start()
    sender.close()  # ours closed, the child's end is the only writer: its death reads as EOF
    try:
        quiet_since = time.monotonic()
        while True:
            if cancel.is_set():
                raise _Cancelled
            if not receiver.poll(POLL_INTERVAL_S):
                if time.monotonic() - quiet_since > STALL_TIMEOUT_S:
                    raise BackendFailed(
                        f"profiling {job.cores} sent nothing for {STALL_TIMEOUT_S}s"
                    )
                continue
            quiet_since = time.monotonic()
            try:
                message: dict[str, Any] = receiver.recv()
            except EOFError as exc:
                process.join(STOP_TIMEOUT_S)
                raise BackendFailed(
                    f"profiling process on cores {job.cores} died, exit code {process.exitcode}"
                ) from exc
            if message["op"] == "done":
                return
            if message["op"] == "failed":
                raise BackendFailed(f"profiling on cores {job.cores} failed: {message['error']}")
            yield message
    finally:
        receiver.close()
        if process.exitcode is None:  # terminate -> join(timeout) -> kill -> join
            process.terminate()
            process.join(STOP_TIMEOUT_S)
            if process.exitcode is None:
                process.kill()
        process.join()


def _size_main(conn: Connection, job: _SizeJob) -> None:
    """Entry point of the spawned measuring process: pin, then load and measure each model."""
    from common.logs import configure_logging
    from common.procs import die_with_parent

    configure_logging(job.log_level, process_name=f"profiler[{len(job.cores)}c]")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    die_with_parent()
    # Before ModelRunner.load imports onnxruntime, so its thread pool starts inside the core set.
    os.sched_setaffinity(0, set(job.cores))
    try:
        for spec, path, batches in zip(job.models, job.model_paths, job.batches, strict=True):
            _measure_model(conn, job, spec, path, batches)
        conn.send({"op": "done"})
    except Exception as exc:  # onnxruntime raises several types; the parent gets one message
        logger.exception("profiling failed cores=%s", job.cores)
        conn.send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _measure_model(
    conn: Connection, job: _SizeJob, spec: ModelSpec, path: str, batches: tuple[int, ...]
) -> None:
    """One model in the pinned process; its session is dropped before the next one loads."""
    from agent.worker import ModelRunner, WorkerConfig

    # The serving worker's loader, so the same session options and numbers; it reports over
    # this pipe, so it needs no socket.
    model = spec.name
    config = WorkerConfig(f"profile-{len(job.cores)}c", 0, "", job.cores, (model,), (path,),
                          specs=(spec,))  # fmt: skip
    runner = ModelRunner.load(config)
    inputs = {b: profile_inputs(spec, b) for b in batches}

    def run_once(batch: int) -> float:
        started = time.perf_counter()
        runner.run(model, inputs[batch])
        return (time.perf_counter() - started) * 1000

    def report(batch: int, latency_ms: float | None) -> None:
        conn.send({"op": "point", "model": model, "batch": batch, "latency_ms": latency_ms})

    measure_series(run_once, batches, job.budget, report)


def profile_inputs(spec: ModelSpec, batch: int) -> dict[str, np.ndarray]:
    """Seeded normal floats; integer tensors are ones (token id 1, a full attention mask),
    booleans true."""
    rng = np.random.default_rng(INPUT_SEED)
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = (batch, *t.item_shape)
        if np.issubdtype(np.dtype(t.dtype), np.floating):
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
        else:
            out[t.name] = np.ones(shape, dtype=t.dtype)
    return out


def read_machine_facts(cores: int) -> MachineFacts:
    cpu_model = platform.machine() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ort_version = "absent"
    for distribution in ("onnxruntime", "onnxruntime-gpu"):  # the CPU wheel, or its GPU twin
        try:
            ort_version = importlib.metadata.version(distribution)  # no import: no thread pool
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return MachineFacts(cpu_model, cores, ort_version)


def machine_memory_mb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
