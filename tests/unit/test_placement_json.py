"""common.placement and common.cluster: JSON round trips (also through orjson) and lookups."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from common.cluster import AgentInfo, DeviceInfo, GpuletStatus
from common.placement import EMPTY_PLACEMENT, GpuletModel, GpuletSpec, Placement

pytestmark = pytest.mark.timeout(30)

G1 = GpuletSpec(
    gpulet_id="a.cpu0.c0_1",
    agent_id="a",
    device_id="cpu0",
    cores=(0, 1),
    models=(GpuletModel("noop", batch_size=8, planned_rps=120.5), GpuletModel("lenet")),
    size=2.0,
    duty_cycle_ms=12.5,
)
G2 = GpuletSpec("b.cpu0.c3", "b", "cpu0", (3,), (GpuletModel("resnet18", 4, 9.0),), 1.0)
G3 = GpuletSpec("b.cpu0.c4", "b", "cpu0", (4,), (GpuletModel("noop"),))
PLACEMENT = Placement(
    version=42,
    gpulets=(G1, G2, G3),
    explanation=("static rule", "a.cpu0.c0_1: 2 core(s)"),
    unplaced=("resnet50",),
)
AGENT = AgentInfo(
    agent_id="a",
    url="http://127.0.0.1:9001",
    hostname="node-1",
    pid=4242,
    devices=(DeviceInfo("cpu0", "cpu", (0, 1, 2)), DeviceInfo("gpu0", "nvidia", (), 80 << 30)),
    started_at_s=1_700_000_000.25,
)
STATUSES = [
    GpuletStatus("a.cpu0.c0_1", "ready", ("lenet", "noop"), (0, 1), 777, 2, 5,
                 direct_socket="/tmp/gpulet-agent-x/w3.sock"),
    GpuletStatus("b.cpu0.c3", "failed", ("resnet18",), (3,), None, 4, 0, error="exit code 1"),
]

VALUES = [
    pytest.param(PLACEMENT, id="placement"),
    pytest.param(EMPTY_PLACEMENT, id="empty-placement"),
    pytest.param(G1, id="gpulet"),
    pytest.param(AGENT, id="agent"),
    pytest.param(AGENT.devices[1], id="device"),
    pytest.param(STATUSES[0], id="status-ready"),
    pytest.param(STATUSES[1], id="status-failed"),
]


@pytest.mark.parametrize("value", VALUES)
def test_round_trip(value: Any) -> None:
    cls = type(value)
    assert cls.from_json(value.to_json()) == value
    # As stored in Redis and sent over HTTP: through bytes.
    assert cls.from_json(orjson.loads(orjson.dumps(value.to_json()))) == value


def test_placement_json_shape() -> None:
    data = orjson.loads(orjson.dumps(PLACEMENT.to_json()))
    assert data["version"] == 42
    assert data["unplaced"] == ["resnet50"]
    assert data["gpulets"][0] == {
        "gpulet_id": "a.cpu0.c0_1",
        "agent_id": "a",
        "device_id": "cpu0",
        "cores": [0, 1],
        "size": 2.0,
        "duty_cycle_ms": 12.5,
        "slowdown": 1.0,
        "models": [
            {"name": "noop", "batch_size": 8, "planned_rps": 120.5},
            {"name": "lenet", "batch_size": 1, "planned_rps": 0.0},
        ],
    }


@pytest.mark.parametrize(
    ("cls", "data", "expected"),
    [
        pytest.param(
            Placement,
            {"version": "7", "gpulets": []},
            Placement(version=7, gpulets=()),
            id="placement-defaults",
        ),
        pytest.param(
            GpuletSpec,
            {
                "gpulet_id": "g",
                "agent_id": "a",
                "device_id": "d",
                "cores": [1],
                "models": [{"name": "noop"}],
            },
            GpuletSpec("g", "a", "d", (1,), (GpuletModel("noop", 1, 0.0),), 0.0, 0.0),
            id="gpulet-defaults",
        ),  # fmt: skip
        pytest.param(
            AgentInfo,
            {"agent_id": "x", "url": "http://x"},
            AgentInfo("x", "http://x", "", 0, (), 0.0),
            id="agent-defaults",
        ),
        pytest.param(
            DeviceInfo,
            {"device_id": "cpu0", "kind": "cpu"},
            DeviceInfo("cpu0", "cpu", ()),
            id="device-defaults",
        ),  # fmt: skip
        pytest.param(
            GpuletStatus,
            {"gpulet_id": "g", "state": "starting"},
            GpuletStatus("g", "starting", (), (), None, 0, 0, None),
            id="status-defaults",
        ),
    ],
)
def test_from_json_fills_defaults(cls: Any, data: dict[str, Any], expected: Any) -> None:
    assert cls.from_json(data) == expected


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        pytest.param(Placement, {"gpulets": []}, id="placement-no-version"),
        pytest.param(
            GpuletSpec, {"gpulet_id": "g", "agent_id": "a", "device_id": "d"}, id="gpulet"
        ),
        pytest.param(AgentInfo, {"agent_id": "x"}, id="agent-no-url"),
        pytest.param(GpuletStatus, {"gpulet_id": "g"}, id="status-no-state"),
    ],
)
def test_from_json_requires_its_keys(cls: Any, data: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        cls.from_json(data)


@pytest.mark.parametrize(
    ("agent_id", "expected"),
    [("a", (G1,)), ("b", (G2, G3)), ("nobody", ())],
)
def test_for_agent(agent_id: str, expected: tuple[GpuletSpec, ...]) -> None:
    assert PLACEMENT.for_agent(agent_id) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("noop", (G1, G3)), ("lenet", (G1,)), ("resnet18", (G2,)), ("resnet50", ())],
)
def test_gpulets_of(model: str, expected: tuple[GpuletSpec, ...]) -> None:
    assert PLACEMENT.gpulets_of(model) == expected


def test_model_names_in_order() -> None:
    assert G1.model_names == ("noop", "lenet")
