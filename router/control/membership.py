"""Routers sharing one cluster: each registers itself in Redis (a key with a TTL, renewed), and
one of them holds the planner's lease, so that exactly one plans and tells the agents.

Every RENEW_INTERVAL_S a router (1) publishes its registration: its URL, its measured arrival
rates (the lease holder plans for the sum over routers) and the gpu-lets it still has work for
(the holder keeps a replaced gpu-let until no router does); (2) takes the lease if it is free,
or renews it if it holds it; (3) reads the other routers' registrations. A holder that dies
stops renewing: its lease expires after LEASE_TTL_S and the next router to ask takes it, within
LEASE_TTL_S + RENEW_INTERVAL_S. Placement writes are fenced by the lease and by the placement
version (store.py), so a holder that stalled past its lease cannot overwrite its successor.

Capacity is shared by count: each of N live routers admits against 1/N of every gpu-let
(`capacity_share`), which is sound when the load balancer in front spreads requests evenly
(a Kubernetes Service, round-robin DNS, clients rotating over the routers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import Unavailable
from common.outage import OutageLog
from common.store import Store

logger = logging.getLogger(__name__)

LEASE_TTL_S = 2.0  # a dead holder's lease is free this long after its last renewal
RENEW_INTERVAL_S = 0.5  # renew, register and try for the lease this often (TTL / 4)
REGISTRATION_TTL_S = 2.0  # a router silent this long no longer counts


@dataclass(frozen=True)
class Published:
    """What this router tells the others each interval."""

    rates_rps: Mapping[str, float] = field(default_factory=dict)  # smoothed, per model
    recent_rps: Mapping[str, float] = field(default_factory=dict)  # over the last 2 s
    in_use: frozenset[str] = frozenset()  # gpu-lets with queued or draining work here


class Membership:
    def __init__(
        self,
        store: Store,
        router_id: str,
        url: str,
        *,
        publish: Callable[[], Published] = Published,
        clock: Callable[[], float] = time.monotonic,
        outage: OutageLog | None = None,
    ) -> None:
        self.store = store
        self.router_id = router_id
        self.url = url
        self.publish = publish
        self.clock = clock
        self.peers: dict[str, dict[str, Any]] = {}  # the other live routers' registrations
        self.holder: str | None = None  # who held the lease at the last look
        self.on_lead: Callable[[], None] | None = None  # called when this router takes the lease
        self._held_until_s = 0.0
        # Shared with the control loop: one WARNING per Redis outage for the whole router.
        self.outage = outage or OutageLog(logger, f"router={router_id} (Redis)")

    @property
    def is_leader(self) -> bool:
        """Holds the lease now: renewed less than LEASE_TTL_S ago (measured from before the
        renewal was sent, so this view lapses no later than the key in Redis)."""
        return self.clock() < self._held_until_s

    @property
    def routers(self) -> int:
        return 1 + len(self.peers)

    @property
    def capacity_share(self) -> float:
        """The share of each gpu-let's capacity this router admits against: 1/N."""
        return 1.0 / self.routers

    def peer_in_use(self) -> set[str]:
        return {str(g) for info in self.peers.values() for g in info.get("in_use", ())}

    def peer_rates(self) -> tuple[dict[str, float], dict[str, float]]:
        """The other routers' (smoothed, recent) arrival rates, summed per model."""
        rates: dict[str, float] = {}
        recent: dict[str, float] = {}
        for info in self.peers.values():
            for model, rps in info.get("rates_rps", {}).items():
                rates[model] = rates.get(model, 0.0) + float(rps)
            for model, rps in info.get("recent_rps", {}).items():
                recent[model] = recent.get(model, 0.0) + float(rps)
        return rates, recent

    async def step(self) -> None:
        published = self.publish()
        info = {
            "url": self.url,
            "rates_rps": dict(published.rates_rps),
            "recent_rps": dict(published.recent_rps),
            "in_use": sorted(published.in_use),
        }
        await self.store.register_router(self.router_id, info, REGISTRATION_TTL_S)
        asked_s = self.clock()
        was_leader = self.is_leader
        if await self.store.acquire_lease(self.router_id, LEASE_TTL_S):
            self._held_until_s = asked_s + LEASE_TTL_S
            self.holder = self.router_id
        else:
            self._held_until_s = 0.0
            self.holder = await self.store.lease_holder()
        routers = await self.store.routers()
        self.peers = {k: v for k, v in routers.items() if k != self.router_id}
        if self.is_leader and not was_leader:
            logger.info("router=%s holds the planner lease (%d router(s))", self.router_id,
                        self.routers)  # fmt: skip
            if self.on_lead is not None:
                self.on_lead()
        elif was_leader and not self.is_leader:
            logger.warning("router=%s lost the planner lease to %s", self.router_id, self.holder)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.step()
                self.outage.ok()
            except Unavailable as exc:
                self.outage.failed(exc.message)
            except Exception:
                logger.exception("membership step failed router=%s", self.router_id)
            await asyncio.sleep(RENEW_INTERVAL_S)

    async def leave(self) -> None:
        """Give the lease up and deregister (a clean stop): the next holder need not wait out
        the lease."""
        self._held_until_s = 0.0
        with contextlib.suppress(Unavailable):
            await self.store.release_lease(self.router_id)
            await self.store.remove_router(self.router_id)
