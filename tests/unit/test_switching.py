"""Make-before-break routing (switching.py) and gpulet ids across placements (carry_ids)."""

from __future__ import annotations

import pytest

from common.placement import GpuletModel, GpuletSpec, Placement, carry_ids
from router.control.switching import still_running, switch_routes
from router.dispatch.routing import Route, RoutingTable, build_table

pytestmark = pytest.mark.timeout(10)
URLS = {"a": "http://a", "b": "http://b"}


def spec(gpulet_id: str, *models: str, agent: str = "a", size: float = 50.0, batch: int = 1,
         device: str = "sim0") -> GpuletSpec:  # fmt: skip
    return GpuletSpec(gpulet_id, agent, device, (), tuple(GpuletModel(m, batch) for m in models),
                      size=size)  # fmt: skip


def routed(table: RoutingTable) -> dict[str, list[str]]:
    return {m: sorted(r.gpulet.gpulet_id for r in rs) for m, rs in table.routes.items()}


OLD = Placement(1, (spec("x", "resnet50"), spec("y", "vgg16")))
NEW = Placement(2, (spec("x2", "resnet50", size=30), spec("y", "vgg16"),
                    spec("z", "resnet50", agent="b")))  # fmt: skip
OLD_TABLE = build_table(OLD, URLS, {"x", "y"})


@pytest.mark.parametrize(
    ("ready", "expected", "complete"),
    [
        # nothing new warm: resnet50 stays on its old gpulet
        ({"x", "y"}, {"resnet50": ["x"], "vgg16": ["y"]}, False),
        # one of two new resnet50 gpulets warm: still the old one (switch all at once)
        ({"x", "y", "x2"}, {"resnet50": ["x"], "vgg16": ["y"]}, False),
        # all warm: switched
        ({"x", "y", "x2", "z"}, {"resnet50": ["x2", "z"], "vgg16": ["y"]}, True),
        # the old gpulet died before the new ones were warm: take the warm new one at once
        ({"y", "x2"}, {"resnet50": ["x2"], "vgg16": ["y"]}, False),
        # neither: no route (the dispatcher answers 503 "no ready gpulet")
        ({"y"}, {"vgg16": ["y"]}, False),
    ],
)
def test_a_model_switches_only_when_all_its_new_gpulets_are_warm(
    ready: set[str], expected: dict[str, list[str]], complete: bool
) -> None:
    switch = switch_routes(NEW, OLD_TABLE, URLS, ready)
    assert routed(switch.table) == expected
    assert switch.complete is complete
    assert switch.table.placement is NEW


def test_after_the_timeout_the_warm_new_gpulets_take_over() -> None:
    switch = switch_routes(NEW, OLD_TABLE, URLS, {"x", "y", "x2"}, give_up=True)
    assert routed(switch.table) == {"resnet50": ["x2"], "vgg16": ["y"]}


def test_an_old_route_to_an_agent_that_left_is_not_kept() -> None:
    switch = switch_routes(NEW, OLD_TABLE, {"b": "http://b"}, {"x", "y", "z"})
    # agent a is gone: its gpulets are not in the target's routes nor kept from the old table
    assert routed(switch.table) == {"resnet50": ["z"]}
    assert switch.complete


def test_replaced_gpulets_run_while_routed_or_draining() -> None:
    retiring = {"x": spec("x", "resnet50"), "w": spec("w", "vgg16")}
    assert set(still_running(retiring, OLD_TABLE, set())) == {"x"}
    assert set(still_running(retiring, RoutingTable(NEW), {"w"})) == {"w"}
    assert still_running(retiring, RoutingTable(NEW), set()) == {}


def test_same_partition_keeps_its_id_and_new_ones_get_fresh_ids() -> None:
    running = [spec("a.sim0.p0", "resnet50", size=50), spec("a.sim0.p1", "vgg16", size=50)]
    wanted = [
        spec("a.sim0.p0", "vgg16", size=50, batch=8),  # vgg16's partition, new batch size
        spec("a.sim0.p1", "resnet50", size=30),  # new partition
        spec("a.sim0.p2", "resnet50", size=20),  # new id, free
    ]
    out = carry_ids(wanted, running, version=7)
    assert [g.gpulet_id for g in out] == ["a.sim0.p1", "a.sim0.p1.v7", "a.sim0.p2"]
    assert out[0].models[0].batch_size == 8  # the new plan's batch, on the running gpulet
    assert len({g.gpulet_id for g in out} | {g.gpulet_id for g in running}) == 4


def test_ids_stay_unique_over_many_versions() -> None:
    running = [spec("a.sim0.p0", "resnet50", size=50)]
    for version in range(2, 6):
        wanted = [spec("a.sim0.p0", "resnet50", size=50 - version)]
        [new] = carry_ids(wanted, running, version)
        assert new.gpulet_id not in {g.gpulet_id for g in running}
        assert new.gpulet_id.split(".v")[0] == "a.sim0.p0"
        running = [*running, new]


def test_partition_ignores_batch_and_rates() -> None:
    a = spec("g", "resnet50", batch=1)
    b = GpuletSpec("g", "a", "sim0", (), (GpuletModel("resnet50", 16, 300.0),), size=50.0,
                   duty_cycle_ms=40.0)  # fmt: skip
    assert a.partition() == b.partition()
    assert a.partition() != spec("g", "resnet50", size=40).partition()


def test_routes_carry_the_target_spec_once_switched() -> None:
    target = Placement(3, (spec("y", "vgg16", batch=8),))
    switch = switch_routes(target, OLD_TABLE, URLS, {"y"})
    assert switch.table.routes["vgg16"] == (Route(target.gpulets[0], "http://a"),)
