"""The simulated device kind: gpulets on profiled GPUs, served on timers instead of processes.

Each gpulet is a FIFO server: one batch at a time, taking
    intended_ms = profile.latency_ms(model, batch, size) * slowdown(model, what runs beside it),
the slowdown fixed when the batch starts. A batch starts the instant the one before it ended as
scheduled (not when our wake-up got to run), so the lateness of one wake-up never shifts the rest
of a gpulet's queue. Wake-ups come from one Linux timerfd (nanosecond deadlines on
CLOCK_MONOTONIC, which `time.monotonic` reads); elsewhere from the event loop's timers, whose
epoll/libuv wait rounds to whole milliseconds. No process or thread per gpulet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import heapq
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from agent.executor import serving
from common import frames
from common.cluster import DeviceInfo, GpuletState, GpuletStatus
from common.errors import BackendFailed, BadRequest, DeadlinePassed, Overloaded, Unavailable
from common.interference import Corunner, InterferenceModel, NoInterference
from common.models import TensorSpec, spec_for
from common.placement import GpuletSpec
from common.profiles import DeviceProfile, ProfileGap
from common.settings import AgentSettings
from common.shared_memory import SharedBatchError, read_batch

logger = logging.getLogger(__name__)


TimerKind = Literal["timerfd", "loop"]


@dataclass(frozen=True)
class BatchTiming:
    """One simulated batch as the executor saw it (monotonic seconds)."""

    gpulet_id: str
    model: str
    batch: int
    submitted_s: float
    started_s: float
    intended_ms: float
    completed_s: float

    @property
    def achieved_ms(self) -> float:
        return (self.completed_s - self.started_s) * 1000


# timers ------------------------------------------------------------------------------------
class Timers(Protocol):
    def call_at(self, when_s: float, callback: Callable[[], None]) -> None:
        """Run `callback` once `time.monotonic()` reaches `when_s`."""

    def close(self) -> None: ...


class LoopTimers:
    """The event loop's timers. uvloop's clock is not `time.monotonic` (it is cut to whole
    milliseconds), so deadlines go in as delays from now and an early wake-up waits again."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def call_at(self, when_s: float, callback: Callable[[], None]) -> None:
        self._loop.call_later(max(0.0, when_s - time.monotonic()), self._due, when_s, callback)

    def _due(self, when_s: float, callback: Callable[[], None]) -> None:
        if time.monotonic() < when_s:
            self.call_at(when_s, callback)
        else:
            callback()

    def close(self) -> None:
        """Pending handles stay; their callbacks find their gpulet stopped and do nothing."""


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


# <linux/time.h>, <sys/timerfd.h>: the TFD_* flags equal O_NONBLOCK and O_CLOEXEC.
CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
NS_PER_S = 1_000_000_000


