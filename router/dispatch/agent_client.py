"""The router's client for agents: run a batch, set desired gpulets, read gpulet state.

One pooled aiohttp session for all agents (httpx measured 4-10x slower at 8-64 concurrent
requests on this machine class: machine-notes section 6). aiohttp's exceptions are translated
into our error tree here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from common import frames
from common.errors import BackendFailed, DeadlinePassed, GpuletError, Unavailable, from_code
from common.placement import GpuletSpec

CONTROL_TIMEOUT_S = 5.0


class AgentClient:
    def __init__(self, connections: int, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
