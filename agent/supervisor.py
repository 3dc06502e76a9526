"""The supervisor: keeps one spawned worker per desired gpulet alive and runs batches on it.

Workers connect back to one unix socket and say hello with their gpulet id and generation. Each
gpulet has a `WorkerSlot` whose task starts the process, waits for "ready", reads replies, pings
while idle, and restarts the worker (with back-off) when it dies. A dead worker's in-flight
batches fail at once with BackendFailed: its socket closes when the process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

from agent.executor import serving
from agent.local_model import LocalModel, ModelResolver, zoo_model
from agent.worker import WorkerConfig, WorkerSetup, worker_main
from common import frames
from common.cluster import GpuletState, GpuletStatus
from common.errors import BackendFailed, DeadlinePassed, GpuletError, Overloaded, Unavailable
from common.errors import from_code as error_from_code
from common.placement import GpuletSpec
from common.settings import AgentSettings
from common.stream import StreamClosed, read_message, write_message

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SOCKET_NAME = "workers.sock"
EXIT_REAP_TIMEOUT_S = 1.0


class Unservable(Exception):
    """A gpulet spec this agent cannot run at all (it stays failed until the router changes it)."""


class WorkerSlot:
    """One gpulet: its current worker process, connection and in-flight batches."""

    def __init__(self, spec: GpuletSpec, supervisor: Supervisor) -> None:
        self.spec = spec
        self.sup = supervisor
        self.generation = 0
        self.state: GpuletState = "starting"
        self.error: str | None = None
        self._state_changed = asyncio.Event()
        self.restarts = 0
        self.process: BaseProcess | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[frames.Frame]] = {}
        self.ids = itertools.count(1)
        self.connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None
        self.connected = None
        self.ready = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.engine: str | None = None  # as the ready worker reported them
        self.gpu_memory_bytes = 0
        self.fingerprints: dict[str, str] = {}  # what each model was when its worker started
        self.direct_socket: str | None = None  # the ready worker's own socket (routers' path)
        self._direct_path = ""  # where its worker was told to make it

    # status -------------------------------------------------------------------------------
    def status(self) -> GpuletStatus:
        return GpuletStatus(
            gpulet_id=self.spec.gpulet_id,
            state=self.state,
            models=self.spec.model_names,
            cores=self.spec.cores,
            pid=self.process.pid if self.process is not None else None,
            restarts=self.restarts,
            pending=len(self.pending),
            error=self.error,
            engine=self.engine,
            gpu_memory_bytes=self.gpu_memory_bytes,
            direct_socket=self.direct_socket if self.state == "ready" else None,
        )

    def _set_state(self, state: GpuletState, error: str | None) -> None:
        self.state, self.error = state, error
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[WorkerSlot], bool]) -> None:
        """Wait until `predicate(self)` holds after some state change (or already holds)."""
        while not predicate(self):
            await self._state_changed.wait()

    # life cycle ---------------------------------------------------------------------------
    async def supervise(self) -> None:
        """Start, serve and restart the worker until told to stop; never dies on one failure."""
        failures = 0
        while not self.stopping:
            try:
                served_ok = await self._one_life()
            except Unservable:  # the spec itself is wrong: a restart would fail the same way
                return
            except Exception:
                logger.exception("gpulet=%s supervision step failed", self.spec.gpulet_id)
                served_ok = False
            await self._reap()
            if self.stopping:
                break
            failures = 0 if served_ok else failures + 1
            self.restarts += 1
            self._set_state("restarting", self.error)
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            logger.warning(
                "gpulet=%s worker gone; restart #%d in %.1fs", self.spec.gpulet_id,
                self.restarts, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    async def _one_life(self) -> bool:
        """One worker process from spawn to death; True if it reached ready."""
        self.generation += 1
        self.ready.clear()
        loop = asyncio.get_running_loop()
        self.connected = loop.create_future()
        try:
            setup = self.sup.worker_setup(self.spec) if self.sup.worker_setup else WorkerSetup()
        except ValueError as exc:  # e.g. a device this agent does not have
            self._set_state("failed", str(exc))
            logger.error("gpulet=%s %s", self.spec.gpulet_id, self.error)
            raise Unservable(str(exc)) from exc
        names = self.spec.model_names
        try:
            local = await self.sup.models_of(names)
        except GpuletError as exc:  # not published (yet), or its file could not be fetched
            self._set_state("failed", f"models {list(names)}: {exc.message}")
            logger.error("gpulet=%s %s", self.spec.gpulet_id, self.error)
            return False
        self.fingerprints = {m: local[m].fingerprint for m in names}
        config = WorkerConfig(
            gpulet_id=self.spec.gpulet_id,
            generation=self.generation,
            socket_path=str(self.sup.socket_path),
            cores=self.spec.cores,
            models=names,
            model_paths=tuple(str(local[m].path) for m in names),
            log_level=self.sup.settings.log_level,
            env=setup.env,
            gpu_engine=setup.gpu_engine,
            specs=tuple(local[m].spec for m in names),
            direct_socket=self.sup.direct_socket_path(),
        )
        self._direct_path = config.direct_socket
        # A GPU engine may need no ONNX file (torch); the worker says what it lacks.
        missing = _missing_files(config.model_paths) if setup.gpu_engine is None else []
        if missing:
            self._set_state(
                "failed", f"model files missing: {missing}; build them with `gpulet models build`"
            )
            logger.error("gpulet=%s %s", self.spec.gpulet_id, self.error)
            return False
        self.process = self.sup.mp.Process(
            target=worker_main, args=(config,), name=f"gpulet-{self.spec.gpulet_id}", daemon=True
        )
        self.process.start()
        self._set_state("starting", self.error)
        logger.info(
            "gpulet=%s worker started pid=%s models=%s cores=%s generation=%d",
            self.spec.gpulet_id, self.process.pid, ",".join(self.spec.model_names),
            self.spec.cores, self.generation,
        )  # fmt: skip
        timeout_s = self.sup.settings.worker_start_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await self._await_connection()
                first = frames.decode(await read_message(reader))
        except (TimeoutError, StreamClosed) as exc:
            self._set_state("failed", f"worker did not start within {timeout_s:.0f}s: {exc!r}")
            logger.error("gpulet=%s %s", self.spec.gpulet_id, self.error)
            return False
        self.writer = writer
        if first.header.get("op") != "ready":
            self._set_state("failed", str(first.header.get("error", "worker failed to load")))
            logger.error("gpulet=%s load failed: %s", self.spec.gpulet_id, self.error)
            return False
        self.engine = first.header.get("engine")
        self.gpu_memory_bytes = int(first.header.get("gpu_memory_bytes", 0))
        direct = first.header.get("direct_socket")
        self.direct_socket = direct if isinstance(direct, str) else None
        self._set_state("ready", None)
        self.ready.set()
        logger.info(
            "gpulet=%s ready load_ms=%.0f", self.spec.gpulet_id, first.header.get("load_ms", 0)
        )
        pinger = asyncio.create_task(self._ping_loop())
        try:
            await self._read_replies(reader)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        return True

    async def _await_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.connected is not None and self.process is not None
        exited: asyncio.Future[None] = asyncio.ensure_future(_wait_exit(self.process))
        waiting: set[asyncio.Future[object]] = {self.connected, exited}  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if self.connected in done:
            return self.connected.result()
        raise StreamClosed(f"worker exited with code {self.process.exitcode} before connecting")

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = frames.decode(await read_message(reader))
                future = self.pending.pop(int(reply.header.get("id", -1)), None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except StreamClosed:
            pass
        finally:
            self.ready.clear()
            self._set_state("stopping" if self.stopping else "restarting", self.error)
            self._fail_pending(
                Unavailable(f"gpulet {self.spec.gpulet_id} stopped", gpulet=self.spec.gpulet_id)
                if self.stopping
                else BackendFailed(
                    f"worker of gpulet {self.spec.gpulet_id} died with the batch in flight",
                    gpulet=self.spec.gpulet_id,
                )
            )

    async def _ping_loop(self) -> None:
        settings = self.sup.settings
        while True:
            await asyncio.sleep(settings.worker_ping_interval_s)
            if self.pending:  # busy workers answer batches, which proves them alive
                continue
            try:
                await self._call({"op": "ping"}, None, settings.worker_ping_timeout_s)
            except DeadlinePassed:
                logger.error(
                    "gpulet=%s worker missed a ping for %.0fs; killing it",
                    self.spec.gpulet_id, settings.worker_ping_timeout_s,
                )  # fmt: skip
                if self.process is not None:
                    self.process.kill()
                return
            except GpuletError:
                return

    def _fail_pending(self, error: GpuletError) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def _reap(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._direct_path:  # a router connecting now falls back to the agent
            _remove(self._direct_path)
        self.direct_socket = None
        if self.process is not None:
            await stop_worker(self.process, self.sup.settings.worker_stop_timeout_s)
            logger.info(
                "gpulet=%s worker pid=%s exited code=%s", self.spec.gpulet_id, self.process.pid,
                self.process.exitcode,
            )  # fmt: skip

    async def stop(self) -> None:
        self.stopping = True
        self._set_state("stopping", self.error)
        if self.process is not None and self.process.is_alive():
            await stop_worker(self.process, self.sup.settings.worker_stop_timeout_s)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self._fail_pending(Unavailable(f"gpulet {self.spec.gpulet_id} stopped"))
        await self._reap()

    # batches ------------------------------------------------------------------------------
    async def run(
        self, model: str, tensors: dict[str, frames.Array], deadline_monotonic_s: float,
        shared: str | None = None,
    ) -> frames.Frame:  # fmt: skip
        if self.state != "ready":
            raise Unavailable(
                f"gpulet {self.spec.gpulet_id} is {self.state}",
                gpulet=self.spec.gpulet_id,
                retry_after_s=1.0,
            )
        limit = self.sup.settings.max_pending_per_gpulet
        if len(self.pending) >= limit:
            raise Overloaded(
                f"gpulet {self.spec.gpulet_id} has {len(self.pending)} batches queued",
                queued=len(self.pending),
                limit=limit,
            )
        header: dict[str, object] = {
            "op": "run", "model": model, "deadline_monotonic_s": deadline_monotonic_s,
        }  # fmt: skip
        if shared is not None:  # the worker reads the batch itself
            header["shm_batch"] = shared
        reply = await self._call(header, tensors, deadline_monotonic_s - time.monotonic())
        if reply.header.get("op") == "error":
            raise error_from_code(
                str(reply.header.get("code")),
                str(reply.header.get("message")),
                gpulet=self.spec.gpulet_id,
            )
        return reply

    async def _call(
        self, header: dict[str, object], tensors: dict[str, frames.Array] | None, timeout_s: float
    ) -> frames.Frame:
        if self.writer is None or self.writer.is_closing():
            raise Unavailable(
                f"gpulet {self.spec.gpulet_id} has no worker connected (restarting)",
                gpulet=self.spec.gpulet_id,
            )
        if timeout_s <= 0:
            raise DeadlinePassed("deadline passed before the batch was sent")
        call_id = next(self.ids)
        future: asyncio.Future[frames.Frame] = asyncio.get_running_loop().create_future()
        try:
            write_message(self.writer, frames.encode({**header, "id": call_id}, tensors))
        except (RuntimeError, ConnectionError) as exc:
            # The worker's socket closed between our check and the write (uvloop raises
            # RuntimeError on a closed transport): the batch never reached it, so retrying is
            # safe: 503, not 502.
            raise Unavailable(
                f"worker of gpulet {self.spec.gpulet_id} went away before the batch was sent",
                gpulet=self.spec.gpulet_id,
            ) from exc
        self.pending[call_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                await self.writer.drain()
                return await future
        except TimeoutError as exc:
            raise DeadlinePassed(
                f"no answer from gpulet {self.spec.gpulet_id} within the deadline",
                gpulet=self.spec.gpulet_id,
            ) from exc
        except ConnectionError as exc:
            raise BackendFailed(
                f"worker of gpulet {self.spec.gpulet_id} died with the batch in flight",
                gpulet=self.spec.gpulet_id,
            ) from exc
        finally:
            # A late reply finds no future and is dropped; the worker skips expired batches.
            self.pending.pop(call_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # mark retrieved: we answered the caller another way


class Supervisor:
    def __init__(
        self,
        settings: AgentSettings,
        worker_setup: Callable[[GpuletSpec], WorkerSetup] | None = None,
    ) -> None:
        self.settings = settings
        # The device's part of each worker (GPU binding and engine); None: CPU workers.
        self.worker_setup = worker_setup
        self.model_dir = settings.model_dir
        # Finds each model's signature and file (fetching a repository model's); None: the zoo's
        # catalog and build cache only (set by the agent's main).
        self.model_files: ModelResolver | None = None
        self.mp = multiprocessing.get_context("spawn")
        self._tmp = tempfile.TemporaryDirectory(prefix="gpulet-agent-")
        self.socket_path = Path(self._tmp.name) / SOCKET_NAME
        self._direct_sockets = itertools.count(1)
        self.slots: dict[str, WorkerSlot] = {}
        self._server: asyncio.Server | None = None
        self._apply_lock = asyncio.Lock()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.socket_path))

    def direct_socket_path(self) -> str:
        """A fresh path for a worker's own socket: a restarted worker never takes its
        predecessor's, so a router cannot mistake one for the other."""
        return str(Path(self._tmp.name) / f"w{next(self._direct_sockets)}.sock")

    async def models_of(self, names: Sequence[str]) -> Mapping[str, LocalModel]:
        if self.model_files is not None:
            return await self.model_files.resolve(names)
        return {m: zoo_model(self.model_dir, m) for m in names}

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = frames.decode(await read_message(reader)).header
        except (StreamClosed, frames.FrameError):
            writer.close()
            return
        slot = self.slots.get(str(hello.get("gpulet_id")))
        if (
            slot is None
            or slot.generation != hello.get("generation")
            or slot.connected is None
            or slot.connected.done()
        ):
            logger.warning("stale worker connection %s closed", hello)
            writer.close()
            return
        slot.connected.set_result((reader, writer))

    async def apply(self, specs: Sequence[GpuletSpec], retiring: Collection[str] = ()) -> None:
        """See `GpuletExecutor.apply`."""
        async with self._apply_lock:
            wanted = {s.gpulet_id: s for s in specs}
            for gpulet_id, slot in list(self.slots.items()):
                spec = wanted.get(gpulet_id)
                if spec is not None and spec.partition() == slot.spec.partition() \
                        and await self._same_files(slot):  # fmt: skip
                    slot.spec = spec
                    continue
                if spec is None and gpulet_id in retiring:
                    continue
                del self.slots[gpulet_id]
                await slot.stop()
                logger.info("gpulet=%s stopped (no longer desired)", gpulet_id)
            for gpulet_id, spec in wanted.items():
                if gpulet_id not in self.slots:
                    slot = WorkerSlot(spec, self)
                    self.slots[gpulet_id] = slot
                    slot.task = asyncio.create_task(slot.supervise(), name=f"slot-{gpulet_id}")

    async def _same_files(self, slot: WorkerSlot) -> bool:
        """Whether the worker still runs what its models are: a repository model loaded again
        with another file (a new version) keeps its name, and its gpu-let may keep its place."""
        if self.model_files is None or not slot.fingerprints:
            return True  # not started yet: it will load what the models are then
        for name, loaded in slot.fingerprints.items():
            try:
                now = await self.model_files.fingerprint(name)
            except GpuletError:  # Redis unreachable: keep serving what runs
                return True
            if now is not None and now != loaded:
                logger.info("gpulet=%s model=%s changed files; restarting its worker",
                            slot.spec.gpulet_id, name)  # fmt: skip
                return False
        return True

    async def run(
        self,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array],
        deadline_monotonic_s: float,
        shared: str | None = None,
    ) -> frames.Frame:
        slot = serving(self.slots, gpulet_id, model, lambda s: s.spec)
        return await slot.run(model, tensors, deadline_monotonic_s, shared)

    def statuses(self) -> list[GpuletStatus]:
        return [slot.status() for slot in self.slots.values()]

    async def close(self) -> None:
        await self.apply([])
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._tmp.cleanup()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _missing_files(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not Path(p).exists()]


async def _wait_exit(process: BaseProcess) -> None:
    """Wait until the process exits, without a thread: its sentinel fd becomes readable."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    sentinel = process.sentinel

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(sentinel, on_exit)
    try:
        if process.exitcode is None:
            await exited
    finally:
        loop.remove_reader(sentinel)
    # The sentinel closes as the child exits, a moment before it can be reaped: this join
    # blocks for that moment only.
    process.join(EXIT_REAP_TIMEOUT_S)


async def stop_worker(process: BaseProcess, timeout_s: float) -> None:
    """terminate -> join(timeout) -> kill -> join."""
    if process.exitcode is None:
        process.terminate()
        try:
            await asyncio.wait_for(_wait_exit(process), timeout_s)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(_wait_exit(process), timeout_s)
    process.join(0)
