"""What the dispatcher reports as it works: one call per answered request, one per finished batch.

An interface only, so the hot path imports no metrics library: the router's metrics
(router/http/metrics.py) implement it, and the default `NoObserver` does nothing. Calls run on the
event loop, inline in the request path, so an implementation must be cheap and must not raise.
Times are in ms, monotonic, from the dispatcher's clock.
"""

from __future__ import annotations

from typing import Protocol

OK = "ok"  # the outcome code of a request answered with a result; errors carry their own code


class DispatchObserver(Protocol):
    def request_done(
        self, model: str, code: str, gpulet_id: str | None, latency_ms: float, slo_ms: float,
        now_ms: float,
    ) -> None:  # fmt: skip
        """A request was answered: `code` is OK or the error's code; `gpulet_id` the gpu-let
        it ran on (None when refused before one was chosen); `latency_ms` from its arrival."""

    def batch_done(
        self, gpulet_id: str, model: str, items: int, busy_ms: float, now_ms: float
    ) -> None:
        """A batch of `items` came back (or failed). `busy_ms`: time the gpu-let had at least
        one batch in flight since the previous report, so the sum over reports is its busy
        time however batches overlap."""


class NoObserver:
    def request_done(
        self, model: str, code: str, gpulet_id: str | None, latency_ms: float, slo_ms: float,
        now_ms: float,
    ) -> None:  # fmt: skip
        pass

    def batch_done(
        self, gpulet_id: str, model: str, items: int, busy_ms: float, now_ms: float
    ) -> None:
        pass
