"""Profiling real partitions: latency per model x batch x core-set size, measured and kept in Redis.

Flow: `ensure_profile` reads the stored profile of this machine; models whose fingerprint (or
the sizes and batches asked for) no longer match are measured again, each core-set size in a
spawned process pinned to that many cores, one size at a time; the merged profile is stored.
The plan, the run budget and the keys are pure; measuring and storing live below them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from common.cluster import DeviceInfo
from common.errors import BackendFailed
from common.models import CATALOG, ModelSpec
from common.modelzoo.cache import fingerprint, onnx_path
from common.profiles import DeviceProfile
from common.settings import CommonSettings

if TYPE_CHECKING:
    from common.store import Store

logger = logging.getLogger(__name__)

# The batches the issue asks for; the planner interpolates between them.
BATCHES = (1, 2, 4, 8, 16, 32)
# Same seed, same random inputs: conv-net latency does not depend on the values, but stays put.
INPUT_SEED = 20261124
# A measuring process that sends nothing for this long is stuck (model load + one point).
STALL_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.1  # how often the waiting thread checks for cancellation
STOP_TIMEOUT_S = 5.0


# the plan (pure) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunBudget:
    """How many runs one (model, cores, batch) point gets, and when larger batches are skipped.

    Every point starts with one cold run (it allocates buffers for the new shape), which counts
    as the first warm-up. The point's runs then fit `point_budget_ms` where they can, but never
    fall below the cold run plus one timed run.
    """

    warmup_runs: int = 2
    repeat_runs: int = 5
    # 2 s per point keeps the slowest catalog model (ResNet-50, ~0.1 s per item on one core,
    # machine-notes section 3) under ~10 s per core-set size.
    point_budget_ms: float = 2000.0


def runs_for(first_ms: float, budget: RunBudget) -> tuple[int, int]:
    """(extra warm-ups, timed runs) after a cold run of `first_ms`.

    A point costs about (1 + warm-ups + runs)·first_ms ≤ point_budget_ms, so
    runs_left = floor(point_budget_ms / first_ms) - 1; timed runs take them first (1..R), extra
    warm-ups (0..W-1) what remains.
    """
    runs_left = math.floor(budget.point_budget_ms / max(first_ms, 1e-6)) - 1
    repeats = min(budget.repeat_runs, max(1, runs_left))
    warmups = min(budget.warmup_runs - 1, max(0, runs_left - repeats))
    return max(0, warmups), repeats


def next_batch_fits(batch: int, latency_ms: float, next_batch: int, budget: RunBudget) -> bool:
    """Whether one run at `next_batch` is predicted to stay within the point budget.

    On CPU latency grows close to linearly with batch (machine-notes section 3), so
    L(next) ≈ L(batch)·next/batch ≤ point_budget_ms.
    """
    return latency_ms * next_batch / batch <= budget.point_budget_ms


def measure_series(
    run_once: Callable[[int], float],
    batches: Sequence[int],
    budget: RunBudget,
    on_point: Callable[[int, float | None], None] | None = None,
) -> tuple[tuple[int, float], ...]:
    """((batch, median latency_ms), ...) of the batches measured, ascending.

    `run_once(batch)` runs one batch and returns its latency. Once a batch is predicted to
    exceed the budget, it and every larger batch are skipped (`on_point(batch, None)`): the
    profile then has no point there and raises ProfileGap, rather than holding a guess.
    """
    points: list[tuple[int, float]] = []
    stopped = False
    for batch in sorted(batches):
        if points and not stopped:
            stopped = not next_batch_fits(points[-1][0], points[-1][1], batch, budget)
        if stopped:
            if on_point is not None:
                on_point(batch, None)
            continue
        first_ms = run_once(batch)
        warmups, repeats = runs_for(first_ms, budget)
        for _ in range(warmups):
            run_once(batch)
        latency_ms = statistics.median([run_once(batch) for _ in range(repeats)])
        points.append((batch, latency_ms))
        if on_point is not None:
            on_point(batch, latency_ms)
    return tuple(points)


@dataclass(frozen=True)
class ProfileRequest:
    """What to measure: each model at each size (the first `size` cores) and batch."""

    models: tuple[str, ...]
    cores: tuple[int, ...]  # the device's cores; size k runs on cores[:k]
    sizes: tuple[int, ...]
    batches: tuple[int, ...] = BATCHES
    budget: RunBudget = field(default_factory=RunBudget)

    @property
    def total_points(self) -> int:
        return len(self.models) * len(self.sizes) * len(self.batches)

    def cores_for(self, size: int) -> tuple[int, ...]:
        return self.cores[:size]


def plan_request(
    models: Iterable[str],
    cores: Sequence[int],
    sizes: Iterable[int] | None = None,
    batches: Iterable[int] = BATCHES,
    budget: RunBudget | None = None,
) -> ProfileRequest:
    """Validate and order a request; `sizes` default to every core-set size 1..len(cores)."""
    names = tuple(dict.fromkeys(models))
    unknown = [m for m in names if m not in CATALOG]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(CATALOG)}")
    if not names or not cores:
        raise ValueError("a profile needs at least one model and one core")
    wanted = tuple(sorted(set(sizes))) if sizes is not None else tuple(range(1, len(cores) + 1))
    bad = [s for s in wanted if not 1 <= s <= len(cores)]
    if bad or not wanted:
        raise ValueError(f"sizes {list(wanted)} must lie in 1..{len(cores)} (the cores offered)")
    return ProfileRequest(
        names, tuple(cores), wanted, tuple(sorted(set(batches))), budget or RunBudget()
    )


@dataclass(frozen=True)
class MachineFacts:
    """What makes a measurement valid on another day: same CPU, same core count, same ORT."""

    cpu_model: str
    cores: int
    ort_version: str


def _sha256(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def machine_key(facts: MachineFacts) -> str:
    return _sha256(asdict(facts))


def profile_key(machine: str, fingerprints: Mapping[str, str]) -> str:
    """sha256 over the machine key and each model's fingerprint: equal keys, reusable profile."""
    return _sha256({"machine": machine, "models": dict(sorted(fingerprints.items()))})