class TimerFdTimers:
    """A heap of deadlines behind one timerfd armed, absolute, for the earliest of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            raise OSError("no C library to call timerfd_create through")
        libc = ctypes.CDLL(libc_name, use_errno=True)
        self._settime = libc.timerfd_settime  # AttributeError off Linux: the caller falls back
        self._settime.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(_ITimerSpec), ctypes.c_void_p,
        ]  # fmt: skip
        self._fd = int(libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC))
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._loop = loop
        self._spec = _ITimerSpec()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._armed_s = math.inf
        self._firing = False
        loop.add_reader(self._fd, self._on_expiry)

    def call_at(self, when_s: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when_s, next(self._seq), callback))
        if not self._firing and when_s < self._armed_s:
            self._arm(when_s)

    def _arm(self, when_s: float) -> None:
        ns = max(1, round(when_s * NS_PER_S))  # an all-zero it_value would disarm the timer
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(ns, NS_PER_S)
        if self._settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_s = when_s

    def _on_expiry(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        self._armed_s = math.inf
        self._firing = True
        try:
            now_s = time.monotonic()
            while self._heap and self._heap[0][0] <= now_s:
                callback = heapq.heappop(self._heap)[2]
                try:
                    callback()
                except Exception:  # one failing callback must not stop the others' clock
                    logger.exception("simulated timer callback failed")
        finally:
            self._firing = False
        if self._heap:
            self._arm(self._heap[0][0])

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._heap.clear()


def make_timers(loop: asyncio.AbstractEventLoop, kind: TimerKind) -> Timers:
    if kind == "timerfd":
        try:
            return TimerFdTimers(loop)
        except (OSError, AttributeError) as exc:
            logger.warning("no timerfd (%s); simulated batches use the loop's ms timers", exc)
    return LoopTimers(loop)


# gpulets -----------------------------------------------------------------------------------
@dataclass(eq=False)
class _Batch:
    model: str
    size: int
    deadline_s: float
    submitted_s: float
    future: asyncio.Future[frames.Frame]
    started_s: float = 0.0
    intended_ms: float = 0.0
    slowdown: float = 1.0
    corunner: Corunner | None = None  # set when it starts: what its neighbours see


@dataclass(eq=False)
class SimulatedGpulet:
    spec: GpuletSpec
    state: GpuletState = "ready"
    error: str | None = None
    queue: deque[_Batch] = field(default_factory=deque)
    running: _Batch | None = None
    free_at_s: float = 0.0  # when the last started batch ends as scheduled
    waiting: int = 0  # callers waiting on a batch (what max_pending bounds)
    retiring: bool = False  # replaced: drains what the router still sends, then is stopped

    def status(self) -> GpuletStatus:
        return GpuletStatus(
            gpulet_id=self.spec.gpulet_id,
            state=self.state,
            models=self.spec.model_names,
            cores=(),
            pid=None,
            restarts=0,
            pending=self.waiting,
            error=self.error,
        )


class SimulatedExecutor:
    """Serves gpulets of simulated GPUs of one profile; the agent API's `GpuletExecutor`."""

    def __init__(
        self,
        settings: AgentSettings,
        profile: DeviceProfile,
        devices: Sequence[DeviceInfo],
        *,
        interference: InterferenceModel | None = None,
        timer: TimerKind = "timerfd",
        on_batch: Callable[[BatchTiming], None] | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.device_ids = tuple(d.device_id for d in devices)
        self.interference = interference or fitted_interference(profile)
        self.gpulets: dict[str, SimulatedGpulet] = {}
        self._by_device: dict[str, list[SimulatedGpulet]] = {d: [] for d in self.device_ids}
        self._timer_kind: TimerKind = timer
        self._timers: Timers | None = None
        self._on_batch = on_batch
        self._corunners: dict[tuple[str, int, float], Corunner] = {}

    async def start(self) -> None:
        self._timers = make_timers(asyncio.get_running_loop(), self._timer_kind)

    async def apply(self, specs: Sequence[GpuletSpec], retiring: Collection[str] = ()) -> None:
        """See `GpuletExecutor.apply`. A retiring gpulet still runs (and interferes) but its
        share is free for the gpulets that replace it, as MPS limits may add up past 100 %."""
        wanted = {s.gpulet_id: s for s in specs}
        for gpulet_id, gpulet in list(self.gpulets.items()):
            spec = wanted.get(gpulet_id)
            if spec is not None and spec.partition() == gpulet.spec.partition():
                gpulet.spec, gpulet.retiring = spec, False
                continue
            if spec is None and gpulet_id in retiring:
                gpulet.retiring = True
                continue
            self._stop(gpulet)
            logger.info("gpulet=%s stopped (no longer desired)", gpulet_id)
        for gpulet_id, spec in wanted.items():
            if gpulet_id in self.gpulets:
                continue
            gpulet = SimulatedGpulet(spec)
            gpulet.error = self._unservable(spec)
            if gpulet.error is not None:
                gpulet.state = "failed"
                logger.error("gpulet=%s %s", gpulet_id, gpulet.error)
            else:
                self._by_device[spec.device_id].append(gpulet)
                logger.info(
                    "gpulet=%s ready (simulated) device=%s size=%g%% models=%s", gpulet_id,
                    spec.device_id, spec.size, ",".join(spec.model_names),
                )  # fmt: skip
            self.gpulets[gpulet_id] = gpulet

    def _unservable(self, spec: GpuletSpec) -> str | None:
        """Why this executor cannot serve `spec`, in words that name the fix; None if it can."""
        if spec.device_id not in self._by_device:
            return f"no simulated device {spec.device_id!r} here; devices: {list(self.device_ids)}"
        full = self.profile.full_size
        used = sum(g.spec.size for g in self._by_device[spec.device_id] if not g.retiring)
        if not 0 < spec.size <= full - used:
            return (
                f"size {spec.size:g} does not fit device {spec.device_id}: "
                f"{used:g} of {full:g} used; give a size in (0, {full - used:g}]"
            )
        for model in spec.model_names:
            if self.profile.max_batch(model, spec.size) == 0:
                return (
                    f"profile {self.profile.name} does not cover {model} at size {spec.size:g} "
                    f"(it measures {list(self.profile.measured_sizes(model))})"
                )
        return None

    def _stop(self, gpulet: SimulatedGpulet) -> None:
        del self.gpulets[gpulet.spec.gpulet_id]
        if gpulet in self._by_device.get(gpulet.spec.device_id, []):
            self._by_device[gpulet.spec.device_id].remove(gpulet)
        gpulet.state = "stopping"
        stopped = Unavailable(f"gpulet {gpulet.spec.gpulet_id} stopped")
        for batch in (*gpulet.queue, *([gpulet.running] if gpulet.running else [])):
            if not batch.future.done():
                batch.future.set_exception(stopped)
        gpulet.queue.clear()
        gpulet.running = None

    async def run(
        self,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array],
        deadline_monotonic_s: float,
        shared: str | None = None,
    ) -> frames.Frame:
        gpulet = serving(self.gpulets, gpulet_id, model, lambda g: g.spec)
        if shared is not None:  # not advertised here; read it all the same
            try:
                tensors = read_batch(shared)
            except SharedBatchError as exc:
                raise BackendFailed(exc.args[0], gpulet=gpulet_id) from exc
        if gpulet.state != "ready":
            raise Unavailable(f"gpulet {gpulet_id} is {gpulet.state}: {gpulet.error}",
                              gpulet=gpulet_id, retry_after_s=1.0)  # fmt: skip
        limit = self.settings.max_pending_per_gpulet
        if gpulet.waiting >= limit:
            raise Overloaded(
                f"gpulet {gpulet_id} has {gpulet.waiting} batches queued",
                queued=gpulet.waiting,
                limit=limit,
            )
        now_s = time.monotonic()
        if deadline_monotonic_s <= now_s:
            raise DeadlinePassed("deadline passed before the batch was sent")
        future: asyncio.Future[frames.Frame] = asyncio.get_running_loop().create_future()
        gpulet.queue.append(_Batch(model, batch_size(tensors), deadline_monotonic_s, now_s, future))
        if gpulet.running is None:
            self._start_next(gpulet)
        gpulet.waiting += 1
        try:
            async with asyncio.timeout(deadline_monotonic_s - now_s):
                return await future
        except TimeoutError as exc:
            # Like a real worker, the simulated GPU goes on with a batch it has started.
            raise DeadlinePassed(
                f"no answer from gpulet {gpulet_id} within the deadline", gpulet=gpulet_id
            ) from exc
        finally:
            gpulet.waiting -= 1

    def _start_next(self, gpulet: SimulatedGpulet) -> None:
        """Start the first queued batch that can run; fail the ones that cannot on the way."""
        assert self._timers is not None, "SimulatedExecutor.start() was not awaited"
        while gpulet.queue:
            batch = gpulet.queue.popleft()
            # The GPU begins a batch when the one before it ends as scheduled, or on arrival.
            started_s = max(gpulet.free_at_s, batch.submitted_s)
            if started_s >= batch.deadline_s:
                _fail(batch, DeadlinePassed("deadline passed before the batch ran",
                                            gpulet=gpulet.spec.gpulet_id))  # fmt: skip
                continue
            size = gpulet.spec.size
            try:
                solo_ms = self.profile.latency_ms(batch.model, batch.size, size)
            except ProfileGap as exc:
                _fail(batch, BackendFailed(f"simulated gpulet {gpulet.spec.gpulet_id} cannot "
                      f"run this batch: {exc}", gpulet=gpulet.spec.gpulet_id))  # fmt: skip
                continue
            batch.corunner = self._corunner(batch.model, batch.size, size)
            batch.slowdown = self.interference.slowdown(batch.corunner, self._neighbours(gpulet))
            batch.started_s, batch.intended_ms = started_s, solo_ms * batch.slowdown
            gpulet.running = batch
            gpulet.free_at_s = started_s + batch.intended_ms / 1000
            self._timers.call_at(gpulet.free_at_s, functools.partial(self._complete, gpulet, batch))
            return

    def _neighbours(self, gpulet: SimulatedGpulet) -> list[Corunner]:
        """What runs now in the other gpulets of the same simulated GPU."""
        return [
            other.running.corunner
            for other in self._by_device[gpulet.spec.device_id]
            if other is not gpulet and other.running is not None and other.running.corunner
        ]

    def _corunner(self, model: str, batch: int, size: float) -> Corunner:
        """One shared instance per (model, batch, size): a fitted model memoises its answers
        keyed on these, and one object per batch would grow the heap the collector scans."""
        key = (model, batch, size)
        found = self._corunners.get(key)
        if found is None:
            found = self._corunners[key] = Corunner(model, batch, size)
        return found

    def _complete(self, gpulet: SimulatedGpulet, batch: _Batch) -> None:
        if gpulet.running is not batch:  # the gpulet was stopped meanwhile
            return
        completed_s = time.monotonic()
        gpulet.running = None
        if not batch.future.done():
            achieved_ms = (completed_s - batch.started_s) * 1000
            header = {
                "op": "result",
                "simulated": True,
                "compute_ms": achieved_ms,
                "achieved_ms": achieved_ms,
                "intended_ms": batch.intended_ms,
                "slowdown": batch.slowdown,
            }
            batch.future.set_result(frames.Frame(header, output_tensors(batch.model, batch.size)))
        if self._on_batch is not None:
            self._on_batch(
                BatchTiming(gpulet.spec.gpulet_id, batch.model, batch.size, batch.submitted_s,
                            batch.started_s, batch.intended_ms, completed_s)
            )  # fmt: skip
        self._start_next(gpulet)

    def statuses(self) -> list[GpuletStatus]:
        return [g.status() for g in self.gpulets.values()]

    async def close(self) -> None:
        await self.apply([])
        if self._timers is not None:
            self._timers.close()
            self._timers = None


