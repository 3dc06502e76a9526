"""The router's direct path to a worker on its own host.

A ready worker listens on a unix socket of its own (`GpuletStatus.direct_socket`); a router that
can reach it sends batches there, past the agent's HTTP hop, which costs the agent a request
parse, a frame re-encode and a process switch per batch. The agent still starts, watches and
restarts the worker. One connection per worker; batches are pipelined by id and answered in
the order the worker runs them.

A path that cannot be reached (the router in another container, a worker already gone) raises
`NoDirectPath` before anything is sent, and the batch goes through the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time

from common import frames
from common.errors import BackendFailed, DeadlinePassed, GpuletError
from common.errors import from_code as error_from_code
from common.stream import StreamClosed, read_message, write_message

logger = logging.getLogger(__name__)


class NoDirectPath(Exception):
    """The batch was not sent to the worker: send it through the agent. `reachable`: the
    socket answered before (the link may be opened again); False: it never did."""

    def __init__(self, message: str, *, reachable: bool = False) -> None:
        super().__init__(message)
        self.reachable = reachable


class WorkerLink:
    """One connection to one worker's own socket."""

    def __init__(self, path: str, gpulet_id: str) -> None:
        self.path = path
        self.gpulet_id = gpulet_id
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[frames.Frame]] = {}
        self._ids = itertools.count(1)
        self._reader_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect and check the worker's hello names this gpulet; the outcome lands in
        `opened` (NoDirectPath when it cannot be used)."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            self._opened(NoDirectPath(f"{self.path}: {exc}"))
            return
        try:
            hello = frames.decode(await read_message(reader)).header
        except (StreamClosed, frames.FrameError) as exc:
            writer.close()
            self._opened(NoDirectPath(f"{self.path}: no hello ({exc})"))
            return
        if hello.get("gpulet_id") != self.gpulet_id:
            writer.close()
            self._opened(NoDirectPath(f"{self.path} serves {hello.get('gpulet_id')!r}"))
            return
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_replies(reader))
        self._opened(None)

    def _opened(self, error: NoDirectPath | None) -> None:
        if error is not None:
            self.closed = True
            logger.info("gpulet=%s sends through the agent: %s", self.gpulet_id, error)
        if not self.opened.done():
            if error is None:
                self.opened.set_result(None)
            else:
                self.opened.set_exception(error)
                self.opened.exception()  # retrieved: callers may never await it

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = frames.decode(await read_message(reader))
                future = self._pending.pop(int(reply.header.get("id", -1)), None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (StreamClosed, frames.FrameError):
            pass
        finally:
            self.close()

    async def call(
        self, header: dict[str, object], tensors: dict[str, frames.Array] | None, timeout_s: float
    ) -> frames.Frame:
        """Send one message on the open link and wait for its reply. NoDirectPath: it was not
        sent."""
        if not self.opened.done() or self.opened.exception() is not None:
            raise NoDirectPath(f"connection to {self.path} not open", reachable=True)
        if self.closed or self._writer is None or self._writer.is_closing():
            raise NoDirectPath(f"connection to {self.path} closed", reachable=True)
        call_id = next(self._ids)
        future: asyncio.Future[frames.Frame] = asyncio.get_running_loop().create_future()
        try:
            write_message(self._writer, frames.encode({**header, "id": call_id}, tensors))
        except (RuntimeError, ConnectionError) as exc:  # a closed transport: nothing went out
            self.close()
            raise NoDirectPath(f"connection to {self.path} failed: {exc!r}", reachable=True) \
                from exc  # fmt: skip
        self._pending[call_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                await self._writer.drain()
                return await future
        except TimeoutError as exc:
            raise DeadlinePassed(
                f"no answer from gpulet {self.gpulet_id} within the deadline",
                gpulet=self.gpulet_id,
            ) from exc
        except ConnectionError as exc:
            self.close()
            raise self._died() from exc
        finally:
            self._pending.pop(call_id, None)  # a late reply finds no future and is dropped
            if future.done() and not future.cancelled():
                future.exception()

    def _died(self) -> GpuletError:
        return BackendFailed(
            f"worker of gpulet {self.gpulet_id} went away with the batch in flight",
            gpulet=self.gpulet_id,
        )

    def close(self) -> None:
        if self.closed and self._writer is None:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self._died())
        if not self.opened.done():
            self.opened.set_exception(NoDirectPath(f"connection to {self.path} closed"))
            self.opened.exception()


class WorkerLinks:
    """The router's links to workers, by socket path; opened as soon as a path is known, so
    the first batch does not wait for the connection."""

    def __init__(self) -> None:
        self._links: dict[str, WorkerLink] = {}
        self._unreachable: set[str] = set()  # paths are never reused: once failed, failed
        self._opening: set[asyncio.Task[None]] = set()

    def know(self, paths: dict[str, str]) -> None:
        """`paths`: gpulet id -> its worker's socket, for every ready worker routers may use.
        Opens links to new ones, closes those no longer listed."""
        for gone in set(self._links) - set(paths.values()):
            self._links.pop(gone).close()
        self._unreachable &= set(paths.values())
        for gpulet_id, path in paths.items():
            if path not in self._links and path not in self._unreachable:
                self._open(path, gpulet_id)

    def _open(self, path: str, gpulet_id: str) -> WorkerLink:
        link = WorkerLink(path, gpulet_id)
        self._links[path] = link
        task = asyncio.create_task(link.open(), name=f"link-{gpulet_id}")
        self._opening.add(task)

        def opened(task: asyncio.Task[None]) -> None:
            self._opening.discard(task)
            failed = link.opened.done() and link.opened.exception() is not None
            if failed and self._links.get(path) is link:
                self._unreachable.add(path)
                del self._links[path]

        task.add_done_callback(opened)
        return link

    def usable(self, path: str) -> bool:
        return path not in self._unreachable

    async def wait_open(self, path: str) -> bool:
        """Wait until the link to `path` (listed by `know`) is open; False if it cannot be."""
        link = self._links.get(path)
        if link is None:
            return False
        with contextlib.suppress(NoDirectPath):
            await asyncio.shield(link.opened)
            return not link.closed
        return False

    async def run(
        self,
        path: str,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array] | None,
        timeout_s: float,
        extra: dict[str, object],
    ) -> frames.Frame:
        """Run one batch on the worker at `path` (`tensors`, or what `extra` names in
        /dev/shm). Raises NoDirectPath when nothing was sent, else GpuletError."""
        link = self._links.get(path)
        if link is None or link.closed:
            link = self._open(path, gpulet_id)  # a closed link to a live worker reconnects
        if not link.opened.done():  # no batch waits for a connection: the agent takes it
            raise NoDirectPath(f"connection to {path} still opening", reachable=True)
        header: dict[str, object] = {
            "op": "run", "model": model, "deadline_monotonic_s": time.monotonic() + timeout_s,
            **extra,
        }  # fmt: skip
        try:
            reply = await link.call(header, tensors, timeout_s)
        except NoDirectPath as exc:
            if not exc.reachable:
                self._unreachable.add(path)
            if self._links.get(path) is link:
                del self._links[path]
            raise
        if reply.header.get("op") == "error":
            raise error_from_code(
                str(reply.header.get("code")), str(reply.header.get("message")), gpulet=gpulet_id
            )
        return reply

    async def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        for task in list(self._opening):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
