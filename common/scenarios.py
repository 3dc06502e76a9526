"""Scenario files (common/data/scenarios/README.md): devices, models with SLOs, and how rates are
set. The project's scenarios ship as package data; a bare name (`a100-scen3`) finds them."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from common.profiles import DeviceProfile, find_profile

SIMULATED_KIND = "simulated"
# The scenarios the package ships (package data), beside its profiles (../profiles).
PACKAGED_SCENARIOS = Path(__file__).resolve().parent / "data" / "scenarios"


@dataclass(frozen=True)
class ScenarioModel:
    name: str  # served name: `instance` if given, else the model
    model: str
    slo_ms: float
    weight: float


@dataclass(frozen=True)
class RateStep:
    at_s: float
    multiplier: float


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    kind: str  # simulated | cpu | nvidia
    profile_name: str | None
    devices: int
    mode: str  # sweep | fixed | trace
    step_rps: float
    max_rps: float
    base_rps: float
    steps: tuple[RateStep, ...]
    duration_s: float
    models: tuple[ScenarioModel, ...]
    path: Path

    @property
    def simulated(self) -> bool:
        """Served by simulated devices: every model then takes the token signature."""
        return self.kind == SIMULATED_KIND

    def rates_at(self, rate: float) -> dict[str, float]:
        """Per-model rate: weight · r for sweeps and traces, the weight itself when fixed."""
        if self.mode == "fixed":
            return {m.name: m.weight for m in self.models}
        return {m.name: m.weight * rate for m in self.models}

    def time_scaled(self, factor: float) -> Scenario:
        """The scenario on devices `factor` times slower (`DeviceProfile.time_scaled`).

        Every rate divides by `factor`: the weights do, since a sweep or trace rate is
        weight · r and a fixed rate is the weight itself, so r (step_rps, max_rps, base_rps, a
        trace's multipliers) keeps the scenario's units and `gpulet peak`'s r* still reads as
        r. Every SLO multiplies by `factor`. A trace's step times stay as written.
        """
        if factor <= 0:
            raise ValueError(f"time scale must be > 0, not {factor}")
        if factor == 1:
            return self
        models = tuple(
            replace(m, slo_ms=m.slo_ms * factor, weight=m.weight / factor) for m in self.models
        )
        return replace(self, models=models)

    def profile(self) -> DeviceProfile:
        if self.profile_name is None:
            raise ValueError(f"scenario {self.name} ({self.kind}) names no profile")
        return find_profile(self.profile_name, near=self.path)


def scenario_path(path: Path) -> Path:
    """`path` itself when it exists; a bare name (`a100-scen3`, or `a100-scen3.toml`) that is no
    file here names a shipped scenario. Otherwise `path`, so the caller's error names it."""
    if path.exists() or path.parent != Path("."):
        return path
    shipped = PACKAGED_SCENARIOS / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    return shipped if shipped.exists() else path


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in PACKAGED_SCENARIOS.glob("*.toml"))


def load_scenario(path: Path) -> Scenario:
    path = scenario_path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the scenario ({exc.strerror}); give a path or a "
                         f"shipped scenario's name: {', '.join(shipped_scenarios())}") from None
    data = tomllib.loads(text)
    cluster, rate = data.get("cluster", {}), data.get("rate", {})
    try:
        models = tuple(
            ScenarioModel(
                name=str(m.get("instance", m["name"])),
                model=str(m["name"]),
                slo_ms=float(m["slo_ms"]),
                weight=float(m.get("weight", 1.0)),
            )
            for m in data.get("models", [])
        )
    except (KeyError, TypeError, AttributeError) as exc:  # the callers answer ValueErrors
        raise ValueError(f"{path}: each [[models]] entry needs name and slo_ms (and a numeric "
                         f"weight, if any): {exc!r}") from None  # fmt: skip
    if not models:
        raise ValueError(f"{path}: a scenario needs at least one [[models]] entry")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: served names repeat {names}; give duplicates an `instance`")
    return Scenario(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        kind=str(cluster.get("kind", SIMULATED_KIND)),
        profile_name=cluster.get("profile"),
        devices=int(cluster.get("devices", 1)),
        mode=str(rate.get("mode", "sweep")),
        step_rps=float(rate.get("step_rps", 10)),
        max_rps=float(rate.get("max_rps", 1000)),
        base_rps=float(rate.get("base_rps", 0)),
        steps=tuple(
            RateStep(float(s["at_s"]), float(s["multiplier"])) for s in rate.get("steps", [])
        ),
        duration_s=float(rate.get("duration_s", 0)),
        models=models,
        path=path,
    )
