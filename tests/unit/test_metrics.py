"""`/metrics` as Prometheus parses it: every family, and its values after known traffic through
a real dispatcher (fake clock, an agent client the test answers) and a known control state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common.cluster import AgentInfo, DeviceInfo
from common.errors import Unavailable
from common.placement import GpuletModel, GpuletSpec, Placement
from router.control.control import Controller, ReplanEvent
from router.control.rates import EWMA_WEIGHT, RateMonitor
from router.dispatch.agent_client import AgentClient
from router.dispatch.batching import GpuletPlanView, ModelTurn
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.routing import build_table
from router.http.inflight import Door
from router.http.metrics import (
    FAMILIES,
    Buckets,
    ClusterCollector,
    DispatchMetrics,
    metrics_registry,
)
from tests.support.held_agent import Clock, HeldClient

pytestmark = pytest.mark.timeout(30)
SLO_MS = 50.0
BATCH = 4
FAR_MS = 1e9
M_ON_G1 = GpuletSpec("g1", "a", "sim0", (), (GpuletModel("m", BATCH, 10.0),), size=60.0)
N_ON_G2 = GpuletSpec("g2", "a", "sim0", (), (GpuletModel("n", 2, 7.0),), size=40.0)


@dataclass
class Router:
    controller: Controller
    dispatcher: Dispatcher
    arrivals: RateMonitor
    client: HeldClient
    clock: Clock
    collector: ClusterCollector

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(metrics_registry(self.collector)).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def send(self, request_id: str) -> asyncio.Task[object]:
        self.arrivals.record("m", self.clock() * 1000)
        inputs = {"input": np.zeros((1, 1), np.float32)}
        return asyncio.create_task(
            self.dispatcher.submit("m", inputs, 1, SLO_MS, FAR_MS, request_id)
        )


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    clock, client, observed, arrivals = Clock(), HeldClient(), DispatchMetrics(), RateMonitor()
    controller = Controller(None, AgentClient(4), {"m": SLO_MS, "n": 100.0},  # type: ignore[arg-type]
                            1.0)  # fmt: skip
    controller.target = Placement(3, (M_ON_G1, N_ON_G2))
    controller.agents = [AgentInfo("a", "http://agent", "host", 1,
                                   (DeviceInfo("sim0", "simulated", ()),), 0.0)]  # fmt: skip
    for event in (ReplanEvent(1, 0.0, "agents", "initial"),
                  ReplanEvent(2, 1.0, "rise", "incremental"),
                  ReplanEvent(3, 2.0, "rise", "full")):  # fmt: skip
        controller.record(event)
    # g1 is ready, g2 is not: n has no route.
    controller.table = build_table(controller.target, {"a": "http://agent"}, {"g1"})
    # A batch of 4 goes when full (the duty-cycle rule); the window is too long to ever end a
    # batch here.
    view = GpuletPlanView(1e9, (ModelTurn("m", BATCH, (0.0,)),))
    dispatcher = Dispatcher(client, retry_after_s=1.0,  # type: ignore[arg-type]
                            views=lambda route: view, best_latency_ms=lambda model: None,
                            work_conserving=False, clock=clock, observer=observed)  # fmt: skip
    dispatcher.follow(controller.table)
    collector = ClusterCollector(observed, controller, dispatcher, arrivals, clock,
                                 Door(backlog_s=0.5, retry_after_s=1.0))
    yield Router(controller, dispatcher, arrivals, client, clock, collector)
    await dispatcher.close()


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


async def test_every_family_is_served_with_help_and_type(router: Router) -> None:
    text = generate_latest(metrics_registry(router.collector)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {name.removesuffix("_total") for name in FAMILIES}
    assert all(f.documentation for f in families.values())
    assert families["gpulet_requests"].type == "counter"
    assert families["gpulet_request_latency_seconds"].type == "histogram"
    assert families["gpulet_slo_attainment_ratio"].type == "gauge"


async def test_known_traffic_gives_known_counts_latencies_batches_and_busy_time(
    router: Router,
) -> None:
    clock, client = router.clock, router.client
    # Two requests wait for a batch of 4: they are the queue.
    first = [router.send("r1"), router.send("r2")]
    await asyncio.sleep(0)  # let both tasks reach their queue; noqa: sleep-ok
    queued = router.scrape()
    assert value(queued, "gpulet_queue_depth_requests", model="m") == 2
    assert value(queued, "gpulet_gpulet_queued_items", gpulet="g1") == 2
    # Two more at 10 ms fill it: it goes out, and is answered at 40 ms (latencies 40, 40, 30,
    # 30 ms: within the 50 ms SLO).
    clock.now_s = 0.010
    first += [router.send("r3"), router.send("r4")]
    await client.sent.get()
    in_flight = router.scrape()
    assert value(in_flight, "gpulet_queue_depth_requests", model="m") == 0
    assert value(in_flight, "gpulet_gpulet_inflight_items", gpulet="g1") == BATCH
    clock.now_s = 0.040
    client.finish("r1")
    await asyncio.gather(*first)
    # A second batch, at 1 s, answered at 1.06 s: 60 ms, past the SLO.
    clock.now_s = 1.0
    second = [router.send(f"s{i}") for i in range(BATCH)]
    await client.sent.get()
    clock.now_s = 1.060
    client.finish("s0")
    await asyncio.gather(*second)
    # n has no ready gpu-let: refused, and counted against n's attainment.
    with pytest.raises(Unavailable, match="no ready gpulet serves n"):
        await router.dispatcher.submit("n", {}, 1, 100.0, FAR_MS, "refused")

    got = router.scrape()
    assert value(got, "gpulet_requests_total", model="m", code="ok") == 8
    assert value(got, "gpulet_requests_total", model="n", code="unavailable") == 1
    assert value(got, "gpulet_requests_within_slo_total", model="m") == 4
    assert value(got, "gpulet_slo_attainment_ratio", model="m") == 0.5
    assert value(got, "gpulet_slo_attainment_ratio", model="n") == 0.0
    # Latency: 4 answers at 30-40 ms, 4 at 60 ms.
    assert value(got, "gpulet_request_latency_seconds_bucket", model="m", le="0.025") == 0
    assert value(got, "gpulet_request_latency_seconds_bucket", model="m", le="0.05") == 4
    assert value(got, "gpulet_request_latency_seconds_bucket", model="m", le="0.1") == 8
    assert value(got, "gpulet_request_latency_seconds_bucket", model="m", le="+Inf") == 8
    assert value(got, "gpulet_request_latency_seconds_count", model="m") == 8
    assert value(got, "gpulet_request_latency_seconds_sum", model="m") == pytest.approx(0.38)
    # Batches: two of 4 items.
    assert value(got, "gpulet_batch_size_items_bucket", model="m", le="2.0") == 0
    assert value(got, "gpulet_batch_size_items_bucket", model="m", le="4.0") == 2
    assert value(got, "gpulet_batch_size_items_sum", model="m") == 8
    # Per gpu-let: busy 10-40 ms and 1000-1060 ms; every answer served by g1.
    assert value(got, "gpulet_gpulet_busy_seconds_total", gpulet="g1") == pytest.approx(0.09)
    assert value(got, "gpulet_gpulet_served_requests_total", gpulet="g1", model="m") == 8
    # Smoothed over 500 ms buckets from the first record: 30 ms busy in the first (a share of
    # 0.06), none in the second; the third (60 ms busy) is not over yet.
    assert value(got, "gpulet_gpulet_busy_ratio", gpulet="g1") == pytest.approx(
        0.06 * (1 - EWMA_WEIGHT)
    )
    # Arrivals: 4 in the first bucket (8 req/s), none in the second.
    assert value(got, "gpulet_measured_requests_per_second", model="m") == pytest.approx(
        8 * (1 - EWMA_WEIGHT)
    )
    assert value(got, "gpulet_measured_requests_per_second", model="n") == 0


async def test_plan_and_cluster_state_are_read_at_scrape_time(router: Router) -> None:
    got = router.scrape()
    assert value(got, "gpulet_planned_requests_per_second", model="m") == 10
    assert value(got, "gpulet_planned_requests_per_second", model="n") == 7
    assert value(got, "gpulet_gpulet_planned_requests_per_second", gpulet="g2", model="n") == 7
    assert value(got, "gpulet_model_ready", model="m") == 1
    assert value(got, "gpulet_model_ready", model="n") == 0
    assert value(got, "gpulet_placement_version") == 3
    assert value(got, "gpulet_placement_switching") == 0
    assert value(got, "gpulet_replans_total", reason="agents") == 1
    assert value(got, "gpulet_replans_total", reason="rise") == 2
    assert value(got, "gpulet_agents_up") == 1
    # Later state shows in the next scrape: nothing is cached.
    router.controller.switching = True
    router.controller.agents = []
    again = router.scrape()
    assert value(again, "gpulet_placement_switching") == 1
    assert value(again, "gpulet_agents_up") == 0


def test_every_family_is_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert [name for name in FAMILIES if f"`{name}" not in readme] == []


def test_a_value_on_a_bucket_bound_falls_in_that_bucket() -> None:
    buckets = Buckets((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 7.0):
        buckets.observe(v)
    assert buckets.cumulative() == [("1.0", 2.0), ("2.0", 4.0), ("+Inf", 5.0)]
    assert buckets.total == 12.0
