"""The rate monitor's arithmetic and the re-plan thresholds (clock passed in)."""

from __future__ import annotations

import pytest

from router.control.rates import (
    BUCKET_MS,
    EWMA_WEIGHT,
    RateChange,
    RateMonitor,
    rate_change,
    target_rps,
)

pytestmark = pytest.mark.timeout(30)


def feed(monitor: RateMonitor, model: str, rps: float, start_s: float, end_s: float) -> None:
    """Evenly spaced arrivals at `rps` from start to end."""
    step_ms = 1000.0 / rps
    t = start_s * 1000
    while t < end_s * 1000:
        monitor.record(model, t)
        t += step_ms


def test_a_steady_rate_is_measured_exactly() -> None:
    monitor = RateMonitor()
    feed(monitor, "m", 100.0, 0.0, 60.0)
    assert monitor.rates(60_000.0)["m"] == pytest.approx(100.0, rel=0.01)


def test_a_step_is_followed_at_the_ewma_pace() -> None:
    monitor = RateMonitor()
    feed(monitor, "m", 100.0, 0.0, 60.0)
    feed(monitor, "m", 300.0, 60.0, 90.0)
    buckets = 30_000 / BUCKET_MS
    # After n buckets of a step from 100 to 300: 300 - 200·(1 - w)^n.
    expected = 300.0 - 200.0 * (1 - EWMA_WEIGHT) ** buckets
    assert monitor.rates(90_000.0)["m"] == pytest.approx(expected, rel=0.02)


def test_silence_decays_and_models_are_separate() -> None:
    monitor = RateMonitor()
    feed(monitor, "a", 50.0, 0.0, 10.0)
    feed(monitor, "b", 10.0, 0.0, 10.0)
    before = monitor.rates(10_000.0)
    later = monitor.rates(20_000.0)  # 20 buckets without arrivals
    assert later["a"] == pytest.approx(before["a"] * (1 - EWMA_WEIGHT) ** 20, rel=1e-6)
    assert later["b"] < before["b"]
    assert monitor.rates(20_000.0).keys() == {"a", "b"}


def test_nothing_is_reported_before_a_bucket_ends() -> None:
    monitor = RateMonitor()
    monitor.record("m", 0.0)
    assert monitor.rates(BUCKET_MS / 2) == {}


@pytest.mark.parametrize(
    ("measured", "target"), [(0.0, 0.0), (100.0, 150.0), (124.0, 186.0), (200.0, 240.0)]
)
def test_target_has_more_headroom_at_low_rates(measured: float, target: float) -> None:
    assert target_rps(measured) == pytest.approx(target)


@pytest.mark.parametrize(
    ("planned", "target", "expected"),
    [
        ({"m": 100.0}, {"m": 104.0}, RateChange((), ())),  # +4 %, +4 req/s: keep
        ({"m": 100.0}, {"m": 106.0}, RateChange(("m",), ())),  # +6 %
        ({"m": 1000.0}, {"m": 1011.0}, RateChange(("m",), ())),  # +11 req/s
        ({"m": 100.0}, {"m": 91.0}, RateChange((), ())),  # -9 %: keep
        ({"m": 100.0}, {"m": 89.0}, RateChange((), ("m",))),  # -11 %
        ({}, {"new": 5.0}, RateChange(("new",), ())),  # a model with no plan yet
        ({"gone": 50.0}, {}, RateChange((), ("gone",))),
    ],
)
def test_rate_change_thresholds(
    planned: dict[str, float], target: dict[str, float], expected: RateChange
) -> None:
    assert rate_change(planned, target) == expected
