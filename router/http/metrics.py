"""Prometheus metrics for `GET /metrics`: counts the dispatcher reports as it works, and gauges
read from the control loop, the queues and the rate monitor when scraped.

`DispatchMetrics` is the dispatcher's observer (router/dispatch/observer.py): plain counters
and histogram buckets bumped inline on the request path (under a microsecond a call: no locks,
no label lookups). `ClusterCollector` turns them, and the router's state, into metric
families at scrape time. Each app has its own registry (`metrics_registry`): tests run several
apps in one process, and the global registry would mix them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from router.control.control import Controller
from router.control.rates import RateMonitor
from router.control.replanning import planned_rates
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.observer import OK
from router.http.inflight import Door

# Latency buckets span the catalog's SLOs (5 ms .. 400 ms) times simulated time scales (x10)
# up to GPULET_MAX_DEADLINE_MS (60 s).
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Items per batch: powers of two up to GPULET_MAX_BATCH's default (64) and past it (a batch
# may hold several requests).
BATCH_BUCKETS_ITEMS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)

# Every family /metrics serves, with its help text (the README's table lists the same).
FAMILIES = {
    # per model, from the dispatcher's observer
    "gpulet_requests_total": "Requests that reached the dispatcher, by outcome code (ok or the "
    "error's code)",
    "gpulet_requests_within_slo_total": "Requests answered ok within their SLO",
    "gpulet_slo_attainment_ratio": "Requests answered ok within their SLO / all its requests, "
    "since the router started",
    "gpulet_request_latency_seconds": "Latency of requests answered ok, from arrival at the "
    "router to the answer",
    "gpulet_batch_size_items": "Items per batch sent to a gpu-let",
    # per model, read at scrape time
    "gpulet_queue_depth_requests": "Requests waiting in the router's gpu-let queues, not yet sent",
    "gpulet_measured_requests_per_second": "Arrival rate, smoothed (what re-planning follows)",
    "gpulet_planned_requests_per_second": "Rate the current placement is planned for",
    "gpulet_model_ready": "1 when the model has a ready gpu-let",
    # per gpu-let
    "gpulet_gpulet_busy_seconds_total": "Time the gpu-let had a batch in flight",
    "gpulet_gpulet_busy_ratio": "Share of wall time with a batch in flight, smoothed over about "
    "10 s (rate() of busy_seconds_total for other windows)",
    "gpulet_gpulet_served_requests_total": "Requests the gpu-let answered ok",
    "gpulet_gpulet_served_requests_per_second": "Requests the gpu-let answers ok per second, "
    "smoothed like the measured rate",
    "gpulet_gpulet_planned_requests_per_second": "Rate the placement plans the gpu-let to serve",
    "gpulet_gpulet_queued_items": "Items waiting in the gpu-let's queue",
    "gpulet_gpulet_inflight_items": "Items sent to the gpu-let and not yet answered",
    "gpulet_learned_latency_seconds": "What the dispatcher predicts for a batch of the model's "
    "planned size on the gpu-let, learned from its answers: part=latency (sent to an idle "
    "gpu-let, answered after), compute (the worker's time), hop (the rest of the round trip), "
    "per_batch (the fixed part of both)",
    "gpulet_learned_profile_factor": "Learned compute time / the profile's, at the planned batch "
    "size (absent without a profile)",
    # the cluster
    "gpulet_replans_total": "Placements written, by reason (agents, rise, fall)",
    "gpulet_placement_version": "Version of the placement the router works to",
    "gpulet_placement_switching": "1 while models move to a new placement's gpu-lets",
    "gpulet_agents_up": "Agents with a live heartbeat, as the control loop last read them",
    "gpulet_batches_sent_total": "Batches sent, by path: worker (its own socket on this host, "
    "GPULET_DIRECT_TO_WORKERS) or agent (HTTP), and by how their tensors went: shared_memory "
    "(/dev/shm on this host, GPULET_SHARED_MEMORY) or inline",
    # the router's own door (GPULET_ROUTER_BACKLOG_S)
    "gpulet_router_in_flight_requests": "Inference requests the router holds now, from arrival "
    "to answer",
    "gpulet_router_capacity_requests_per_second": "Requests the router's event loop completes "
    "per second of its CPU time, smoothed (0 before a measurement)",
    "gpulet_router_refused_total": "Inference requests answered 503 at the door because the "
    "router held as many as it clears in GPULET_ROUTER_BACKLOG_S",
}
LEARNED_PARTS = ("latency", "compute", "hop", "per_batch")
BUSY = "busy"  # the one key of a gpu-let's busy-time monitor
US_PER_MS = 1000  # busy time is counted in whole µs, so a RateMonitor can smooth it


@dataclass
class Buckets:
    """One histogram's state: a count per bucket (the last one past every bound) and the sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets are `le` (less than or equal).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((_le(bound), float(running)))
        return out


@dataclass
class GpuletTally:
    """What one gpu-let has done: busy time and requests served, totals and smoothed rates."""

    busy_ms: float = 0.0
    served: dict[str, int] = field(default_factory=dict)  # model -> requests answered ok
    served_rates: RateMonitor = field(default_factory=RateMonitor)  # model -> req/s
    busy_rate: RateMonitor = field(default_factory=RateMonitor)  # BUSY -> busy µs per s


