"""router.routing: which gpulets are routable, least-loaded choice, and admission limits."""

from __future__ import annotations

import pytest

from common.errors import Overloaded, Unavailable
from common.placement import GpuletModel, GpuletSpec, Placement
from router.routing import InflightCounter, Route, RoutingTable, build_table

pytestmark = pytest.mark.timeout(30)


def _gpulet(gpulet_id: str, agent_id: str, *models: str) -> GpuletSpec:
    return GpuletSpec(gpulet_id, agent_id, "cpu0", (0,), tuple(GpuletModel(m) for m in models))


PLACEMENT = Placement(
    version=3,
    gpulets=(
        _gpulet("g1", "a", "noop", "lenet"),
        _gpulet("g2", "a", "noop"),
        _gpulet("g3", "b", "resnet18"),
        _gpulet("g4", "gone", "lenet"),
    ),
)
URLS = {"a": "http://a:9000", "b": "http://b:9000"}


def _routes(table: RoutingTable) -> dict[str, list[tuple[str, str]]]:
    return {m: [(r.gpulet.gpulet_id, r.agent_url) for r in rs] for m, rs in table.routes.items()}


@pytest.mark.parametrize(
    ("urls", "ready", "expected"),
    [
        pytest.param(
            URLS,
            {"g1", "g2", "g3", "g4"},
            {
                "noop": [("g1", "http://a:9000"), ("g2", "http://a:9000")],
                "lenet": [("g1", "http://a:9000")],  # g4's agent has no known url
                "resnet18": [("g3", "http://b:9000")],
            },
            id="all-ready",
        ),
        pytest.param(
            URLS,
            {"g2", "g3"},
            {"noop": [("g2", "http://a:9000")], "resnet18": [("g3", "http://b:9000")]},
            id="some-ready",
        ),
        pytest.param(URLS, set(), {}, id="none-ready"),
        pytest.param({}, {"g1", "g2", "g3"}, {}, id="no-agent-urls"),
        pytest.param(
            {**URLS, "gone": "http://c:1"},
            {"g4", "unknown"},
            {"lenet": [("g4", "http://c:1")]},
            id="ready-id-not-placed",
        ),
    ],
)
def test_build_table_keeps_ready_gpulets_of_known_agents(
    urls: dict[str, str], ready: set[str], expected: dict[str, list[tuple[str, str]]]
) -> None:
    table = build_table(PLACEMENT, urls, ready)
    assert table.placement is PLACEMENT
    assert _routes(table) == expected
    assert table.ready_models() == set(expected)


def test_acquire_picks_the_least_loaded_and_release_frees_it() -> None:
    table = build_table(PLACEMENT, URLS, {"g1", "g2"})
    counter = InflightCounter(limit_per_gpulet=2, retry_after_s=0.5)

    picks = [counter.acquire(table, "noop").gpulet.gpulet_id for _ in range(4)]
    # Ties go to the first route, then each pick evens out the load.
    assert picks == ["g1", "g2", "g1", "g2"]
    assert counter.inflight == {"g1": 2, "g2": 2}

    with pytest.raises(Overloaded) as info:
        counter.acquire(table, "noop")
    error = info.value
    assert (error.status, error.code, error.retry_after_s) == (503, "overloaded", 0.5)
    assert error.details == {"model": "noop", "queued": 2, "limit": 2}
    assert counter.inflight == {"g1": 2, "g2": 2}, "a refused request must not count"

    g2 = table.routes["noop"][1]
    counter.release(g2)
    assert counter.acquire(table, "noop") == g2
    # lenet is served only by g1, which is full.
    with pytest.raises(Overloaded):
        counter.acquire(table, "lenet")


def test_release_never_goes_negative_or_leaves_zero_entries() -> None:
    table = build_table(PLACEMENT, URLS, {"g3"})
    counter = InflightCounter(limit_per_gpulet=1, retry_after_s=1.0)
    route = counter.acquire(table, "resnet18")
    assert counter.inflight == {"g3": 1}
    counter.release(route)
    assert counter.inflight == {}
    counter.release(route)  # a double release
    counter.release(Route(_gpulet("never", "a", "noop"), "http://a:9000"))
    assert counter.inflight == {}
    assert counter.acquire(table, "resnet18") == route


@pytest.mark.parametrize(
    ("ready", "model"),
    [
        pytest.param({"g1", "g2"}, "resnet50", id="model-not-placed"),
        pytest.param({"g1"}, "resnet18", id="gpulet-not-ready"),
        pytest.param(set(), "noop", id="nothing-ready"),
    ],
)
def test_no_route_is_unavailable_with_retry_after(ready: set[str], model: str) -> None:
    counter = InflightCounter(limit_per_gpulet=4, retry_after_s=2.5)
    with pytest.raises(Unavailable) as info:
        counter.acquire(build_table(PLACEMENT, URLS, ready), model)
    error = info.value
    assert type(error) is Unavailable
    assert (error.status, error.code, error.retry_after_s) == (503, "unavailable", 2.5)
    assert error.details == {"model": model}
    assert model in error.message
    assert counter.inflight == {}


def test_empty_table_has_no_ready_models() -> None:
    assert RoutingTable(Placement(version=0, gpulets=())).ready_models() == set()
