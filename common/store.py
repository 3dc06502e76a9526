"""The only module that knows Redis keys: agents, gpulets, placement, models, device profiles.

Key schema, all under one configurable prefix P:
    P agent:{agent_id}      JSON AgentInfo, expires unless the agent's heartbeat renews it
    P gpulets:{agent_id}    JSON list of GpuletStatus, same TTL as the agent
    P placement             hash: version (grows by one per write), body (JSON), plan (JSON:
                            what the router planned it from, so another router can adopt it)
    P models                hash: model name -> JSON signature
    P model_files           hash: served name -> JSON of a repository model's file (sha256, size,
                            path in the repository, signature) and the router URL serving it
    P profile:{key}         hash: profile (JSON DeviceProfile), meta (JSON: machine facts, each
                            model's fingerprint and when it was measured); key e.g. "cpu:<machine>"
    P lease                 the id of the router that plans and reconciles (expires unless it
                            renews it); placement writes are fenced by it and by the version
    P router:{router_id}    JSON: a live router (rates, gpu-lets in use), expires unless renewed
Nothing on a request's hot path reads from here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
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

# Lua, so that each check-and-write is one atomic step on the server.
# KEYS: placement, lease. ARGV: holder, expected version, body, plan. -> the new version, or
# -1 (the lease is not the holder's) / -2 (another placement was written since it read one).
_WRITE_PLACEMENT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[2] ~= '' and version ~= tonumber(ARGV[2]) then return -2 end
version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'body', ARGV[3], 'plan', ARGV[4])
return version
"""
# KEYS: placement, lease. ARGV: holder, version, body, plan. Writes the placement back at its
# own version when the store has an older one or none (it restarted empty). -> 1 written, 0 not.
_RESTORE_PLACEMENT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'body', ARGV[3], 'plan', ARGV[4])
return 1
"""
# KEYS: lease. ARGV: holder, ttl ms. Take the lease when free, renew it when ours. -> 1 held.
_ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class FencedOut(Exception):
    """A placement write refused: the writer no longer holds the lease, or the placement it
    planned from was replaced meanwhile. It must read the store again, not retry blindly."""


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
        self._write_placement = client.register_script(_WRITE_PLACEMENT)
        self._restore_placement = client.register_script(_RESTORE_PLACEMENT)
        self._acquire_lease = client.register_script(_ACQUIRE_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)

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

    @property
    def _model_files_key(self) -> str:
        return f"{self.prefix}model_files"

    def _profile_key(self, key: str) -> str:
        return f"{self.prefix}profile:{key}"

    @property
    def _lease_key(self) -> str:
        return f"{self.prefix}lease"

    def _router_key(self, router_id: str) -> str:
        return f"{self.prefix}router:{router_id}"

    # agents -------------------------------------------------------------------------------
    @_redis_errors
    async def heartbeat(
        self, agent: AgentInfo, gpulets: Iterable[GpuletStatus], ttl_s: float
    ) -> bool:
        """Renew the agent's registration; True when it was not registered (first beat, its
        key expired, or Redis restarted empty): what it published besides may be gone too."""
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self.client.pipeline(transaction=True) as pipe:
            key = self._agent_key(agent.agent_id)
            pipe.set(key, orjson.dumps(agent.to_json()), px=ttl_ms, get=True)
            pipe.set(
                self._gpulets_key(agent.agent_id),
                orjson.dumps([g.to_json() for g in gpulets]),
                px=ttl_ms,
            )
            previous, _ = await pipe.execute()
        return previous is None

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
    async def placement_plan(self) -> tuple[int, dict[str, Any]] | None:
        """The stored placement's version and what it was planned from (None: nothing, or a
        placement written without it)."""
        version, plan = await self.client.hmget(self._placement_key, ["version", "plan"])
        if version is None or not plan:
            return None
        found = orjson.loads(plan)
        return (int(version), found) if found else None

    @_redis_errors
    async def write_placement(
        self,
        proposal: Placement,
        plan: dict[str, Any] | None = None,
        *,
        holder: str | None = None,
        expected_version: int | None = None,
    ) -> Placement:
        """Store `proposal` (and the `plan` behind it) as the next version, atomically.

        Fenced: with `holder`, only while that router holds the lease; with `expected_version`,
        only if the stored version is still that one. Otherwise FencedOut."""
        written = await self._write_placement(
            keys=[self._placement_key, self._lease_key],
            args=[holder or "", "" if expected_version is None else expected_version,
                  _placement_body(proposal), orjson.dumps(plan)],
        )  # fmt: skip
        if int(written) < 0:
            why = "the lease is not held by " if int(written) == -1 else "a newer placement than "
            raise FencedOut(f"placement not written: {why}{holder or expected_version}")
        return replace(proposal, version=int(written))

    @_redis_errors
    async def restore_placement(
        self, placement: Placement, plan: dict[str, Any] | None, *, holder: str | None = None
    ) -> bool:
        """Write `placement` back at its own version if the store lost it (restarted empty) or
        holds an older one; with `holder`, only while it holds the lease. True when written."""
        written = await self._restore_placement(
            keys=[self._placement_key, self._lease_key],
            args=[holder or "", placement.version, _placement_body(placement),
                  orjson.dumps(plan)],
        )  # fmt: skip
        return bool(int(written))

    # the planner's lease and the routers -------------------------------------------------
    @_redis_errors
    async def acquire_lease(self, holder: str, ttl_s: float) -> bool:
        """Take the lease if nobody holds it, renew it if `holder` does; True when held."""
        ttl_ms = max(1, int(ttl_s * 1000))
        return bool(int(await self._acquire_lease(keys=[self._lease_key], args=[holder, ttl_ms])))

    @_redis_errors
    async def release_lease(self, holder: str) -> None:
        await self._release_lease(keys=[self._lease_key], args=[holder])

    @_redis_errors
    async def lease_holder(self) -> str | None:
        holder = await self.client.get(self._lease_key)
        return holder.decode() if isinstance(holder, bytes) else holder

    @_redis_errors
    async def register_router(self, router_id: str, info: dict[str, Any], ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        await self.client.set(self._router_key(router_id), orjson.dumps(info), px=ttl_ms)

    @_redis_errors
    async def remove_router(self, router_id: str) -> None:
        await self.client.delete(self._router_key(router_id))

    @_redis_errors
    async def routers(self) -> dict[str, dict[str, Any]]:
        """Every live router's registration, by id."""
        keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}router:*", count=500)]
        if not keys:
            return {}
        values = await self.client.mget(keys)
        found = {}
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                name = key.decode() if isinstance(key, bytes) else str(key)
                found[name.removeprefix(f"{self.prefix}router:")] = orjson.loads(value)
        return found

    # models -------------------------------------------------------------------------------
    @_redis_errors
    async def put_models(self, specs: Iterable[ModelSpec]) -> None:
        mapping = {spec.name: orjson.dumps(_spec_json(spec)) for spec in specs}
        if mapping:
            await self.client.hset(self._models_key, mapping=mapping)  # type: ignore[arg-type]

    @_redis_errors
    async def put_model_files(self, records: Mapping[str, dict[str, Any]]) -> None:
        """Publish repository models' files (served name -> record) for agents to fetch."""
        mapping = {name: orjson.dumps(record) for name, record in records.items()}
        if mapping:
            await self.client.hset(self._model_files_key, mapping=mapping)  # type: ignore[arg-type]

    @_redis_errors
    async def model_file(self, name: str) -> dict[str, Any] | None:
        value = await self.client.hget(self._model_files_key, name)
        if value is None:
            return None
        record: dict[str, Any] = orjson.loads(value)
        return record

    @_redis_errors
    async def remove_model_files(self, names: Iterable[str]) -> None:
        """Forget the published files of `names` (served from the zoo again)."""
        names = list(names)
        if names:
            await self.client.hdel(self._model_files_key, *names)

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


def _placement_body(placement: Placement) -> bytes:
    return orjson.dumps({k: v for k, v in placement.to_json().items() if k != "version"})


def _spec_json(spec: ModelSpec) -> dict[str, Any]:
    def tensors(ts: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]

    return {
        "name": spec.name,
        "inputs": tensors(spec.inputs),
        "outputs": tensors(spec.outputs),
        "default_slo_ms": spec.default_slo_ms,
    }