class DispatchMetrics:
    """The dispatcher's observer: per model requests by code, SLO hits, latency and batch sizes;
    per gpu-let busy time and requests served."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (model, code) -> requests
        self.within_slo: dict[str, int] = {}  # model -> answered ok within its SLO
        self.latency_s: dict[str, Buckets] = {}  # model -> latency of answers ok
        self.batch_items: dict[str, Buckets] = {}  # model -> items per batch
        self.gpulets: dict[str, GpuletTally] = {}

    def request_done(
        self, model: str, code: str, gpulet_id: str | None, latency_ms: float, slo_ms: float,
        now_ms: float,
    ) -> None:  # fmt: skip
        key = (model, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if code != OK:
            return
        latency = self.latency_s.get(model)
        if latency is None:
            latency = self.latency_s[model] = Buckets(LATENCY_BUCKETS_S)
        latency.observe(latency_ms / 1000)
        if latency_ms <= slo_ms:
            self.within_slo[model] = self.within_slo.get(model, 0) + 1
        if gpulet_id is not None:
            tally = self._tally(gpulet_id)
            tally.served[model] = tally.served.get(model, 0) + 1
            tally.served_rates.record(model, now_ms)

    def batch_done(
        self, gpulet_id: str, model: str, items: int, busy_ms: float, now_ms: float
    ) -> None:
        sizes = self.batch_items.get(model)
        if sizes is None:
            sizes = self.batch_items[model] = Buckets(BATCH_BUCKETS_ITEMS)
        sizes.observe(items)
        tally = self._tally(gpulet_id)
        tally.busy_ms += busy_ms
        tally.busy_rate.record(BUSY, now_ms, round(busy_ms * US_PER_MS))

    def _tally(self, gpulet_id: str) -> GpuletTally:
        tally = self.gpulets.get(gpulet_id)
        if tally is None:
            tally = self.gpulets[gpulet_id] = GpuletTally()
        return tally

    def forget_gpulets_except(self, kept: set[str]) -> None:
        """Drop the tallies of gpu-lets gone, so re-plans do not grow the series without end."""
        for gpulet_id in set(self.gpulets) - kept:
            del self.gpulets[gpulet_id]

    def attainment(self) -> dict[str, float]:
        """Per model: requests answered ok within their SLO ÷ all its requests."""
        totals: dict[str, int] = {}
        for (model, _), count in self.requests.items():
            totals[model] = totals.get(model, 0) + count
        return {m: self.within_slo.get(m, 0) / n for m, n in totals.items() if n}


class ClusterCollector:
    """Every gpulet_* family, built at scrape time from the observer and the router's state.

    Runs on the event loop (the `/metrics` handler), so it reads a consistent state."""

    def __init__(
        self,
        observed: DispatchMetrics,
        controller: Controller,
        dispatcher: Dispatcher,
        arrivals: RateMonitor,
        clock: Callable[[], float],
        door: Door | None = None,
    ) -> None:
        self.observed = observed
        self.controller = controller
        self.dispatcher = dispatcher
        self.arrivals = arrivals
        self.clock = clock
        self.door = door

    def collect(self) -> Iterator[Metric]:
        now_ms = self.clock() * 1000
        self.observed.forget_gpulets_except(self.dispatcher.in_use())
        yield from self._requests()
        yield from self._models(now_ms)
        yield from self._gpulets(now_ms)
        yield from self._cluster()
        yield from self._door()

    def _requests(self) -> Iterator[Metric]:
        seen = self.observed
        requests = _family(CounterMetricFamily, "gpulet_requests_total", "model", "code")
        for (model, code), count in sorted(seen.requests.items()):
            requests.add_metric((model, code), count)
        within = _family(CounterMetricFamily, "gpulet_requests_within_slo_total", "model")
        for model, count in sorted(seen.within_slo.items()):
            within.add_metric((model,), count)
        attainment = _family(GaugeMetricFamily, "gpulet_slo_attainment_ratio", "model")
        for model, ratio in sorted(seen.attainment().items()):
            attainment.add_metric((model,), ratio)
        latency = _family(HistogramMetricFamily, "gpulet_request_latency_seconds", "model")
        for model, buckets in sorted(seen.latency_s.items()):
            latency.add_metric((model,), buckets.cumulative(), buckets.total)
        sizes = _family(HistogramMetricFamily, "gpulet_batch_size_items", "model")
        for model, buckets in sorted(seen.batch_items.items()):
            sizes.add_metric((model,), buckets.cumulative(), buckets.total)
        yield from (requests, within, attainment, latency, sizes)

    def _models(self, now_ms: float) -> Iterator[Metric]:
        models = self.controller.models
        depth = dict.fromkeys(models, 0.0)
        for queue in self.dispatcher.queues.values():
            for entry in queue.entries.values():
                depth[entry.pending.model] = depth.get(entry.pending.model, 0) + 1
        measured = self.arrivals.rates(now_ms)
        planned = planned_rates(self.controller.target)
        ready = self.controller.table.ready_models()
        per_model: dict[str, dict[str, float]] = {
            "gpulet_queue_depth_requests": depth,
            "gpulet_measured_requests_per_second": {m: measured.get(m, 0.0) for m in models},
            "gpulet_planned_requests_per_second": {m: planned.get(m, 0.0) for m in models},
            "gpulet_model_ready": {m: float(m in ready) for m in models},
        }
        for name, values in per_model.items():
            family = _family(GaugeMetricFamily, name, "model")
            for model, value in sorted(values.items()):
                family.add_metric((model,), value)
            yield family

    def _gpulets(self, now_ms: float) -> Iterator[Metric]:
        busy = _family(CounterMetricFamily, "gpulet_gpulet_busy_seconds_total", "gpulet")
        ratio = _family(GaugeMetricFamily, "gpulet_gpulet_busy_ratio", "gpulet")
        served = _family(CounterMetricFamily, "gpulet_gpulet_served_requests_total", "gpulet",
                         "model")  # fmt: skip
        served_rps = _family(GaugeMetricFamily, "gpulet_gpulet_served_requests_per_second",
                             "gpulet", "model")  # fmt: skip
        for gpulet_id, tally in sorted(self.observed.gpulets.items()):
            busy.add_metric((gpulet_id,), tally.busy_ms / 1000)
            busy_us_per_s = tally.busy_rate.rates(now_ms).get(BUSY, 0.0)
            ratio.add_metric((gpulet_id,), min(1.0, busy_us_per_s / (1000 * US_PER_MS)))
            rates = tally.served_rates.rates(now_ms)
            for model, count in sorted(tally.served.items()):
                served.add_metric((gpulet_id, model), count)
                served_rps.add_metric((gpulet_id, model), rates.get(model, 0.0))
        planned = _family(GaugeMetricFamily, "gpulet_gpulet_planned_requests_per_second",
                          "gpulet", "model")  # fmt: skip
        for spec in self.controller.target.gpulets:
            for served_model in spec.models:
                planned.add_metric((spec.gpulet_id, served_model.name), served_model.planned_rps)
        queued = _family(GaugeMetricFamily, "gpulet_gpulet_queued_items", "gpulet")
        in_flight = _family(GaugeMetricFamily, "gpulet_gpulet_inflight_items", "gpulet")
        learned = _family(GaugeMetricFamily, "gpulet_learned_latency_seconds", "gpulet", "model",
                          "part")  # fmt: skip
        factor = _family(GaugeMetricFamily, "gpulet_learned_profile_factor", "gpulet", "model")
        for gpulet_id, queue in sorted(self.dispatcher.queues.items()):
            queued.add_metric((gpulet_id,), queue.queued_items)
            in_flight.add_metric((gpulet_id,), queue.inflight_items)
            for model, figures in sorted(queue.estimates().items()):
                for part in LEARNED_PARTS:
                    learned.add_metric((gpulet_id, model, part),
                                       (figures[f"{part}_ms"] or 0.0) / 1000)  # fmt: skip
                if figures["factor"] is not None:
                    factor.add_metric((gpulet_id, model), figures["factor"])
        yield from (busy, ratio, served, served_rps, planned, queued, in_flight, learned, factor)

    def _cluster(self) -> Iterator[Metric]:
        controller = self.controller
        replans = _family(CounterMetricFamily, "gpulet_replans_total", "reason")
        for reason, count in sorted(controller.replans_by_reason.items()):
            replans.add_metric((reason,), count)
        yield replans
        for name, value in (
            ("gpulet_placement_version", float(controller.target.version)),
            ("gpulet_placement_switching", float(controller.switching)),
            ("gpulet_agents_up", float(len(controller.agents))),
        ):
            family = _family(GaugeMetricFamily, name)
            family.add_metric((), value)
            yield family
        batches = _family(CounterMetricFamily, "gpulet_batches_sent_total", "path", "transport")
        for (path, transport), count in controller.client.batches_sent.items():
            batches.add_metric((path, transport), count)
        yield batches


    def _door(self) -> Iterator[Metric]:
        door = self.door
        if door is None:
            return
        refused = _family(CounterMetricFamily, "gpulet_router_refused_total")
        refused.add_metric((), door.refused)
        yield refused
        for name, value in (
            ("gpulet_router_in_flight_requests", float(door.in_flight)),
            ("gpulet_router_capacity_requests_per_second", door.meter.capacity_rps or 0.0),
        ):
            family = _family(GaugeMetricFamily, name)
            family.add_metric((), value)
            yield family


def _le(bound: float) -> str:
    """A bucket's `le` label as Prometheus writes it: "0.005", "1.0", "+Inf"."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _family(kind: type[F], name: str, *labels: str) -> F:
    # prometheus_client adds `_total` to counters itself.
    return kind(name.removesuffix("_total"), FAMILIES[name], labels=labels)


def metrics_registry(collector: ClusterCollector) -> CollectorRegistry:
    """A registry of the app's own (never the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
