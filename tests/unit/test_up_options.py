"""`gpulet up`'s options: a scenario's models, SLOs and devices, the time scale, flags on top."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from common.cli.main import build_parser, up_options
from common.cli.up import UpOptions, example_request
from common.models import spec_for
from common.scenarios import PACKAGED_SCENARIOS

pytestmark = pytest.mark.timeout(60)

SCEN3 = PACKAGED_SCENARIOS / "a100-scen3.toml"


def options(*flags: str) -> UpOptions:
    return up_options(build_parser().parse_args(["up", *flags]))


def test_a_simulated_scenario_gives_profile_devices_models_and_scaled_slos() -> None:
    got = options("--scenario", str(SCEN3), "--time-scale", "20")
    assert (got.simulated, got.devices, got.time_scale) == ("a100-class", 4, 20.0)
    assert got.models == ("resnet50", "vgg16", "mobilenet_v2")
    assert got.slos_ms == {"resnet50": 2160.0, "vgg16": 2840.0, "mobilenet_v2": 1280.0}
    assert not got.build  # nothing to build for simulated GPUs
    assert got.agent_cores is None


def test_flags_override_the_scenario() -> None:
    got = options("--scenario", str(SCEN3), "--devices", "2", "--models", "vgg16,resnet50")
    assert (got.devices, got.models, got.time_scale) == (2, ("vgg16", "resnet50"), 1.0)
    assert got.slos_ms == {"vgg16": 142.0, "resnet50": 108.0}  # only the served ones


def test_without_a_scenario_the_time_scale_stretches_the_default_slos() -> None:
    got = options("--simulated", "a100-class", "--models", "vgg16,resnet50", "--time-scale", "3")
    assert got.slos_ms == {
        "vgg16": 3 * spec_for("vgg16", simulated=True).default_slo_ms,
        "resnet50": 3 * spec_for("resnet50", simulated=True).default_slo_ms,
    }
    assert options("--simulated", "a100-class", "--models", "vgg16").slos_ms == {}


def test_a_cpu_scenario_takes_its_first_cores(tmp_path: Path) -> None:
    path = tmp_path / "cpu.toml"
    path.write_text('[cluster]\nkind = "cpu"\ndevices = 1\n'
                    '[[models]]\nname = "noop"\nslo_ms = 12\n')  # fmt: skip
    got = options("--scenario", str(path))
    assert got.simulated is None and got.build
    assert got.models == ("noop",) and got.slos_ms == {"noop": 12.0}
    assert got.agent_cores == str(min(os.sched_getaffinity(0)))
    # --agent-cores overrides the scenario's (benchmarks give serving a core of its own).
    last = str(max(os.sched_getaffinity(0)))
    assert options("--scenario", str(path), "--agent-cores", last).agent_cores == last
    # Cores this process may not use are refused in one line, before anything starts.
    with pytest.raises(SystemExit, match="outside this process's allowed set"):
        options("--scenario", str(path), "--agent-cores", "4096")


@pytest.mark.parametrize(
    ("flags", "scenario", "message"),
    [
        (["--time-scale", "4"], None, "--time-scale slows simulated GPUs"),
        (["--simulated", "a100-class", "--time-scale", "0"], None, "must be > 0"),
        (["--simulated", "a100-class", "--devices", "0"], None, "at least 1, not 0"),
        (["--agent-cores", "1-x"], None, "use e.g. '0-3,6'"),
        (["--simulated", "a100"], None, "set GPULET_PROFILES_DIR"),
        (["--model-repository", "m", "--simulated", "a100-class"], None,
         "--model-repository serves the folder's models on CPU"),
        ([], '[cluster]\nkind = "nvidia"\n[[models]]\nname = "noop"\nslo_ms = 9\n', "'nvidia'"),
        ([], '[cluster]\nkind = "cpu"\n[[models]]\nname = "noop"\ninstance = "n2"\nslo_ms = 9\n',
         "instances ['n2']"),
        ([], '[cluster]\nkind = "cpu"\ndevices = 100000\n[[models]]\nname = "noop"\nslo_ms = 9\n',
         "wants 100000 cores"),
    ],
)  # fmt: skip
def test_usage_errors_name_the_fix(
    tmp_path: Path, flags: list[str], scenario: str | None, message: str
) -> None:
    if scenario is not None:
        path = tmp_path / "s.toml"
        path.write_text(scenario)
        flags = [*flags, "--scenario", str(path)]
    with pytest.raises(SystemExit, match=re.escape(message)):
        options(*flags)


def test_a_model_repository_takes_its_names_unchecked_and_builds_nothing() -> None:
    got = options("--model-repository", "models", "--models", "mynet,other")
    assert (got.models, got.model_repository, got.build) == (("mynet", "other"),
                                                             Path("models"), False)  # fmt: skip
    assert options("--model-repository", "models").models == ()  # all of the folder's


def test_the_pasteable_example_on_simulated_gpus_is_a_token() -> None:
    example = example_request(["resnet50", "vgg16"], simulated=True)
    assert example["model"] == "resnet50"
    assert {k: v.shape for k, v in example["inputs"].items()} == {"input": (1, 1)}
    assert example_request(["resnet18", "noop"])["model"] == "noop"  # real devices: as before


def test_settings_out_of_range_exit_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from common.cli.main import main

    monkeypatch.setenv("GPULET_DEADLINE_FACTOR", "-1")
    with pytest.raises(SystemExit, match="gpulet router: GPULET_DEADLINE_FACTOR: .*greater than 0"):
        main(["router"])
    with pytest.raises(SystemExit, match="gpulet agent: GPULET_SIM_TIME_SCALE"):
        main(["agent", "--time-scale", "0"])
