"""Planning for the running system: CPU devices, core assignment, declared and searched rates."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from common.cluster import AgentInfo, DeviceInfo
from common.placement import carry_ids
from common.profiles import DeviceProfile
from common.settings import RouterSettings
from router.http.app import parse_rates, served_models
from router.scheduling.live import LivePlan, cpu_devices, plan_live, replan_live

pytestmark = pytest.mark.timeout(60)


def cpu_profile(cores: int) -> DeviceProfile:
    """A toy CPU: L(b, k cores) = 10 ms · b / k for model "fast", 40 ms · b / k for "slow"."""
    points = {
        (model, float(k)): tuple((b, base * b / k) for b in (1, 2, 4, 8, 16, 32))
        for model, base in (("fast", 10.0), ("slow", 40.0))
        for k in range(1, cores + 1)
    }
    return DeviceProfile(
        name="toy-cpu",
        kind="cpu",
        sizes=tuple(float(k) for k in range(1, cores + 1)),
        full_size=float(cores),
        memory_mb=16000,
        latency_points=points,
    )


def agent(agent_id: str, cores: tuple[int, ...], kind: str = "cpu") -> AgentInfo:
    device = DeviceInfo("cpu0" if kind == "cpu" else "sim0", kind, cores)
    return AgentInfo(agent_id, f"http://{agent_id}", "host", 1, (device,), time.time())


def test_cpu_devices_size_the_profile_to_each_device_and_skip_other_kinds() -> None:
    devices, cores = cpu_devices(
        [agent("b", (4, 5)), agent("a", (0, 1, 2, 3)), agent("s", (), kind="simulated")],
        cpu_profile(4),
    )
    assert [d.device_id for d in devices] == ["a/cpu0", "b/cpu0"]
    assert [d.profile.full_size for d in devices] == [4.0, 2.0]
    assert devices[1].profile.sizes == (1.0, 2.0)
    assert cores == {"a/cpu0": (0, 1, 2, 3), "b/cpu0": (4, 5)}


def test_declared_rates_become_gpulets_on_disjoint_real_cores() -> None:
    live = plan_live(
        [agent("a", (2, 3))],
        cpu_profile(2),
        {"fast": 100.0, "slow": 200.0},
        {"fast": 50.0, "slow": 20.0},
        "gpulet+int",
    )
    assert live is not None and live.plan.feasible and live.rate_rps is None
    used = [c for g in live.placement.gpulets for c in g.cores]
    assert sorted(used) == sorted(set(used)) and set(used) <= {2, 3}
    for gpulet in live.placement.gpulets:
        assert gpulet.agent_id == "a" and gpulet.device_id == "cpu0"
        assert len(gpulet.cores) == int(gpulet.size)
        assert gpulet.gpulet_id == f"a.cpu0.c{'_'.join(map(str, gpulet.cores))}"
    served = {m.name: m.planned_rps for g in live.placement.gpulets for m in g.models}
    assert served["fast"] >= 50.0 and served["slow"] >= 20.0


def test_without_rates_it_plans_the_largest_equal_rate() -> None:
    slos = {"fast": 100.0, "slow": 200.0}
    live = plan_live([agent("a", (0, 1))], cpu_profile(2), slos, {}, "gpulet+int")
    assert live is not None and live.rate_rps is not None and live.rate_rps > 0
    r = live.rate_rps
    # One step more is infeasible: that is what "largest" means.
    beyond = plan_live(
        [agent("a", (0, 1))], cpu_profile(2), slos, {"fast": r + 1, "slow": r + 1}, "gpulet+int"
    )
    assert beyond is not None and not beyond.plan.feasible


def cores_by_models(live: object) -> dict[tuple[str, ...], tuple[int, ...]]:
    assert isinstance(live, LivePlan)
    return {g.model_names: g.cores for g in live.placement.gpulets}


def test_a_gpulet_the_running_placement_has_keeps_its_cores_when_rates_move() -> None:
    slos = {"fast": 100.0, "slow": 200.0}
    agents = [agent("a", (2, 3))]
    first = plan_live(agents, cpu_profile(2), slos, {"fast": 50.0, "slow": 20.0}, "gpulet+int")
    assert first is not None
    before = cores_by_models(first)
    assert sorted(before) == [("fast",), ("slow",)]
    # Unaware of what runs, the same two one-core gpu-lets come out on swapped cores: both
    # workers would restart for nothing.
    swapped = {"fast": 20.0, "slow": 50.0}
    blind = plan_live(agents, cpu_profile(2), slos, swapped, "gpulet+int")
    assert cores_by_models(blind) == {m: before[n] for m, n in
                                      ((("fast",), ("slow",)), (("slow",), ("fast",)))}  # fmt: skip
    aware = plan_live(agents, cpu_profile(2), slos, swapped, "gpulet+int",
                      running=first.placement.gpulets)  # fmt: skip
    assert cores_by_models(aware) == before
    assert aware is not None
    # Same partitions, so the running gpu-lets keep their ids: nothing restarts.
    ids = carry_ids(aware.placement.gpulets, first.placement.gpulets, 2)
    assert {g.gpulet_id for g in ids} == {g.gpulet_id for g in first.placement.gpulets}
    found = replan_live(agents, cpu_profile(2), first.plan, slos, swapped, "gpulet+int",
                        running=first.placement.gpulets)  # fmt: skip
    assert found is not None and cores_by_models(found[0]) == before


def test_a_changed_gpulet_takes_free_contiguous_cores_around_the_kept_ones() -> None:
    slos = {"fast": 100.0, "slow": 200.0}
    agents = [agent("a", (0, 1, 2, 3))]
    live = plan_live(agents, cpu_profile(4), slos, {"fast": 150.0, "slow": 60.0}, "gpulet+int")
    assert live is not None
    sizes = {g.model_names: len(g.cores) for g in live.placement.gpulets}
    assert sizes == {("slow",): 3, ("fast",): 1}
    # "fast" ran alone on core 0; "slow" ran on other cores with another model.
    running = [replace(g, cores=(0,), gpulet_id="a.cpu0.c0") if g.model_names == ("fast",)
               else replace(g, cores=(1, 2), size=2.0, gpulet_id="a.cpu0.c1_2")
               for g in live.placement.gpulets]  # fmt: skip
    again = plan_live(agents, cpu_profile(4), slos, {"fast": 150.0, "slow": 60.0},
                      "gpulet+int", running=running)  # fmt: skip
    assert cores_by_models(again) == {("fast",): (0,), ("slow",): (1, 2, 3)}
    # A kept gpu-let whose cores are taken (an unknown core, here) is planned afresh.
    elsewhere = [replace(g, cores=(7,)) if g.model_names == ("fast",) else g for g in running]
    fresh = plan_live(agents, cpu_profile(4), slos, {"fast": 150.0, "slow": 60.0},
                      "gpulet+int", running=elsewhere)  # fmt: skip
    assert cores_by_models(fresh) == cores_by_models(live)


def test_no_cpu_device_means_no_plan() -> None:
    assert plan_live([agent("s", (), "simulated")], cpu_profile(2), {"fast": 50.0}, {},
                     "gpulet+int") is None  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", {}), ("noop=500, resnet18=20", {"noop": 500.0, "resnet18": 20.0})],
)
def test_parse_rates(text: str, expected: dict[str, float]) -> None:
    assert parse_rates(text, served_models(RouterSettings())) == expected


@pytest.mark.parametrize("text", ["noop", "noop=x", "nope=3", "noop=-1"])
def test_parse_rates_rejects_with_the_fix(text: str) -> None:
    with pytest.raises(ValueError, match="GPULET_RATES"):
        parse_rates(text, served_models(RouterSettings()))


def test_simulated_gpus_are_planned_as_shares_of_the_whole_profile() -> None:
    from common.profiles import find_profile

    profile = find_profile("a100-class")
    sims = tuple(DeviceInfo(f"sim{i}", "simulated", ()) for i in range(2))
    agent_info = AgentInfo("s", "http://s", "host", 1, sims, time.time())
    live = plan_live([agent_info], profile, {"resnet50": 108.0, "vgg16": 142.0},
                     {"resnet50": 400.0, "vgg16": 200.0}, "gpulet+int")  # fmt: skip
    assert live is not None and live.plan.feasible
    for gpulet in live.placement.gpulets:
        assert gpulet.cores == () and gpulet.device_id in ("sim0", "sim1")
        assert gpulet.size in profile.sizes
        assert gpulet.gpulet_id.startswith(f"s.{gpulet.device_id}.p")
    ids = [g.gpulet_id for g in live.placement.gpulets]
    assert len(ids) == len(set(ids))
    # The CPU profile never plans on simulated GPUs, nor the GPU profile on CPU cores.
    assert cpu_devices([agent_info], cpu_profile(2))[0] == []
    assert cpu_devices([agent("a", (0, 1))], profile)[0] == []
