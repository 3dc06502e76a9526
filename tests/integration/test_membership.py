"""Routers sharing a cluster, on a real Redis: one holds the planner lease, the others count
each other and sum their rates; a holder that stops renewing is replaced within the lease."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.store import Store
from router.control.membership import LEASE_TTL_S, RENEW_INTERVAL_S, Membership, Published

pytestmark = pytest.mark.timeout(30)


async def test_one_leader_shares_and_rates(store: Store) -> None:
    one = Membership(store, "r1", "http://one",
                     publish=lambda: Published({"noop": 10.0}, {"noop": 12.0}, frozenset({"g1"})))
    two = Membership(store, "r2", "http://two",
                     publish=lambda: Published({"noop": 5.0}, {}, frozenset()))  # fmt: skip
    await one.step()
    await two.step()
    await one.step()  # sees r2 now
    assert one.is_leader and not two.is_leader
    assert two.holder == "r1"
    assert one.routers == two.routers == 2
    assert one.capacity_share == two.capacity_share == 0.5
    assert two.peer_rates() == ({"noop": 10.0}, {"noop": 12.0})
    assert two.peer_in_use() == {"g1"} and one.peer_in_use() == set()
    await one.leave()
    await two.step()  # a clean stop frees the lease at once
    assert two.is_leader and two.routers == 1
    await two.leave()


async def test_the_lease_of_a_silent_holder_is_taken_over_within_its_ttl(store: Store) -> None:
    one = Membership(store, "r1", "http://one")
    two = Membership(store, "r2", "http://two")
    took: list[float] = []
    leading = asyncio.Event()

    def on_lead() -> None:
        took.append(time.monotonic())
        leading.set()

    two.on_lead = on_lead
    await one.step()
    assert one.is_leader
    silent_at = time.monotonic()  # r1 stops renewing (as if SIGKILLed)
    task = asyncio.create_task(two.run_forever())
    try:
        async with asyncio.timeout(LEASE_TTL_S + 3 * RENEW_INTERVAL_S):
            await leading.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert LEASE_TTL_S * 0.9 <= took[0] - silent_at <= LEASE_TTL_S + 2 * RENEW_INTERVAL_S
    # Never two leaders: the silent holder's own view lapsed no later than its key did.
    assert not one.is_leader
    await two.leave()
    await store.remove_router("r1")
