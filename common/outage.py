"""One log line per outage: a loop that keeps failing on the same dependency (Redis gone) says
so once, as a WARNING, and once more when it is back, with how long it lasted; the failures in
between go to DEBUG. A traceback per heartbeat would bury everything else in the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class OutageLog:
    def __init__(
        self, logger: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.what = what  # e.g. "agent=a1 heartbeat"
        self.clock = clock
        self.since_s: float | None = None  # when the current outage began
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since_s is not None

    def failed(self, reason: str) -> bool:
        """Record a failure; True when it starts an outage (and was logged as a WARNING)."""
        self.failures += 1
        if self.since_s is not None:
            self.logger.debug("%s still failing: %s", self.what, reason)
            return False
        self.since_s = self.clock()
        self.logger.warning("%s failing: %s; retrying quietly until it recovers", self.what,
                            reason)  # fmt: skip
        return True

    def ok(self) -> float | None:
        """Record a success; the outage's length in seconds when it ends one, else None."""
        if self.since_s is None:
            return None
        lasted_s = self.clock() - self.since_s
        self.logger.info("%s recovered after %.1fs (%d failures)", self.what, lasted_s,
                         self.failures)  # fmt: skip
        self.since_s, self.failures = None, 0
        return lasted_s
