"""The only module that knows Redis keys: agents, gpulets, placement, models, device profiles.

Key schema, all under one configurable prefix P:
    P agent:{agent_id}      JSON AgentInfo, expires unless the agent's heartbeat renews it
    P gpulets:{agent_id}    JSON list of GpuletStatus, same TTL as the agent
    P placement             hash: version (only ever grows, HINCRBY in MULTI), body (JSON)
    P models                hash: model name -> JSON signature
    P profile:{key}         hash: profile (JSON DeviceProfile), meta (JSON: machine facts, each
                            model's fingerprint and when it was measured); key e.g. "cpu:<machine>"
Nothing on a request's hot path reads from here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.cluster import AgentInfo, GpuletStatus
from common.errors import Unavailable
from common.models import ModelSpec
from common.placement import Placement

P = ParamSpec("P")
R = TypeVar("R")


def _redis_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Translate redis-py's failures into our Unavailable (503, Retry-After), here and only here."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"state store (Redis) unreachable: {exc}", retry_after_s=2.0) from exc

    return wrapper


class Store:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str) -> Store:
        return cls(aioredis.Redis.from_url(url, socket_connect_timeout=2.0), prefix)

    async def close(self) -> None:
        await self.client.aclose()

    @_redis_errors
    async def ping(self) -> bool:
        return bool(await self.client.ping())

    # keys ---------------------------------------------------------------------------------
    def _agent_key(self, agent_id: str) -> str:
        return f"{self.prefix}agent:{agent_id}"

    def _gpulets_key(self, agent_id: str) -> str:
        return f"{self.prefix}gpulets:{agent_id}"

    @property
    def _placement_key(self) -> str:
        return f"{self.prefix}placement"

    @property
    def _models_key(self) -> str:
        return f"{self.prefix}models"

    def _profile_key(self, key: str) -> str:
        return f"{self.prefix}profile:{key}"

    # agents -------------------------------------------------------------------------------
    @_redis_errors
    async def heartbeat(
        self, agent: AgentInfo, gpulets: Iterable[GpuletStatus], ttl_s: float
    ) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._agent_key(agent.agent_id), orjson.dumps(agent.to_json()), px=ttl_ms)
            pipe.set(
                self._gpulets_key(agent.agent_id),
                orjson.dumps([g.to_json() for g in gpulets]),
                px=ttl_ms,
            )
            await pipe.execute()

    @_redis_errors
    async def remove_agent(self, agent_id: str) -> None:
        await self.client.delete(self._agent_key(agent_id), self._gpulets_key(agent_id))

    @_redis_errors
    async def agents(self) -> list[AgentInfo]:
        keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}agent:*", count=500)]
        if not keys:
            return []
        values = await self.client.mget(keys)
        found = [AgentInfo.from_json(orjson.loads(v)) for v in values if v is not None]
        return sorted(found, key=lambda a: a.agent_id)

    @_redis_errors
    async def gpulet_statuses(self, agent_ids: Iterable[str]) -> dict[str, list[GpuletStatus]]:
        ids = list(agent_ids)
        if not ids:
            return {}
        values = await self.client.mget([self._gpulets_key(a) for a in ids])
        return {
            agent_id: [GpuletStatus.from_json(g) for g in orjson.loads(v)]
            for agent_id, v in zip(ids, values, strict=True)
            if v is not None
        }

    # placement ----------------------------------------------------------------------------
    @_redis_errors
    async def placement(self) -> Placement | None:
        version, body = await self.client.hmget(self._placement_key, ["version", "body"])
        if version is None or body is None:
            return None
        return Placement.from_json({**orjson.loads(body), "version": int(version)})

    @_redis_errors
    async def write_placement(self, proposal: Placement) -> Placement:
        """Store `proposal` as the next version; one MULTI, so concurrent writers never clash."""
        body = orjson.dumps({k: v for k, v in proposal.to_json().items() if k != "version"})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(self._placement_key, "version", 1)
            pipe.hset(self._placement_key, "body", body)
            version, _ = await pipe.execute()
        return Placement(
            version=int(version),
            gpulets=proposal.gpulets,
            explanation=proposal.explanation,
            unplaced=proposal.unplaced,
        )

    # models -------------------------------------------------------------------------------
    @_redis_errors
    async def put_models(self, specs: Iterable[ModelSpec]) -> None:
        mapping = {spec.name: orjson.dumps(_spec_json(spec)) for spec in specs}
        if mapping:
            await self.client.hset(self._models_key, mapping=mapping)  # type: ignore[arg-type]

    # measured device profiles -------------------------------------------------------------
    @_redis_errors
    async def put_profile(
        self, key: str, profile_json: dict[str, Any], meta: dict[str, Any]
    ) -> None:
        """Store a profile and its meta in one HSET, so readers never see one without the other."""
        mapping = {"profile": orjson.dumps(profile_json), "meta": orjson.dumps(meta)}
        await self.client.hset(self._profile_key(key), mapping=mapping)  # type: ignore[arg-type]

    @_redis_errors
    async def profile(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(profile JSON, meta) stored under `key`, or None if there is none."""
        body, meta = await self.client.hmget(self._profile_key(key), ["profile", "meta"])
        if body is None or meta is None:
            return None
        return orjson.loads(body), orjson.loads(meta)

    # housekeeping -------------------------------------------------------------------------
    @_redis_errors
    async def keys(self) -> list[str]:
        found = [
            k.decode() if isinstance(k, bytes) else str(k)
            async for k in self.client.scan_iter(match=f"{self.prefix}*", count=500)
        ]
        return sorted(found)

    @_redis_errors
    async def purge(self) -> int:
        """Delete every key under our prefix (never FLUSHALL: the server may be shared)."""
        keys = await self.keys()
        if keys:
            await self.client.delete(*keys)
        return len(keys)


def _spec_json(spec: ModelSpec) -> dict[str, Any]:
    def tensors(ts: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]

    return {
        "name": spec.name,
        "inputs": tensors(spec.inputs),
        "outputs": tensors(spec.outputs),
        "default_slo_ms": spec.default_slo_ms,
    }
