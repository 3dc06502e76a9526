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
from common.store import FencedOut, Store

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


async def test_heartbeat_says_when_the_agent_was_not_registered(store: Store) -> None:
    assert await store.heartbeat(agent("a1"), [], ttl_s=3.0) is True
    assert await store.heartbeat(agent("a1"), [], ttl_s=3.0) is False
    await store.purge()  # Redis restarted empty
    assert await store.heartbeat(agent("a1"), [], ttl_s=3.0) is True


async def test_the_lease_has_one_holder_until_released_or_expired(store: Store) -> None:
    assert await store.acquire_lease("r1", ttl_s=0.3)
    assert not await store.acquire_lease("r2", ttl_s=0.3)
    assert await store.acquire_lease("r1", ttl_s=0.3)  # renewed
    assert await store.lease_holder() == "r1"
    await store.release_lease("r2")  # not its lease: nothing happens
    assert await store.lease_holder() == "r1"
    await store.release_lease("r1")
    assert await store.acquire_lease("r2", ttl_s=0.3)
    ttl_ms = await store.client.pttl(f"{store.prefix}lease")
    assert 0 < ttl_ms <= 300


async def test_placement_writes_are_fenced_by_lease_and_version(store: Store) -> None:
    spec = GpuletSpec("g1", "a1", "cpu0", (0,), (GpuletModel("noop"),))
    proposal = Placement(version=0, gpulets=(spec,))
    assert await store.acquire_lease("r1", ttl_s=5.0)
    with pytest.raises(FencedOut):
        await store.write_placement(proposal, {"by": "r2"}, holder="r2", expected_version=0)
    first = await store.write_placement(proposal, {"by": "r1"}, holder="r1", expected_version=0)
    assert first.version == 1
    with pytest.raises(FencedOut):  # planned from version 0: someone wrote since
        await store.write_placement(proposal, {"by": "r1"}, holder="r1", expected_version=0)
    assert await store.placement_plan() == (1, {"by": "r1"})


async def test_a_placement_is_written_back_only_where_it_was_lost(store: Store) -> None:
    spec = GpuletSpec("g1", "a1", "cpu0", (0,), (GpuletModel("noop"),))
    assert await store.acquire_lease("r1", ttl_s=5.0)
    for _ in range(3):
        written = await store.write_placement(Placement(0, (spec,)), {"v": 1}, holder="r1")
    assert written.version == 3
    assert not await store.restore_placement(written, {"v": 1}, holder="r1")  # still there
    await store.client.delete(f"{store.prefix}placement")  # Redis restarted empty
    assert not await store.restore_placement(written, {"v": 1}, holder="r2")  # not the holder
    assert await store.restore_placement(written, {"v": 1}, holder="r1")
    assert await store.placement() == written
    assert await store.placement_plan() == (3, {"v": 1})
    # The next write goes on from the version written back.
    following = await store.write_placement(Placement(0, (spec,)), None, holder="r1",
                                            expected_version=3)  # fmt: skip
    assert following.version == 4


async def test_routers_register_with_a_ttl(store: Store) -> None:
    await store.register_router("r1", {"url": "http://a"}, ttl_s=5.0)
    await store.register_router("r2", {"url": "http://b"}, ttl_s=0.2)
    assert set(await store.routers()) == {"r1", "r2"}
    await store.remove_router("r1")
    assert await store.routers() == {"r2": {"url": "http://b"}}
