"""The router's client for agents: run a batch, set desired gpulets, read gpulet state.

A batch for a worker on this host goes to the worker's own socket (`worker_link`), the rest
over HTTP to its agent. One pooled aiohttp session for all agents (httpx measured 4-10x slower
at 8-64 concurrent requests on this machine class: machine-notes section 6). aiohttp's
exceptions are translated into our error tree here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from common import frames, shared_memory
from common.cluster import AgentInfo
from common.errors import BackendFailed, DeadlinePassed, GpuletError, Unavailable, from_code
from common.placement import GpuletSpec
from router.dispatch.worker_link import NoDirectPath, WorkerLinks

CONTROL_TIMEOUT_S = 5.0


class AgentClient:
    def __init__(
        self,
        connections: int,
        retry_after_s: float = 1.0,
        via_shared_memory: bool = True,
        direct_to_workers: bool = True,
    ) -> None:
        self.retry_after_s = retry_after_s
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._via_shared_memory = via_shared_memory
        self._shares: dict[str, bool] = {}  # agent URL -> sees that agent's /dev/shm probe
        self._probes: dict[str, str | None] = {}  # agent URL -> the probe last checked
        self._slots = shared_memory.BatchSlots()
        self._direct_to_workers = direct_to_workers
        self._direct: dict[str, dict[str, str]] = {}  # agent URL -> gpulet id -> socket
        self._links: WorkerLinks | None = None
        # (path: "worker" direct or "agent" over HTTP, transport: "shared_memory" or "inline")
        self.batches_sent = {(p, t): 0 for p in ("worker", "agent")
                             for t in ("shared_memory", "inline")}  # fmt: skip

    def know_agents(self, agents: Sequence[AgentInfo]) -> None:
        """Note which agents share this host's /dev/shm (checked once per probe)."""
        for agent in agents:
            if self._probes.get(agent.url, "") != agent.shared_memory:
                self._probes[agent.url] = agent.shared_memory
                probe = agent.shared_memory
                shares = probe is not None and shared_memory.sees_probe(probe)
                self._shares[agent.url] = self._via_shared_memory and shares

    def know_gpulets(self, agent_url: str, gpulets: Iterable[Mapping[str, Any]]) -> None:
        """Note the own sockets of an agent's ready workers (from its gpulet report), so
        batches for them go there; a gpulet not ready or not listed goes through the agent."""
        if not self._direct_to_workers:
            return
        self._direct[agent_url] = {
            str(g["gpulet_id"]): str(g["direct_socket"]) for g in gpulets
            if g.get("state") == "ready" and isinstance(g.get("direct_socket"), str)
        }  # fmt: skip
        if self._links is None:
            self._links = WorkerLinks()
        self._links.know({g: p for paths in self._direct.values() for g, p in paths.items()})

    async def wait_direct(self, agent_url: str, gpulet_id: str) -> bool:
        """Wait until batches for the gpulet can go to its worker's own socket; False if they
        cannot (not listed, out of reach, or the setting is off)."""
        path = self._direct.get(agent_url, {}).get(gpulet_id)
        return path is not None and self._links is not None and await self._links.wait_open(path)

    def _share(self, agent_url: str, tensors: dict[str, frames.Array]) -> str | None:
        """The batch written to /dev/shm, its name; None to send it inline."""
        if not self._shares.get(agent_url):
            return None
        if sum(a.nbytes for a in tensors.values()) < shared_memory.MIN_SHARED_BYTES:
            return None
        return self._slots.write(tensors)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._links is not None:
            await self._links.close()
            self._links = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._slots.close()

    async def run(
        self,
        agent_url: str,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array],
        timeout_s: float,
        request_id: str,
    ) -> frames.Frame:
        shared = self._share(agent_url, tensors)
        extra: dict[str, object] = {"request_id": request_id}
        if shared is not None:
            extra["shm_batch"] = shared
        transport = "inline" if shared is None else "shared_memory"
        answered = False
        try:
            direct = self._direct.get(agent_url, {}).get(gpulet_id)
            if direct is not None and self._links is not None and self._links.usable(direct):
                sent = True
                try:
                    reply = await self._links.run(
                        direct, gpulet_id, model, tensors if shared is None else None, timeout_s,
                        extra,
                    )  # fmt: skip
                    answered = True
                    return reply
                except NoDirectPath:
                    sent = False  # nothing went out: the agent takes it
                finally:
                    if sent:
                        self.batches_sent["worker", transport] += 1
            self.batches_sent["agent", transport] += 1
            header = {"model": model, "timeout_ms": timeout_s * 1000, **extra}
            body = frames.encode(header, tensors if shared is None else None)
            reply = await self._over_http(agent_url, gpulet_id, body, timeout_s)
            answered = True
            return reply
        except GpuletError as exc:
            # Any answer means the batch was read or never will be; without one (a deadline, a
            # dropped connection) a worker may still read it, so its slot is not reused.
            answered = not isinstance(exc, (DeadlinePassed, BackendFailed))
            raise
        finally:
            if shared is not None:
                self._slots.release(shared, answered=answered)

    async def _over_http(
        self, agent_url: str, gpulet_id: str, body: bytes, timeout_s: float
    ) -> frames.Frame:
        url = f"{agent_url}/v1/gpulets/{gpulet_id}/run"
        try:
            async with (
                asyncio.timeout(timeout_s),
                self.session.post(url, data=body) as response,
            ):
                payload = await response.read()
                if response.status != 200:
                    raise _error_from(response.status, payload, agent_url)
                return frames.decode(payload)
        except TimeoutError as exc:
            raise DeadlinePassed(
                f"no answer from gpulet {gpulet_id} within the deadline", gpulet=gpulet_id
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(
                f"agent at {agent_url} is unreachable: {exc.os_error}",
                retry_after_s=self.retry_after_s,
            ) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise BackendFailed(f"agent at {agent_url} dropped the batch: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise Unavailable(
                f"agent at {agent_url} failed: {exc}", retry_after_s=self.retry_after_s
            ) from exc
        except frames.FrameError as exc:
            raise BackendFailed(f"agent at {agent_url} sent a bad frame: {exc}") from exc

    async def set_gpulets(
        self,
        agent_url: str,
        version: int,
        gpulets: Sequence[GpuletSpec],
        retiring: Sequence[str] = (),
    ) -> dict[str, Any]:
        body = orjson.dumps(
            {
                "version": version,
                "gpulets": [g.to_json() for g in gpulets],
                "retiring": list(retiring),
            }
        )
        return await self._control("PUT", f"{agent_url}/v1/gpulets", body)

    async def gpulets(self, agent_url: str) -> dict[str, Any]:
        return await self._control("GET", f"{agent_url}/v1/gpulets", None)

    async def prepare_models(
        self, agent_url: str, models: Sequence[str], timeout_s: float
    ) -> dict[str, Any]:
        """Ask a CPU agent to build and profile `models` (it may measure for a while)."""
        body = orjson.dumps({"models": list(models)})
        return await self._control("POST", f"{agent_url}/v1/models", body, timeout_s)

    async def _control(
        self, method: str, url: str, body: bytes | None, timeout_s: float = CONTROL_TIMEOUT_S
    ) -> dict[str, Any]:
        try:
            async with (
                asyncio.timeout(timeout_s),
                self.session.request(method, url, data=body) as response,
            ):
                payload = await response.read()
                if response.status >= 300:
                    raise _error_from(response.status, payload, url)
                result: dict[str, Any] = orjson.loads(payload)
                return result
        except TimeoutError:
            raise Unavailable(f"agent call {method} {url}: no answer within {timeout_s:g}s",
                              retry_after_s=self.retry_after_s) from None  # fmt: skip
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise Unavailable(f"agent call {method} {url} failed: {exc!r}",
                              retry_after_s=self.retry_after_s) from exc  # fmt: skip


def _error_from(status: int, payload: bytes, where: str) -> GpuletError:
    try:
        error = orjson.loads(payload)["error"]
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        return from_code(str(error["code"]), str(error["message"]), **details)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return BackendFailed(f"agent at {where} answered {status} without an error body")