def stale_models(
    meta: Mapping[str, Any] | None, request: ProfileRequest, fingerprints: Mapping[str, str]
) -> tuple[str, ...]:
    """The requested models that the stored meta does not cover as asked."""
    stored = (meta or {}).get("models", {})

    def covered(model: str) -> bool:
        entry = stored.get(model)
        return (
            entry is not None
            and entry.get("fingerprint") == fingerprints[model]
            and set(request.sizes) <= set(entry.get("sizes", ()))
            and list(request.batches) == list(entry.get("batches", ()))
        )

    return tuple(m for m in request.models if not covered(m))


def merge_profiles(
    stored: DeviceProfile | None, keep: Iterable[str], measured: DeviceProfile
) -> DeviceProfile:
    """`measured` plus the stored points of the models in `keep` (still valid)."""
    kept = set(keep)
    points = dict(measured.latency_points)
    if stored is not None:
        points.update({k: v for k, v in stored.latency_points.items() if k[0] in kept})
    return DeviceProfile(
        name=measured.name,
        kind=measured.kind,
        sizes=measured.sizes,
        full_size=measured.full_size,
        memory_mb=measured.memory_mb,
        latency_points=dict(sorted(points.items())),
        source=measured.source,
    )


# measuring (one spawned, pinned process per core-set size) -------------------------------------
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
    ) -> DeviceProfile: ...


class _Cancelled(Exception):
    """The caller gave up; the measuring process has been stopped."""


@dataclass(frozen=True)
class _SizeJob:
    cores: tuple[int, ...]
    models: tuple[str, ...]
    model_paths: tuple[str, ...]
    batches: tuple[int, ...]
    budget: RunBudget
    log_level: str


