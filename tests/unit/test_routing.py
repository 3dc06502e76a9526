"""router.dispatch.routing: which gpulets are routable, least-loaded choice, admission limits."""

from __future__ import annotations

import pytest

from common.placement import GpuletModel, GpuletSpec, Placement
from router.dispatch.routing import RoutingTable, build_table

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


def test_empty_table_has_no_ready_models() -> None:
    assert RoutingTable(Placement(version=0, gpulets=())).ready_models() == set()
