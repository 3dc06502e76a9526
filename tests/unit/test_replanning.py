"""When the router re-plans (replanning.py) and the rate monitor's short window (rates.py)."""

from __future__ import annotations

import pytest

from common.placement import GpuletModel, GpuletSpec, Placement
from router.control.rates import RateMonitor
from router.control.replanning import (
    FLOOR_RPS,
    Targets,
    bounds,
    planned_rates,
    replan_reason,
    target_rates,
)

pytestmark = pytest.mark.timeout(10)


def test_recent_rate_is_the_mean_of_the_last_four_buckets() -> None:
    monitor = RateMonitor()
    monitor.record("m", 0.0, 0)
    for bucket, count in enumerate([10, 20, 30, 40, 50]):
        monitor.record("m", bucket * 500.0 + 1, count)
    # buckets 1..4 finished at 2500 ms: (20+30+40+50) over 2 s
    assert monitor.recent(2500.0) == {"m": pytest.approx(70.0)}
    assert monitor.recent(4500.0).get("m", 0.0) == 0.0  # four quiet buckets


def test_bounds_are_two_spreads_of_either_estimate() -> None:
    # EWMA at 200 req/s: bucket variance 200/0.5 s, times w/(2-w) = 0.049/1.951 -> spread 3.17;
    # the last 2 s at 200 req/s: 400 arrivals -> spread 10 req/s.
    lower, upper = bounds(200.0, 200.0)
    assert lower == pytest.approx(200.0 - 2 * 3.1695, abs=1e-3)
    assert upper == pytest.approx(220.0)


def test_a_plan_is_not_redone_for_noise_but_is_for_a_step() -> None:
    steady = target_rates(["m"], {"m": 200.0}, {"m": 200.0})
    planned = {"m": steady.plan["m"]}  # 1.2 x 220
    assert planned["m"] == pytest.approx(264.0)
    for recent in (170.0, 200.0, 230.0):  # the last 2 s, within +-1.5 spreads
        noisy = target_rates(["m"], {"m": 200.0}, {"m": recent})
        assert replan_reason(planned, noisy, epoch_due=True, switching=False) == (None, ())
    step = target_rates(["m"], {"m": 200.0}, {"m": 400.0})  # the EWMA has not moved yet
    assert replan_reason(planned, step, epoch_due=False, switching=False) == ("rise", ("m",))
    assert step.plan["m"] == pytest.approx(1.2 * (400.0 + 2 * 200.0**0.5))


def test_idle_models_keep_the_floor() -> None:
    idle = target_rates(["m"], {}, {})
    assert idle.plan["m"] >= idle.confident["m"] == FLOOR_RPS


def test_planned_rates_sum_over_gpulets() -> None:
    placement = Placement(1, (
        GpuletSpec("a", "x", "d", (), (GpuletModel("m", 4, 100.0), GpuletModel("n", 1, 5.0))),
        GpuletSpec("b", "x", "d", (), (GpuletModel("m", 4, 50.0),)),
    ))  # fmt: skip
    assert planned_rates(placement) == {"m": 150.0, "n": 5.0}


def targets(confident: dict[str, float], plan: dict[str, float] | None = None) -> Targets:
    return Targets(confident, plan if plan is not None else confident)


@pytest.mark.parametrize(
    ("planned", "found", "epoch_due", "switching", "expected"),
    [
        ({"m": 100.0}, targets({"m": 104.0}), False, False, (None, ())),  # within 5 %
        ({"m": 100.0}, targets({"m": 120.0}), False, False, ("rise", ("m",))),  # at once
        ({"m": 100.0}, targets({"m": 120.0}), True, True, (None, ())),  # never while switching
        ({"m": 100.0}, targets({"m": 50.0}), False, False, (None, ())),  # a fall waits
        ({"m": 100.0}, targets({"m": 50.0}), True, False, ("fall", ("m",))),
        # a fall needs the upper bound below the plan, not just the lower one
        ({"m": 100.0}, targets({"m": 50.0}, {"m": 95.0}), True, False, (None, ())),
        # a rise takes the fallen models along: one re-plan for both
        ({"m": 100.0, "n": 100.0}, targets({"m": 200.0, "n": 10.0}), False, False,
         ("rise", ("m", "n"))),
    ],
)
def test_replan_reason(
    planned: dict[str, float], found: Targets, epoch_due: bool, switching: bool,
    expected: tuple[str | None, tuple[str, ...]],
) -> None:  # fmt: skip
    assert replan_reason(planned, found, epoch_due=epoch_due, switching=switching) == expected
