"""The Redis store against a real server, under a key prefix of its own."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.cluster import AgentInfo, DeviceInfo, GpuletStatus
from common.errors import Unavailable
from common.models import CATALOG
from common.placement import GpuletModel, GpuletSpec, Placement
from common.procs import free_port
from common.store import Store

pytestmark = pytest.mark.timeout(30)


def agent(agent_id: str) -> AgentInfo:
    device = DeviceInfo("cpu0", "cpu", (0, 1))
    return AgentInfo(agent_id, f"http://127.0.0.1/{agent_id}", "host", 1, (device,), time.time())


def status(gpulet_id: str) -> GpuletStatus:
    return GpuletStatus(gpulet_id, "ready", ("noop",), (0,), 123, 0, 0)


async def test_heartbeat_registers_agent_with_ttl_and_remove_deletes_it(store: Store) -> None:
    await store.heartbeat(agent("a1"), [status("g1")], ttl_s=3.0)
    await store.heartbeat(agent("a2"), [], ttl_s=3.0)
    assert [a.agent_id for a in await store.agents()] == ["a1", "a2"]
    statuses = await store.gpulet_statuses(["a1", "a2", "missing"])
    assert statuses == {"a1": [status("g1")], "a2": []}
    ttl_ms = await store.client.pttl(f"{store.prefix}agent:a1")
    assert 0 < ttl_ms <= 3000
    await store.remove_agent("a1")
    assert [a.agent_id for a in await store.agents()] == ["a2"]


async def test_placement_versions_only_grow_even_with_concurrent_writers(store: Store) -> None:
    assert await store.placement() is None
    spec = GpuletSpec("g1", "a1", "cpu0", (0,), (GpuletModel("noop"),))
    first = await store.write_placement(Placement(version=0, gpulets=(spec,)))
    assert first.version == 1
    written = await asyncio.gather(
        *(store.write_placement(Placement(version=0, gpulets=(spec,))) for _ in range(10))
    )
    assert sorted(p.version for p in written) == list(range(2, 12))
    stored = await store.placement()
    assert stored is not None and stored.version == 11 and stored.gpulets == (spec,)


async def test_purge_deletes_only_our_prefix(store: Store, redis_url: str) -> None:
    other = Store.from_url(redis_url, store.prefix + "other-")
    neighbour = Store.from_url(redis_url, "gpulet-neighbour-" + store.prefix)
    try:
        await store.put_models(CATALOG.values())
        await neighbour.put_models(CATALOG.values())
        assert await store.keys() == [f"{store.prefix}models"]
        assert await store.purge() == 1
        assert await neighbour.keys() == [f"{neighbour.prefix}models"]
    finally:
        await neighbour.purge()
        await other.close()
        await neighbour.close()


async def test_an_unreachable_redis_is_unavailable_not_a_crash() -> None:
    dead = Store.from_url(f"redis://127.0.0.1:{free_port()}/0", "gpulet-test-dead:")
    try:
        with pytest.raises(Unavailable, match="Redis") as info:
            await dead.agents()
        assert info.value.status == 503 and info.value.retry_after_s
    finally:
        await dead.close()
