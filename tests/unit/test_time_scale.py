"""Simulated time scale: agent keys, the scaled profile and scenario, and plans that stay the same.

A device k times slower has every latency × k; a scenario run on it has every rate ÷ k and every
SLO × k. The planner's answer, read in the scenario's r, must not move.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from common.cluster import parse_simulated_key, simulated_key
from common.profiles import DeviceProfile
from common.scenarios import PACKAGED_SCENARIOS, load_scenario
from router.scheduling.offline import find_peak, setting_for
from router.scheduling.types import PlanConfig

pytestmark = pytest.mark.timeout(60)


TOY = DeviceProfile(
    name="toy",
    kind="nvidia",
    sizes=(50.0, 100.0),
    full_size=100.0,
    memory_mb=16000.0,
    latency_points={
        ("m", 50.0): ((1, 10.0), (4, 20.0)),
        ("m", 100.0): ((1, 6.0), (4, 12.0)),
    },
    util_points={("m", 50.0): ((1, 0.1, 0.2),)},
    source="hand-made",
)


# agent keys --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "scale", "key"),
    [
        ("a100-class", 1.0, "sim:a100-class"),
        ("a100-class", 4.0, "sim:a100-class*4"),
        ("v100-trt", 2.5, "sim:v100-trt*2.5"),
        ("a100-class", 0.5, "sim:a100-class*0.5"),
    ],
)
def test_simulated_keys_round_trip(profile: str, scale: float, key: str) -> None:
    assert simulated_key(profile, scale) == key
    assert parse_simulated_key(key) == (profile, scale)


@pytest.mark.parametrize("key", ["cpu:abc123", "", "a100-class", "simulated:a100-class"])
def test_other_keys_are_not_simulated(key: str) -> None:
    assert parse_simulated_key(key) is None


# DeviceProfile.time_scaled ------------------------------------------------------------------
def test_every_measured_latency_is_multiplied() -> None:
    slow = TOY.time_scaled(3.0)
    assert slow.latency_points == {
        ("m", 50.0): ((1, 30.0), (4, 60.0)),
        ("m", 100.0): ((1, 18.0), (4, 36.0)),
    }
    # what is not time stays: sizes, memory, utilisation fractions, the name the key carries
    assert (slow.name, slow.sizes, slow.memory_mb) == (TOY.name, TOY.sizes, TOY.memory_mb)
    assert slow.util_points == TOY.util_points
    assert "x3" in slow.source


@pytest.mark.parametrize(("batch", "size"), [(1, 50.0), (2, 50.0), (3, 75.0), (4, 100.0)])
def test_interpolated_latencies_scale_too(batch: int, size: float) -> None:
    assert TOY.time_scaled(2.5).latency_ms("m", batch, size) == pytest.approx(
        2.5 * TOY.latency_ms("m", batch, size)
    )


def test_scale_one_is_the_same_profile() -> None:
    assert TOY.time_scaled(1.0) is TOY


@pytest.mark.parametrize("factor", [0.0, -1.0])
def test_a_scale_must_be_positive(factor: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        TOY.time_scaled(factor)


# Scenario.time_scaled ------------------------------------------------------------------------
SWEEP = """\
[rate]
mode = "sweep"
step_rps = 5
[[models]]
name = "a"
slo_ms = 10
weight = 3.0
[[models]]
name = "b"
slo_ms = 20
"""


def test_a_scaled_scenario_divides_rates_and_multiplies_slos(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    scenario = load_scenario(path)
    slow = scenario.time_scaled(4.0)
    assert slow.rates_at(8.0) == pytest.approx({"a": 6.0, "b": 2.0})  # weight x r / 4
    assert [m.slo_ms for m in slow.models] == [40.0, 80.0]
    assert (slow.step_rps, slow.max_rps) == (scenario.step_rps, scenario.max_rps)  # r's units
    assert scenario.time_scaled(1.0) is scenario
    with pytest.raises(ValueError, match="must be > 0"):
        scenario.time_scaled(0.0)


def test_fixed_rates_divide_too(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(SWEEP.replace('"sweep"', '"fixed"'))
    assert load_scenario(path).time_scaled(2.0).rates_at(0.0) == pytest.approx({"a": 1.5, "b": 0.5})


# plans do not move ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["temporal", "gpulet+int"])
@pytest.mark.parametrize("factor", [4.0, 20.0])
def test_the_peak_r_is_the_same_on_a_scaled_device(scheduler: str, factor: float) -> None:
    scenario = load_scenario(PACKAGED_SCENARIOS / "a100-scen3.toml")
    base = setting_for(scenario)
    scaled = setting_for(scenario.time_scaled(factor), scenario.profile().time_scaled(factor))
    # As the router does: interference fitted on the unscaled profile (slowdowns are ratios).
    scaled = replace(scaled, interference=base.interference)
    expected = find_peak(base, scheduler, PlanConfig()).peak_rps
    got = find_peak(scaled, scheduler, PlanConfig()).peak_rps
    assert expected is not None and expected > 0
    # Within one sweep step: rounding at a feasibility edge may flip one step, no more.
    assert got == pytest.approx(expected, abs=scenario.step_rps)


def test_a_cpu_scenario_is_one_device_of_its_cores() -> None:
    """`devices` in a cpu scenario counts cores: one device that many cores wide."""
    profile = DeviceProfile(
        name="cpu-test", kind="cpu", sizes=(1.0, 2.0, 4.0), full_size=4.0, memory_mb=1000.0,
        latency_points={("m", 1.0): ((1, 10.0),), ("m", 2.0): ((1, 6.0),)},
    )  # fmt: skip
    scenario = load_scenario(PACKAGED_SCENARIOS / "cpu-pair.toml")
    setting = setting_for(scenario, profile)
    assert [(d.device_id, d.profile.full_size, d.profile.sizes) for d in setting.devices] == [
        ("cpu0", 2.0, (1.0, 2.0))
    ]
