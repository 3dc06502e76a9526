"""`gpulet up`'s supervision of what it started (router, agent, the Redis it started): a child
that dies is started again after a back-off, and each restart is one log line.

Back-off: RESTART_FIRST_S after the first death, doubling with each death that follows within
STABLE_S of its start, up to RESTART_MAX_S; a child that ran STABLE_S or longer starts over at
the first step. Nothing gives up: a child that keeps dying keeps being retried, RESTART_MAX_S
apart, and says why each time, until Ctrl-C (which stops everything, as before).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from common.redis_server import RedisHandle, RedisStartError

logger = logging.getLogger(__name__)

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 60.0  # a child that ran this long is healthy: its next death restarts it at once


class Restartable(Protocol):
    name: str

    def alive(self) -> bool: ...

    def exit_code(self) -> int | None: ...

    def pid(self) -> int | None: ...

    def restart(self) -> None:
        """Start it again; raises when it cannot be (the supervisor retries later)."""
        ...


@dataclass
class _Watch:
    child: Restartable
    started_s: float
    deaths: int = 0  # in a row, each within STABLE_S of its start
    restarts: int = 0
    due_s: float | None = None  # when to restart it, once found dead
    died_after_s: float = 0.0


class RedisChild:
    """The Redis server `gpulet up` started, as a child to supervise: restarted on the same
    port, so the router's and the agent's URL stays right."""

    name = "redis"

    def __init__(self, handle: RedisHandle, cores: Sequence[int] = ()) -> None:
        self.handle = handle
        self.cores = tuple(cores)  # pinned to serving's cores, as `gpulet up` started it

    def alive(self) -> bool:
        return self.handle.process is not None and self.handle.process.poll() is None

    def exit_code(self) -> int | None:
        return None if self.handle.process is None else self.handle.process.returncode

    def pid(self) -> int | None:
        return None if self.handle.process is None else self.handle.process.pid

    def restart(self) -> None:
        self.handle.restart()
        if self.cores and self.handle.process is not None:
            os.sched_setaffinity(self.handle.process.pid, self.cores)


def redis_children(handle: RedisHandle, cores: Sequence[int] = ()) -> list[Restartable]:
    """The Redis to supervise: the one we started, none when it is the user's (a URL)."""
    return [RedisChild(handle, cores)] if handle.process is not None else []


class Supervisor:
    def __init__(
        self, children: Sequence[Restartable], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        now_s = clock()
        self._watches = [_Watch(c, now_s) for c in children]

    @property
    def restarts(self) -> dict[str, int]:
        return {w.child.name: w.restarts for w in self._watches}

    def check(self) -> None:
        """Notice dead children and restart those whose back-off has passed (call it often)."""
        now_s = self.clock()
        for watch in self._watches:
            if watch.child.alive():
                if now_s - watch.started_s >= STABLE_S:
                    watch.deaths = 0
                continue
            if watch.due_s is None:
                watch.died_after_s = now_s - watch.started_s
                watch.deaths = watch.deaths + 1 if watch.died_after_s < STABLE_S else 1
                watch.due_s = now_s + backoff_s(watch.deaths)
            if now_s >= watch.due_s:
                self._restart(watch, now_s)

    def _restart(self, watch: _Watch, now_s: float) -> None:
        child, code = watch.child, watch.child.exit_code()
        waited_s = backoff_s(watch.deaths)
        try:
            child.restart()
        except (OSError, RedisStartError) as exc:
            watch.deaths += 1
            watch.due_s = now_s + backoff_s(watch.deaths)
            logger.warning("%s exited (code %s); restart failed: %s; next try in %.1fs",
                           child.name, code, exc, backoff_s(watch.deaths))  # fmt: skip
            return
        watch.restarts += 1
        watch.started_s, watch.due_s = self.clock(), None
        logger.warning(
            "%s exited (code %s) after %.1fs; restarted pid=%s (restart #%d, after %.1fs back-off)",
            child.name, code, watch.died_after_s, child.pid(), watch.restarts, waited_s,
        )  # fmt: skip


def backoff_s(deaths: int) -> float:
    """RESTART_FIRST_S, doubling per death in a row, at most RESTART_MAX_S."""
    return float(min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** max(0, deaths - 1)))