def measure_profile(
    request: ProfileRequest,
    model_dir: Path,
    *,
    source: str,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> DeviceProfile:
    """Measure `request` for real; blocks (run it in a thread). Raises BackendFailed."""
    import multiprocessing

    paths = tuple(str(onnx_path(model_dir, m)) for m in request.models)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"model files missing: {missing}; run `gpulet models build`")
    ctx = multiprocessing.get_context("spawn")
    points: dict[tuple[str, float], tuple[tuple[int, float], ...]] = {}
    done = 0
    for size in request.sizes:  # one at a time: two sizes measured at once would interfere
        job = _SizeJob(
            request.cores_for(size), request.models, paths, request.batches, request.budget,
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
        for model, path in zip(job.models, job.model_paths, strict=True):
            _measure_model(conn, job, model, path)
        conn.send({"op": "done"})
    except Exception as exc:  # onnxruntime raises several types; the parent gets one message
        logger.exception("profiling failed cores=%s", job.cores)
        conn.send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _measure_model(conn: Connection, job: _SizeJob, model: str, path: str) -> None:
    """One model in the pinned process; its session is dropped before the next one loads."""
    from agent.worker import ModelRunner, WorkerConfig

    # The serving worker's loader, so the same session options and numbers; it reports over
    # this pipe, so it needs no socket.
    config = WorkerConfig(f"profile-{len(job.cores)}c", 0, "", job.cores, (model,), (path,))
    runner = ModelRunner.load(config)
    inputs = {b: profile_inputs(CATALOG[model], b) for b in job.batches}

    def run_once(batch: int) -> float:
        started = time.perf_counter()
        runner.run(model, inputs[batch])
        return (time.perf_counter() - started) * 1000

    def report(batch: int, latency_ms: float | None) -> None:
        conn.send({"op": "point", "model": model, "batch": batch, "latency_ms": latency_ms})

    measure_series(run_once, job.batches, job.budget, report)


def profile_inputs(spec: ModelSpec, batch: int) -> dict[str, np.ndarray]:
    """Seeded normal floats; integer tensors are ones (token id 1, a full attention mask)."""
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
    try:
        ort_version = importlib.metadata.version("onnxruntime")  # no import: no thread pool here
    except importlib.metadata.PackageNotFoundError:
        ort_version = "absent"
    return MachineFacts(cpu_model, cores, ort_version)


def machine_memory_mb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


# keeping it in Redis -----------------------------------------------------------------------------
async def ensure_profile(
    store: Store | None,
    settings: CommonSettings,
    device: DeviceInfo,
    models: Iterable[str],
    progress: ProgressFn | None = None,
    *,
    sizes: Iterable[int] | None = None,
    batches: Iterable[int] = BATCHES,
    force: bool = False,
    agent_id: str | None = None,
    measure: MeasureFn = measure_profile,
    clock: Callable[[], float] = time.time,
) -> DeviceProfile:
    """This machine's profile of `models`: the stored one while it matches, else measured.

    Only stale models are measured again. Measuring runs in a thread, so the event loop goes
    on; `progress` is called on the loop. With `store` None nothing is read or kept.
    """
    request = plan_request(models, device.cores, sizes, batches)
    facts = read_machine_facts(len(device.cores))
    machine = machine_key(facts)
    key = f"cpu:{machine}"
    fingerprints = {m: fingerprint(m) for m in request.models}
    found = await store.profile(key) if store is not None else None
    stored = DeviceProfile.from_json(found[0]) if found is not None else None
    meta: dict[str, Any] = found[1] if found is not None else {}
    if found is not None and meta.get("machine_key") != machine:
        stored, meta = None, {}  # another machine's facts under our key: trust none of it
    todo = request.models if force else stale_models(meta, request, fingerprints)
    if not todo and stored is not None:
        logger.info("profile reused key=%s models=%s", key, ",".join(request.models))
        return stored
    logger.info(
        "profiling models=%s sizes=%s batches=%s key=%s",
        ",".join(todo), request.sizes, request.batches, key,
    )  # fmt: skip
    started = time.perf_counter()
    measured = await _measure_in_thread(
        measure, plan_request(todo, device.cores, request.sizes, request.batches, request.budget),
        settings.model_dir, f"measured by agent {agent_id or socket.gethostname()} on "
        f"{facts.cpu_model}", progress,
    )  # fmt: skip
    entries = {m: e for m, e in meta.get("models", {}).items() if m not in todo}
    now = clock()
    for model in todo:
        entries[model] = {
            "fingerprint": fingerprints[model],
            "sizes": list(request.sizes),
            "batches": list(request.batches),
            "measured_at": now,
        }
    profile = merge_profiles(stored, entries.keys() - set(todo), measured)
    if store is not None:
        new_meta = {
            "machine_key": machine,
            "machine": asdict(facts),
            "profile_key": profile_key(machine, {m: e["fingerprint"] for m, e in entries.items()}),
            "models": entries,
        }
        await store.put_profile(key, profile.to_json(), new_meta)
    logger.info(
        "profile measured key=%s models=%s s=%.1f stored=%s",
        key, ",".join(todo), time.perf_counter() - started, store is not None,
    )  # fmt: skip
    return profile


async def _measure_in_thread(
    measure: MeasureFn,
    request: ProfileRequest,
    model_dir: Path,
    source: str,
    progress: ProgressFn | None,
) -> DeviceProfile:
    loop = asyncio.get_running_loop()
    cancel = threading.Event()

    def on_loop(step: ProfileStep) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, step)

    try:
        return await asyncio.to_thread(
            measure, request, model_dir, source=source, progress=on_loop, cancel=cancel
        )
    except asyncio.CancelledError:
        cancel.set()  # the thread stops its measuring process and returns soon
        raise
