"""Planning a scenario file offline: what `gpulet plan` and `gpulet peak` and the benchmarks run."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from common.interference import InterferenceModel, NoInterference
from common.profiles import DeviceProfile
from common.scenarios import Scenario, load_scenario, scenario_path, shipped_scenarios
from router.scheduling.peak import PeakResult, peak_search
from router.scheduling.schedulers import SCHEDULERS, SearchTooLarge
from router.scheduling.serving_cpu import plan_serving, request_bytes, request_cost_ms
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig


@dataclass(frozen=True)
class Setting:
    """A scenario made concrete: its profile, devices and interference model."""

    scenario: Scenario
    profile: DeviceProfile
    devices: tuple[Device, ...]
    interference: InterferenceModel
    interference_note: str
    # Router + agent CPU per request per model, charged on the devices in `serving_shared`
    # (serving_cpu.py): a cpu scenario's cores, which serving shares by default.
    serving_ms: Mapping[str, float] = field(default_factory=dict)
    serving_shared: frozenset[str] = frozenset()


def setting_for(
    scenario: Scenario, profile: DeviceProfile | None = None, devices: int | None = None
) -> Setting:
    profile = profile or scenario.profile()
    count = devices or scenario.devices
    serving_ms: dict[str, float] = {}
    shared: frozenset[str] = frozenset()
    if profile.kind == "cpu":
        # A cpu scenario's `devices` counts cores: one device of that many, as a live agent
        # registers its cores (live.cpu_devices sizes the profile the same way).
        profile = replace(profile, sizes=tuple(s for s in profile.sizes if s <= count),
                          full_size=float(count))  # fmt: skip
        made: tuple[Device, ...] = (Device("cpu0", "offline", profile),)
        serving_ms, shared = catalog_serving_ms(scenario), frozenset({"cpu0"})
    else:
        made = tuple(Device(f"gpu{i}", "offline", profile) for i in range(count))
    model, note = interference_for(profile)
    return Setting(scenario, profile, made, model, note, serving_ms, shared)


def catalog_serving_ms(scenario: Scenario) -> dict[str, float]:
    """Serving CPU per request of the scenario's models, estimated from their request size."""
    from common.models import CATALOG

    return {m.model: request_cost_ms(request_bytes(CATALOG[m.model]))
            for m in scenario.models if m.model in CATALOG}  # fmt: skip


def interference_for(profile: DeviceProfile) -> tuple[InterferenceModel, str]:
    if profile.kind == "cpu":
        # Disjoint core sets measured isolated within noise (machine-notes section 3).
        return NoInterference(), "cpu core sets: no interference (measured isolated)"
    from common.interference_models import fitted_for

    fitted = fitted_for(profile.name)
    if fitted is None:
        return NoInterference(), f"no fitted interference model for {profile.name}: none assumed"
    return fitted, f"interference: fitted model for {profile.name}"


def demands_at(scenario: Scenario, rate_rps: float) -> list[ModelDemand]:
    rates = scenario.rates_at(rate_rps)
    return [ModelDemand(m.name, m.model, rates[m.name], m.slo_ms) for m in scenario.models]


def plan_at(setting: Setting, scheduler: str, rate_rps: float, config: PlanConfig) -> Plan:
    result = plan_serving(
        scheduler, demands_at(setting.scenario, rate_rps), setting.devices, config,
        setting.interference, setting.serving_ms, setting.serving_shared,
    )  # fmt: skip
    if scheduler in ("gpulet+int", "ideal"):
        result = replace(result, explanation=(*result.explanation, setting.interference_note))
    return result


@dataclass(frozen=True)
class PeakRow:
    scheduler: str
    peak_rps: float | None  # None: too large to search
    plans: int
    seconds: float
    result: PeakResult | None


def find_peak(setting: Setting, scheduler: str, config: PlanConfig) -> PeakRow:
    started = time.perf_counter()
    scenario = setting.scenario
    try:
        result = peak_search(
            lambda r: plan_at(setting, scheduler, r, config), scenario.step_rps, scenario.max_rps
        )
    except SearchTooLarge:
        return PeakRow(scheduler, None, 0, time.perf_counter() - started, None)
    return PeakRow(
        scheduler, result.rate_rps, result.plans_made, time.perf_counter() - started, result
    )


def schedulers_named(name: str) -> tuple[str, ...]:
    if name == "all":
        return SCHEDULERS
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from all, {', '.join(SCHEDULERS)}")
    return (name,)


def load_cpu_profile(path: Path) -> DeviceProfile:
    """A measured profile from `gpulet profile --json FILE` or from an agent's disk cache,
    which wraps the same profile with the facts it was measured under."""
    try:
        data = orjson.loads(path.read_bytes())
        if isinstance(data, dict) and "profile" in data and "meta" in data:
            data = data["profile"]
        return DeviceProfile.from_json(data)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a measured profile ({exc!r})") from exc


def open_scenario(path: Path) -> Scenario:
    found = scenario_path(path)  # a bare name finds a shipped scenario
    if not found.exists():
        raise FileNotFoundError(f"no scenario file {path}; shipped scenarios: "
                                f"{', '.join(shipped_scenarios())}")  # fmt: skip
    return load_scenario(found)
