"""One log line per request failure, until failures come in floods: then one line a second per
code, with how many there were. Under overload thousands of requests a second are refused, and a
line each (formatted, written, piped through `gpulet up`) took CPU from the requests served."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import GpuletError

# Per code, at most this many lines a second name their request; the rest are counted.
LINES_PER_S = 5


@dataclass
class FailureLog:
    logger: logging.Logger
    clock: Callable[[], float] = time.monotonic
    _window_s: dict[str, float] = field(default_factory=dict)
    _lines: dict[str, int] = field(default_factory=dict)
    _quiet: dict[str, int] = field(default_factory=dict)

    def failed(self, request_id: str, error: GpuletError) -> None:
        """Log a 5xx answer (4xx are the client's own: not logged)."""
        if error.status < 500:
            return
        code, now = error.code, self.clock()
        if now - self._window_s.get(code, float("-inf")) >= 1.0:
            quiet = self._quiet.pop(code, 0)
            if quiet:
                self.logger.warning("%d more %s answers in the last second (not logged one by "
                                    "one)", quiet, code)  # fmt: skip
            self._window_s[code], self._lines[code] = now, 0
        if self._lines[code] < LINES_PER_S:
            self._lines[code] += 1
            self.logger.warning("request_id=%s %s: %s", request_id, code, error.message)
        else:
            self._quiet[code] = self._quiet.get(code, 0) + 1
