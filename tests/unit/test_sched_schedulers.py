"""Each scheduler on one mix, their configs, ideal's search size, peak search and the bound."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest

from router.scheduling.peak import best_device_throughput, fluid_bound, peak_search
from router.scheduling.perf import PerfModel
from router.scheduling.schedulers import (
    IDEAL_MAX_CASES,
    SCHEDULERS,
    SearchTooLarge,
    config_for,
    ideal_cases,
    layouts,
    plan,
)
from router.scheduling.types import Plan, PlanConfig
from tests.support.sched_hand import (
    EXACT,
    HAND,
    SIZES,
    FixedInterference,
    demand,
    devices,
)

pytestmark = pytest.mark.timeout(120)

# schedulers ------------------------------------------------------------------------------------
MIX = [
    demand("a", 100.0, 40.0),
    demand("b", 200.0, 40.0),
    demand("c", 100.0, 80.0, model="f"),
    demand("d", 3000.0, 40.0),
]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_plans_the_mix(name: str) -> None:
    result = plan(name, MIX, devices(2), EXACT, FixedInterference(1.2))
    assert result.scheduler == name
    assert result.feasible, result.explanation
    for g in result.gpulets:
        for m in g.models:
            assert m.latency_ms <= m.slo_ms + 1e-9
    if name == "temporal":  # whole devices only, and it does time-share here
        assert {g.size for g in result.gpulets} == {100.0}
        assert any(len(g.models) > 1 for g in result.gpulets)
    if name == "greedy":  # partitions, but never two models in one
        assert all(len(g.models) == 1 for g in result.gpulets)
        assert any(g.size < 100.0 for g in result.gpulets)
    if name == "ideal":
        assert result.explanation[0].startswith("ideal: best of ")


@pytest.mark.parametrize(
    ("name", "split", "interference", "sharing"),
    [
        ("temporal", False, False, True),
        ("greedy", True, False, False),
        ("gpulet", True, False, True),
        ("gpulet+int", True, True, True),
        ("ideal", True, True, True),
    ],
)
def test_config_for(name: str, split: bool, interference: bool, sharing: bool) -> None:
    config = config_for(name, PlanConfig())
    assert (config.allow_split, config.interference, config.allow_temporal_sharing) == (
        split,
        interference,
        sharing,
    )


def test_unknown_scheduler_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose from temporal, greedy, gpulet, gpulet\\+int"):
        plan("nexus", MIX, devices(1))


@pytest.mark.parametrize(
    ("max_parts", "expected"),
    [
        pytest.param(1, [(100.0,)], id="whole-only"),
        pytest.param(2, [(100.0,), (80.0, 20.0), (60.0, 40.0), (50.0, 50.0)], id="two"),
        pytest.param(
            3,
            [
                (100.0,),
                (80.0, 20.0),
                (60.0, 40.0),
                (60.0, 20.0, 20.0),
                (50.0, 50.0),
                (40.0, 40.0, 20.0),
            ],
            id="three",
        ),
    ],
)
def test_layouts(max_parts: int, expected: list[tuple[float, ...]]) -> None:
    assert layouts(SIZES, 100.0, max_parts) == expected


@pytest.mark.parametrize(
    ("device_count", "cases"),
    [(1, 4), (2, 10), (3, 20), (24, 2925), (25, 3276), (64, math.comb(67, 3))],
)
def test_ideal_cases(device_count: int, cases: int) -> None:
    # multisets of 4 layouts: C(n + 3, 3)
    assert ideal_cases(device_count, 4) == cases


@pytest.mark.parametrize("device_count", [25, 64])
def test_ideal_refuses_large_clusters(device_count: int) -> None:
    assert ideal_cases(device_count, 4) > IDEAL_MAX_CASES
    with pytest.raises(SearchTooLarge, match=f"ideal: {device_count} devices x 4 layouts"):
        plan("ideal", MIX, devices(device_count))


# peak search and the fluid bound ---------------------------------------------------------------
def _feasible_at(ok: Sequence[float]) -> tuple[list[float], Callable[[float], Plan]]:
    asked: list[float] = []

    def plan_at(rate_rps: float) -> Plan:
        asked.append(rate_rps)
        hit = any(math.isclose(rate_rps, r) for r in ok)
        return Plan("fake", hit, (), 0, (f"{rate_rps:g}",))

    return asked, plan_at


@pytest.mark.parametrize(
    ("feasible_rates", "max_rps", "peak", "made"),
    [
        # binary search over k = 1..100: 51 F, 26 T, 38 T, 44 F, 41 T, 42 T, 43 T; probes 45, 46
        pytest.param([10.0 * k for k in range(1, 44)], 1000.0, 430.0, 10, id="monotone"),
        # a dip at 440 and 450: the probe above the binary search finds 460
        pytest.param(
            [10.0 * k for k in range(1, 44)] + [460.0], 1000.0, 460.0, 10, id="dip-within-probes"
        ),
        # 480 is more than three steps above 430: not found
        pytest.param(
            [10.0 * k for k in range(1, 44)] + [480.0], 1000.0, 430.0, 10, id="dip-beyond-probes"
        ),
        pytest.param([10.0 * k for k in range(1, 101)], 1000.0, 1000.0, 8, id="all-feasible"),
        pytest.param([], 1000.0, 0.0, 1, id="first-step-infeasible"),
        pytest.param([10.0], 5.0, 0.0, 0, id="sweep-shorter-than-a-step"),
    ],
)
def test_peak_search(feasible_rates: list[float], max_rps: float, peak: float, made: int) -> None:
    asked, plan_at = _feasible_at(feasible_rates)
    result = peak_search(plan_at, 10.0, max_rps)
    assert result.rate_rps == pytest.approx(peak)
    assert result.plans_made == made == len(asked)
    if peak > 0:
        assert result.plan is not None and result.plan.explanation == (f"{peak:g}",)
    elif made:
        assert result.plan is not None and not result.plan.feasible
    else:
        assert result.plan is None


@pytest.mark.parametrize(
    ("model", "slo_ms", "max_parts", "expected"),
    [
        # layouts: 100: 5000; 80+20: 3600; 60+40: 4100; 50+50: 4000
        pytest.param("m", 40.0, 2, 5000.0, id="m-whole"),
        # 100: 1136.4; 80+20: 2123.6; 60+40: 2174.9; 50+50: 2197.8
        pytest.param("f", 80.0, 2, 2000 / 0.91, id="f-50+50"),
        pytest.param("f", 80.0, 1, 1000 / 0.88, id="f-whole-only"),
        pytest.param("m", 8.0, 2, 0.0, id="nothing-fits"),
    ],
)
def test_best_device_throughput(model: str, slo_ms: float, max_parts: int, expected: float) -> None:
    perf = PerfModel(HAND, EXACT)
    got = best_device_throughput(perf, model, slo_ms, SIZES, max_parts)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("models", "device_count", "expected"),
    [
        # r* = N / Σ w/best: 3 / (1/5000 + 2/2197.8)
        pytest.param(
            [("m", 40.0, 1.0), ("f", 80.0, 2.0)], 3, 3 / (1 / 5000 + 2 * 0.91 / 2000), id="mix"
        ),
        pytest.param([("m", 40.0, 1.0)], 2, 10000.0, id="one-model"),
        pytest.param([("m", 40.0, 1.0), ("m", 8.0, 1.0)], 2, 0.0, id="one-model-unservable"),
    ],
)
def test_fluid_bound(
    models: list[tuple[str, float, float]], device_count: int, expected: float
) -> None:
    perf = PerfModel(HAND, EXACT)
    assert fluid_bound(perf, models, device_count, SIZES, 2) == pytest.approx(expected)
