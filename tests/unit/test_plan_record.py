"""What a placement was planned from survives Redis as JSON, so another router can adopt it."""

from __future__ import annotations

import orjson

from common.cluster import DeviceInfo
from router.control.plan_record import PlanRecord, inputs_digest
from router.scheduling.types import Plan, PlannedGpulet, PlannedModel


def plan() -> Plan:
    model = PlannedModel("resnet50", "resnet50", 8, 120.5, 40.25, 108.0)
    gpulet = PlannedGpulet("a1/sim0", 40.0, (model,), 33.3, 1.0, 1.07)
    return Plan("gpulet+int", True, (gpulet,), 1, ("feasible",), {"vgg16": 3.5})


def test_a_record_round_trips_through_json() -> None:
    record = PlanRecord("gpulet+int", "sim:a100-class*10", {"resnet50": 108.0}, {},
                        "d1", plan(), "rise", "incremental")  # fmt: skip
    assert PlanRecord.from_json(orjson.loads(orjson.dumps(record.to_json()))) == record


def test_the_static_rule_has_no_plan() -> None:
    record = PlanRecord("static", None, {"noop": 10.0}, {}, "d2")
    assert PlanRecord.from_json(orjson.loads(orjson.dumps(record.to_json()))).plan is None


def test_the_inputs_digest_is_stable_and_tells_agents_apart() -> None:
    one = ((("a1", (DeviceInfo("cpu0", "cpu", (0, 1)),)),), ("cpu:x",))
    same = ((("a1", (DeviceInfo("cpu0", "cpu", (0, 1)),)),), ("cpu:x",))
    other = ((("a1", (DeviceInfo("cpu0", "cpu", (0,)),)),), ("cpu:x",))
    assert inputs_digest(one) == inputs_digest(same) != inputs_digest(other)
