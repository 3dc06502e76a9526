"""Serving's CPU in the plan: charged against the cores it shares with the workers, or cores of
its own (GPULET_SERVING_CORES)."""

from __future__ import annotations

import pytest

from agent.devices import serving_split
from common.cluster import DEDICATED, SERVING_SHARED, AgentInfo, DeviceInfo
from common.profiles import DeviceProfile
from router.scheduling.live import plan_live
from router.scheduling.serving_cpu import (
    MAX_SERVING_SHARE,
    SERVING_FIXED_MS,
    charged,
    request_cost_ms,
    serving_share,
)
from router.scheduling.types import Device, ModelDemand

pytestmark = pytest.mark.timeout(30)

# A 2-core CPU: one model at L(b) = 5 + 5·b ms on one core, 3 + 3·b ms on two.
PROFILE = DeviceProfile(
    name="cpu-2c", kind="cpu", sizes=(1.0, 2.0), full_size=2.0, memory_mb=64_000.0,
    latency_points={
        ("m", 1.0): tuple((b, 5.0 + 5.0 * b) for b in (1, 2, 4, 8, 16, 32)),
        ("m", 2.0): tuple((b, 3.0 + 3.0 * b) for b in (1, 2, 4, 8, 16, 32)),
    },
)  # fmt: skip


def agent(sharing: str) -> AgentInfo:
    device = DeviceInfo("cpu0", "cpu", (0, 1), sharing=sharing)
    return AgentInfo("a", "http://a", "host", 1, (device,), 0.0)


def test_the_cost_of_a_request_grows_with_its_body() -> None:
    assert request_cost_ms(0) == SERVING_FIXED_MS
    image = request_cost_ms(3 * 224 * 224 * 4)  # a float32 image, sent base64
    assert image > 3 * SERVING_FIXED_MS


def test_the_agents_hop_costs_more_where_batches_go_through_it() -> None:
    image = 3 * 224 * 224 * 4
    for size in (0, image):
        assert request_cost_ms(size, via_agent=True) > request_cost_ms(size)
    extra_small = request_cost_ms(0, via_agent=True) - request_cost_ms(0)
    extra_image = request_cost_ms(image, via_agent=True) - request_cost_ms(image)
    assert extra_image > extra_small  # the hop copies the body once more


def test_serving_slows_the_shared_cores_and_past_its_cap_no_plan_holds() -> None:
    device = Device("cpu0", "a", PROFILE)
    demands = [ModelDemand("m", "m", 200.0, 100.0)]
    cost = {"m": 2.0}  # 200 req/s x 2 ms = 0.4 cores of 2: a share of 0.2
    assert serving_share(demands, cost, 2.0) == pytest.approx(0.2)
    got = charged([device], demands, cost, frozenset({"cpu0"}))
    assert got is not None
    (worker,), share = got
    assert share == pytest.approx(0.2)
    assert worker.profile.latency_ms("m", 1, 1.0) == pytest.approx(10.0 / 0.8)
    # Cores of its own: nothing charged.
    assert charged([device], demands, cost, frozenset()) == ([device], 0.0)
    heavy = [ModelDemand("m", "m", 1000.0, 100.0)]  # 2 cores' worth of serving
    assert serving_share(heavy, cost, 2.0) > MAX_SERVING_SHARE
    assert charged([device], heavy, cost, frozenset({"cpu0"})) is None


def test_a_host_whose_cores_serving_shares_is_planned_for_less() -> None:
    slos = {"m": 100.0}
    cost = {"m": 2.0}
    apart = plan_live([agent(DEDICATED)], PROFILE, slos, {}, "gpulet+int", serving_ms=cost)
    shared = plan_live([agent(SERVING_SHARED)], PROFILE, slos, {}, "gpulet+int", serving_ms=cost)
    assert apart is not None and shared is not None
    assert apart.rate_rps is not None and shared.rate_rps is not None
    assert shared.rate_rps < apart.rate_rps
    # At the shared plan's rate, serving takes no more than its cap of the cores.
    assert shared.rate_rps * 2.0 / 1000 / 2 <= MAX_SERVING_SHARE
    assert any("serving CPU" in line for line in shared.plan.explanation)


@pytest.mark.parametrize(
    ("cores", "setting", "serving", "workers"),
    [
        ((0, 1), "auto", (), (0, 1)),  # a small host: every core to the workers
        ((0, 1, 2, 3), "auto", (0,), (1, 2, 3)),  # from 4 cores, one for serving
        ((0, 1, 2, 3), "0", (), (0, 1, 2, 3)),
        ((0, 1, 2, 3), "2", (0, 1), (2, 3)),
        ((4, 5), "1", (4,), (5,)),
    ],
)
def test_serving_cores_split(
    cores: tuple[int, ...], setting: str, serving: tuple[int, ...], workers: tuple[int, ...]
) -> None:
    assert serving_split(cores, setting) == (serving, workers)


@pytest.mark.parametrize(("setting", "message"), [("2", "leave the workers at least one"),
                                                  ("many", "use a count or 'auto'")])  # fmt: skip
def test_serving_cores_that_cannot_be_had_are_refused_naming_the_setting(
    setting: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        serving_split((0, 1), setting)


def test_a_model_too_slow_to_fill_a_batch_within_its_slo_takes_the_smallest_core_set() -> None:
    # 1 req/s against a 100 ms SLO fills no batch in time (perf.residual's corner case): its
    # residual gpu-let still shrinks to one core, leaving the other to another model.
    from common.interference import NoInterference
    from router.scheduling.schedulers import plan
    from router.scheduling.types import PlanConfig

    device = Device("cpu0", "a", PROFILE)
    result = plan("gpulet+int", [ModelDemand("m", "m", 1.0, 100.0)], [device], PlanConfig(),
                  NoInterference())  # fmt: skip
    assert result.feasible
    assert [g.size for g in result.gpulets] == [1.0]