def _fail(batch: _Batch, error: Exception) -> None:
    if not batch.future.done():
        batch.future.set_exception(error)


def batch_size(tensors: dict[str, frames.Array]) -> int:
    """The batch axis (axis 0) of the first input; inputs are not checked against the model."""
    for array in tensors.values():
        if array.ndim >= 1:
            return int(array.shape[0])
    raise BadRequest("a simulated batch needs an input tensor with a batch axis (axis 0)")


def output_tensors(model: str, batch: int) -> dict[str, frames.Array]:
    """Zeros of the model's simulated signature (a token per item), for `batch` items."""
    return {o.name: np.zeros((batch, *o.item_shape), dtype=o.dtype) for o in _outputs(model)}


@functools.cache
def _outputs(model: str) -> tuple[TensorSpec, ...]:
    """A model's simulated outputs: asked on every batch, built once."""
    return spec_for(model, simulated=True).outputs


def fitted_interference(profile: DeviceProfile) -> InterferenceModel:
    """The interference model fitted to this profile's measurements, else no interference."""
    try:
        from common.interference_models import fitted_for

        fitted = fitted_for(profile.name, profile)
    except (ImportError, OSError, LookupError, ValueError) as exc:
        logger.warning(
            "no fitted interference model for profile %s (%r); simulating without interference",
            profile.name, exc,
        )  # fmt: skip
        return NoInterference()
    if fitted is None:
        logger.warning("no fitted interference model for profile %s; simulating without "
                       "interference", profile.name)  # fmt: skip
        return NoInterference()
    return fitted
