"""common.scenarios: the shipped scenario files load, rates follow the mode, names are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.scenarios import PACKAGED_SCENARIOS, RateStep, ScenarioModel, load_scenario

pytestmark = pytest.mark.timeout(60)

SHARED_SCENARIOS = PACKAGED_SCENARIOS
REAL_PARAMS = [pytest.param(p, id=p.stem) for p in sorted(SHARED_SCENARIOS.glob("*.toml"))]


@pytest.mark.parametrize("path", REAL_PARAMS)
def test_every_real_scenario_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPULET_PROFILES_DIR", raising=False)
    scenario = load_scenario(path)
    assert scenario.name == path.stem  # every shared file names itself after its file
    assert scenario.kind in {"simulated", "cpu", "nvidia"}
    assert scenario.mode in {"sweep", "fixed", "trace"}
    assert scenario.devices >= 1
    assert scenario.models
    names = [m.name for m in scenario.models]
    assert len(set(names)) == len(names)
    assert all(m.slo_ms > 0 and m.weight > 0 for m in scenario.models)
    if scenario.mode == "trace":
        assert scenario.steps and scenario.base_rps > 0 and scenario.duration_s > 0
    if scenario.kind == "cpu":
        assert scenario.profile_name is None
        with pytest.raises(ValueError, match="names no profile"):
            scenario.profile()
    else:
        # simulated scenarios run on their profile: every model must be in it
        profile = scenario.profile()
        assert profile.name == scenario.profile_name
        assert {m.model for m in scenario.models} <= set(profile.models())


SHARED_RATES = [
    pytest.param(
        "a100-scen1",
        10.0,
        {"inception_v3": 20.0, "resnet50": 20.0, "vgg16": 10.0, "densenet201": 10.0},
        id="a100-scen1-sweep-2r-2r-r-r",
    ),
    pytest.param(
        "v100-mix",
        7.5,
        {"alexnet": 15.0, "resnet50": 7.5, "ssd": 7.5, "vgg19": 7.5},
        id="v100-mix-sweep",
    ),
    pytest.param(
        "cpu-mix",
        4.0,
        {"lenet": 40.0, "mobilenet_v2": 4.0, "resnet18": 2.0, "bert_mini": 4.0},
        id="cpu-mix-sweep",
    ),
    # trace: the caller passes base_rps * multiplier as the rate
    pytest.param(
        "sim-steps",
        200.0 * 2.5,
        {"inception_v3": 1000.0, "resnet50": 1000.0, "vgg16": 500.0, "densenet201": 500.0},
        id="sim-steps-trace-at-60s",
    ),
]


@pytest.mark.parametrize(("name", "rate", "expected"), SHARED_RATES)
def test_rates_of_shared_scenarios(name: str, rate: float, expected: dict[str, float]) -> None:
    scenario = load_scenario(SHARED_SCENARIOS / f"{name}.toml")
    assert scenario.rates_at(rate) == pytest.approx(expected)


def test_shared_trace_steps() -> None:
    scenario = load_scenario(SHARED_SCENARIOS / "sim-steps.toml")
    assert scenario.mode == "trace"
    assert scenario.base_rps == 200.0
    assert scenario.duration_s == 240.0
    assert scenario.devices == 8
    assert scenario.profile_name == "a100-class"
    assert scenario.steps == (
        RateStep(0.0, 1.0),
        RateStep(60.0, 2.5),
        RateStep(120.0, 0.5),
        RateStep(180.0, 1.5),
    )


def test_shared_sweep_fields() -> None:
    scenario = load_scenario(SHARED_SCENARIOS / "a100-scen5.toml")
    assert (scenario.kind, scenario.devices, scenario.mode) == ("simulated", 4, "sweep")
    assert (scenario.step_rps, scenario.max_rps) == (10.0, 20000.0)
    assert scenario.models[-1] == ScenarioModel("bert_large", "bert_large", 50.0, 1.0)
    assert scenario.path == SHARED_SCENARIOS / "a100-scen5.toml"


# small hand-written scenarios -------------------------------------------------------------
def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SWEEP = """\
name = "two"
[cluster]
kind = "simulated"
profile = "toy"
devices = 3
[rate]
mode = "sweep"
step_rps = 5
max_rps = 50
[[models]]
name = "a"
slo_ms = 10
weight = 3.0
[[models]]
name = "b"
slo_ms = 20
"""
FIXED = """\
[rate]
mode = "fixed"
[[models]]
name = "a"
slo_ms = 10
weight = 12.5
[[models]]
name = "b"
slo_ms = 20
weight = 0.5
"""
TRACE = """\
[rate]
mode = "trace"
base_rps = 40
duration_s = 30
steps = [
  { at_s = 0, multiplier = 1 },
  { at_s = 10, multiplier = 3 },
  { at_s = 20, multiplier = 0.25 },
]
[[models]]
name = "a"
slo_ms = 10
weight = 2
"""

RATES = [
    pytest.param(SWEEP, 4.0, {"a": 12.0, "b": 4.0}, id="sweep-weight-times-r"),
    pytest.param(SWEEP, 0.0, {"a": 0.0, "b": 0.0}, id="sweep-zero"),
    pytest.param(FIXED, 4.0, {"a": 12.5, "b": 0.5}, id="fixed-is-the-weight"),
    pytest.param(FIXED, 1000.0, {"a": 12.5, "b": 0.5}, id="fixed-ignores-r"),
    pytest.param(TRACE, 40.0 * 3, {"a": 240.0}, id="trace-weight-times-r"),
]


@pytest.mark.parametrize(("text", "rate", "expected"), RATES)
def test_rates_at(tmp_path: Path, text: str, rate: float, expected: dict[str, float]) -> None:
    assert load_scenario(_write(tmp_path, text)).rates_at(rate) == pytest.approx(expected)


def test_fields_and_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, SWEEP))
    assert scenario.name == "two"
    assert (scenario.kind, scenario.profile_name, scenario.devices) == ("simulated", "toy", 3)
    assert (scenario.step_rps, scenario.max_rps) == (5.0, 50.0)
    assert scenario.models[1] == ScenarioModel("b", "b", 20.0, 1.0)  # weight defaults to 1

    bare = load_scenario(_write(tmp_path, FIXED, "bare-name.toml"))
    assert bare.name == "bare-name"  # no `name`: the file's stem
    assert bare.description == ""
    assert (bare.kind, bare.profile_name, bare.devices) == ("simulated", None, 1)
    assert (bare.step_rps, bare.max_rps, bare.base_rps, bare.duration_s) == (10.0, 1000.0, 0.0, 0.0)
    assert bare.steps == ()


def test_mode_defaults_to_sweep(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, '[[models]]\nname = "a"\nslo_ms = 5\nweight = 2\n'))
    assert scenario.mode == "sweep"
    assert scenario.rates_at(3.0) == {"a": 6.0}


def test_trace_steps_parsed(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, TRACE))
    assert scenario.mode == "trace"
    assert (scenario.base_rps, scenario.duration_s) == (40.0, 30.0)
    assert scenario.steps == (RateStep(0.0, 1.0), RateStep(10.0, 3.0), RateStep(20.0, 0.25))
    assert all(
        isinstance(s.at_s, float) and isinstance(s.multiplier, float) for s in scenario.steps
    )


INSTANCES = """\
[[models]]
name = "resnet50"
instance = "resnet50-tight"
slo_ms = 50
weight = 2
[[models]]
name = "resnet50"
instance = "resnet50-loose"
slo_ms = 200
[[models]]
name = "vgg16"
slo_ms = 142
"""


def test_instance_names_are_the_served_names(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, INSTANCES))
    assert scenario.models == (
        ScenarioModel("resnet50-tight", "resnet50", 50.0, 2.0),
        ScenarioModel("resnet50-loose", "resnet50", 200.0, 1.0),
        ScenarioModel("vgg16", "vgg16", 142.0, 1.0),
    )
    assert scenario.rates_at(10.0) == {
        "resnet50-tight": 20.0,
        "resnet50-loose": 10.0,
        "vgg16": 10.0,
    }


REJECTED = [
    pytest.param('[[models]]\nname = "a"\n', "needs name and slo_ms", id="model-without-slo"),
    pytest.param('models = "a"\n', "needs name and slo_ms", id="models-not-tables"),
    pytest.param(
        '[[models]]\nname = "a"\nslo_ms = 1\n[[models]]\nname = "a"\nslo_ms = 2\n',
        "served names repeat.*instance",
        id="duplicate-without-instance",
    ),
    pytest.param(
        '[[models]]\nname = "a"\nslo_ms = 1\n[[models]]\nname = "b"\ninstance = "a"\nslo_ms = 2\n',
        "served names repeat",
        id="instance-clashes-with-a-name",
    ),
    pytest.param(
        '[[models]]\nname = "a"\ninstance = "x"\nslo_ms = 1\n'
        '[[models]]\nname = "b"\ninstance = "x"\nslo_ms = 2\n',
        "served names repeat",
        id="instance-repeats",
    ),
    pytest.param('name = "empty"\n[cluster]\nkind = "cpu"\n', "at least one", id="no-models"),
    pytest.param("models = []\n", "at least one", id="empty-models-list"),
]


@pytest.mark.parametrize(("text", "message"), REJECTED)
def test_bad_scenarios_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as caught:
        load_scenario(path)
    assert str(path) in str(caught.value)


# profile() ----------------------------------------------------------------------------------
TOY_TOML = """\
name = "toy"
vendor = "nvidia"
sizes_pct = [50, 100]
memory_mb = 8000
latency = "toy.csv"
"""
TOY_CSV = """\
# hand-written for a test
model,batch,size_pct,latency_ms
a,1,50,4.0
a,2,50,6.0
a,1,100,2.0
"""


def test_profile_found_next_to_the_scenario_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPULET_PROFILES_DIR", raising=False)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "toy.toml").write_text(TOY_TOML)
    (profiles / "toy.csv").write_text(TOY_CSV)
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    scenario = load_scenario(_write(scenarios, SWEEP))
    profile = scenario.profile()
    assert profile.name == "toy"
    assert profile.source == str(profiles / "toy.toml")
    assert profile.latency_ms("a", 1, 75.0) == pytest.approx(3.0)


def test_profile_missing_is_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPULET_PROFILES_DIR", raising=False)
    scenario = load_scenario(_write(tmp_path, SWEEP.replace('"toy"', '"absent-7c1e"')))
    with pytest.raises(FileNotFoundError, match="absent-7c1e"):
        scenario.profile()


def test_scenario_without_profile(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, FIXED))
    with pytest.raises(ValueError, match="names no profile"):
        scenario.profile()
