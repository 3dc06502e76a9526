"""router.control.placement_rule: gpulet count, proportional shares, even core splits, LPT."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.cluster import AgentInfo, DeviceInfo
from common.models import CATALOG
from common.placement import GpuletModel
from router.control.placement_rule import split_evenly, static_placement

pytestmark = pytest.mark.timeout(60)


def _agent(agent_id: str, cores: Sequence[int], *extra: DeviceInfo) -> AgentInfo:
    devices = (DeviceInfo("cpu0", "cpu", tuple(cores)), *extra) if cores else extra
    return AgentInfo(agent_id, f"http://{agent_id}:1", agent_id, 1, devices, 0.0)


def _layout(agents: Sequence[AgentInfo], models: Sequence[str]) -> list[tuple]:
    """(gpulet_id, agent_id, cores, models) per gpulet, in placement order."""
    placement = static_placement(agents, models)
    return [(g.gpulet_id, g.agent_id, g.cores, g.model_names) for g in placement.gpulets]


ALL = sorted(CATALOG)

# Expected assignments worked by hand from the default SLOs (resnet50 400, resnet18 200,
# bert_mini 60, mobilenet_v2 60, noop 10, lenet 5): models go largest first (ties by name) to the
# gpulet of least load per core, ties to the first gpulet.
LAYOUTS = [
    pytest.param(
        [_agent("a", [0, 1])],
        ALL,
        [
            ("a.cpu0.c0", "a", (0,), ("resnet50",)),
            # 200, then +60 +60 +10 +5: all stay under resnet50's 400.
            (
                "a.cpu0.c1",
                "a",
                (1,),
                ("bert_mini", "lenet", "mobilenet_v2", "noop", "resnet18"),
            ),
        ],
        id="6-models-2-cores",
    ),
    pytest.param(
        [_agent("a", [0, 1, 2])],
        ALL,
        [
            ("a.cpu0.c0", "a", (0,), ("resnet50",)),
            ("a.cpu0.c1", "a", (1,), ("resnet18",)),
            # bert_mini 60 -> c2; mobilenet_v2 (60 vs 60 vs 200): c2 is least at 60; and so on.
            ("a.cpu0.c2", "a", (2,), ("bert_mini", "lenet", "mobilenet_v2", "noop")),
        ],
        id="6-models-3-cores",
    ),
    pytest.param(
        [_agent("a", [0, 1, 2, 3])],
        ["noop", "lenet"],
        [("a.cpu0.c0_1", "a", (0, 1), ("noop",)), ("a.cpu0.c2_3", "a", (2, 3), ("lenet",))],
        id="2-models-4-cores",
    ),
    pytest.param(
        [_agent("a", [4, 5, 6])],
        ["bert_mini"],
        [("a.cpu0.c4_5_6", "a", (4, 5, 6), ("bert_mini",))],
        id="1-model-3-cores",
    ),
    pytest.param(
        [_agent("a", [0, 1, 2])],
        ["resnet18", "resnet50"],
        [("a.cpu0.c0_1", "a", (0, 1), ("resnet50",)), ("a.cpu0.c2", "a", (2,), ("resnet18",))],
        id="uneven-split",
    ),
    pytest.param(
        [_agent("b", range(6)), _agent("a", [0, 1])],
        ["noop", "resnet18", "bert_mini", "resnet50"],
        [
            # 8 cores, 4 gpulets: shares 2/8*4 = 1 for a and 6/8*4 = 3 for b.
            ("a.cpu0.c0_1", "a", (0, 1), ("resnet50",)),
            ("b.cpu0.c0_1", "b", (0, 1), ("resnet18",)),
            ("b.cpu0.c2_3", "b", (2, 3), ("bert_mini",)),
            ("b.cpu0.c4_5", "b", (4, 5), ("noop",)),
        ],
        id="2-agents-proportional",
    ),
    pytest.param(
        [_agent("a", [0]), _agent("b", [0]), _agent("c", [0])],
        ["noop", "lenet"],
        # 2/3 each: floors are 0, equal remainders go to the first agents by id.
        [("a.cpu0.c0", "a", (0,), ("noop",)), ("b.cpu0.c0", "b", (0,), ("lenet",))],
        id="equal-remainders",
    ),
    pytest.param(
        [_agent("a", [0]), _agent("b", range(7))],
        ["noop", "lenet"],
        # exact shares 0.25 and 1.75: the larger remainder wins the second gpulet.
        [
            ("b.cpu0.c0_1_2_3", "b", (0, 1, 2, 3), ("noop",)),
            ("b.cpu0.c4_5_6", "b", (4, 5, 6), ("lenet",)),
        ],
        id="small-agent-gets-none",
    ),
    pytest.param(
        [_agent("a", [0]), _agent("b", [0]), _agent("c", range(6))],
        ALL,
        # 6 gpulets over 8 cores: exact 0.75, 0.75, 4.5 -> floors 0, 0, 4, then a and b.
        [
            ("a.cpu0.c0", "a", (0,), ("resnet50",)),
            ("b.cpu0.c0", "b", (0,), ("resnet18",)),
            ("c.cpu0.c0_1", "c", (0, 1), ("bert_mini",)),
            ("c.cpu0.c2_3", "c", (2, 3), ("mobilenet_v2",)),
            ("c.cpu0.c4", "c", (4,), ("noop",)),
            ("c.cpu0.c5", "c", (5,), ("lenet",)),
        ],
        id="remainders-to-small-agents",
    ),
    pytest.param(
        [
            _agent("a", [2, 3], DeviceInfo("gpu0", "nvidia", (0, 1), 8 << 30)),
            _agent("z", [], DeviceInfo("sim0", "simulated", (0, 1, 2, 3))),
        ],
        ["noop", "lenet", "resnet18"],
        [
            ("a.cpu0.c2", "a", (2,), ("resnet18",)),
            ("a.cpu0.c3", "a", (3,), ("lenet", "noop")),
        ],
        id="non-cpu-devices-ignored",
    ),
]


@pytest.mark.parametrize(("agents", "models", "expected"), LAYOUTS)
def test_static_placement_layout(
    agents: list[AgentInfo], models: list[str], expected: list[tuple]
) -> None:
    assert _layout(agents, models) == expected


def test_gpulet_fields_and_explanation() -> None:
    placement = static_placement([_agent("a", [0, 1])], ALL)
    assert placement.version == 0 and placement.unplaced == ()
    first, second = placement.gpulets
    assert (first.device_id, first.size, first.duty_cycle_ms) == ("cpu0", 1.0, 0.0)
    assert first.models == (GpuletModel("resnet50"),)
    assert placement.explanation[0] == "static rule: 6 models over 2 cores -> 2 gpulets"
    assert "(time-shared)" not in placement.explanation[1]
    assert placement.explanation[2].endswith("(time-shared)")
    assert second.gpulet_id in placement.explanation[2]


@pytest.mark.parametrize(
    ("agents", "models", "reason"),
    [
        pytest.param([], ["noop", "lenet"], "no agent with CPU cores has registered", id="none"),
        pytest.param(
            [_agent("g", [], DeviceInfo("gpu0", "nvidia", (0,)))],
            ["noop"],
            "no agent with CPU cores has registered",
            id="gpu-only",
        ),
        pytest.param(
            [AgentInfo("e", "http://e", "e", 1, (DeviceInfo("cpu0", "cpu", ()),), 0.0)],
            ["noop"],
            "no agent with CPU cores has registered",
            id="cpu-without-cores",
        ),
        pytest.param([_agent("a", [0, 1])], [], "no models to serve", id="no-models"),
    ],
)
def test_nothing_to_place(agents: list[AgentInfo], models: list[str], reason: str) -> None:
    placement = static_placement(agents, models)
    assert placement.gpulets == ()
    assert placement.unplaced == tuple(models)
    assert placement.explanation == (reason,)


def test_agent_order_does_not_matter() -> None:
    agents = [_agent("n1", range(3)), _agent("n2", [8, 9]), _agent("n0", [0])]
    expected = static_placement(agents, ALL)
    for order in itertools.permutations(agents):
        assert static_placement(list(order), list(reversed(ALL))) == expected


@pytest.mark.parametrize(
    ("cores", "parts", "expected"),
    [
        pytest.param((0, 1, 2), 2, [(0, 1), (2,)], id="docstring"),
        pytest.param(tuple(range(5)), 3, [(0, 1), (2, 3), (4,)], id="5-in-3"),
        pytest.param((4, 7, 9), 1, [(4, 7, 9)], id="one-part"),
        pytest.param((4, 7, 9), 3, [(4,), (7,), (9,)], id="singles"),
        pytest.param(tuple(range(8)), 3, [(0, 1, 2), (3, 4, 5), (6, 7)], id="8-in-3"),
        pytest.param((0, 1, 2), 0, [], id="zero-parts"),
        pytest.param((0, 1, 2), -1, [], id="negative-parts"),
    ],
)
def test_split_evenly(cores: tuple[int, ...], parts: int, expected: list[tuple[int, ...]]) -> None:
    assert split_evenly(cores, parts) == expected


AGENT_CORES = st.lists(st.tuples(st.integers(0, 16), st.integers(1, 8)), min_size=1, max_size=4)
MODEL_SETS = st.sets(st.sampled_from(ALL), min_size=1)


@settings(max_examples=100, deadline=None)
@given(AGENT_CORES, MODEL_SETS)
def test_placement_properties(specs: list[tuple[int, int]], models: set[str]) -> None:
    agents = [_agent(f"agent{i}", range(first, first + n)) for i, (first, n) in enumerate(specs)]
    placement = static_placement(agents, sorted(models))
    total_cores = sum(n for _, n in specs)

    assert len(placement.gpulets) == min(len(models), total_cores)
    # Every model exactly once, sorted inside its gpulet, and none left out.
    placed = Counter(m for g in placement.gpulets for m in g.model_names)
    assert placed == Counter(models)
    assert placement.unplaced == ()
    assert all(list(g.model_names) == sorted(g.model_names) for g in placement.gpulets)
    assert len({g.gpulet_id for g in placement.gpulets}) == len(placement.gpulets)

    by_agent = {a.agent_id: set(a.devices[0].cores) for a in agents}
    for agent_id, allowed in by_agent.items():
        sets = [g.cores for g in placement.gpulets if g.agent_id == agent_id]
        used = [c for cores in sets for c in cores]
        assert len(used) == len(set(used)), "core sets overlap"
        assert set(used) <= allowed
        assert len(sets) <= len(allowed)
    for g in placement.gpulets:
        assert g.cores and g.size == len(g.cores) and g.model_names
