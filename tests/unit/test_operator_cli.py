"""`gpulet status` and `gpulet plan|peak` arguments: a scenario or --url, never both; a router that
is not there is named; the offline scenario form still plans. (Against a running router:
tests/e2e/test_operator.py.)"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from common.cli.main import main
from common.scenarios import PACKAGED_SCENARIOS

pytestmark = pytest.mark.timeout(60)
SCENARIO = PACKAGED_SCENARIOS / "a100-scen1.toml"
NOBODY = "http://127.0.0.1:9"  # the discard port: nothing answers HTTP there


@pytest.mark.parametrize("command", ["plan", "peak"])
@pytest.mark.parametrize("extra", [[], [str(SCENARIO), "--url", NOBODY]], ids=["neither", "both"])
def test_plan_and_peak_take_a_scenario_or_a_url(
    command: str, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, *extra]) == 2
    assert "give a scenario file or --url URL" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["status"], ["plan"], ["peak"]])
def test_an_unreachable_router_is_named(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--url", NOBODY]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the router at {NOBODY}" in err
    assert err.startswith(f"gpulet {argv[0]}:")


def test_the_offline_form_still_plans_a_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(SCENARIO), "--json", "--scheduler", "gpulet"]) in (0, 1)
    planned = orjson.loads(capsys.readouterr().out)
    assert planned["scheduler"] == "gpulet" and planned["gpulets"]


def _cpu_profile() -> dict[str, object]:
    # mobilenet_v2 and resnet18 on 1 and 2 cores: enough for cpu-pair to plan
    def points(base: float) -> list[list[float]]:
        return [[1, base], [2, 1.8 * base], [4, 3.4 * base]]

    latency = [
        {"model": model, "size": cores, "points": points(ms / cores)}
        for model, ms in (("mobilenet_v2", 8.0), ("resnet18", 40.0))
        for cores in (1.0, 2.0)
    ]
    return {"name": "cpu-test", "kind": "cpu", "sizes": [1.0, 2.0], "full_size": 2.0,
            "memory_mb": 4096.0, "latency": latency,
            "model_memory_mb": {"mobilenet_v2": 20.0, "resnet18": 60.0}}  # fmt: skip


@pytest.mark.parametrize("wrapped", [False, True], ids=["profile-json", "agent-disk-cache"])
def test_peak_reads_a_profile_file_or_an_agents_disk_cache(
    wrapped: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = _cpu_profile()
    body = {"profile": profile, "meta": {"models": {}}} if wrapped else profile
    path = tmp_path / "profile.json"
    path.write_bytes(orjson.dumps(body))
    argv = ["plan", "cpu-pair", "--profile-json", str(path), "--rate", "2", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    assert orjson.loads(capsys.readouterr().out)["gpulets"]


def test_a_file_that_is_no_profile_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "profile.json"
    path.write_bytes(orjson.dumps({"profile": {"name": "x"}, "meta": {}}))
    assert main(["peak", "cpu-pair", "--profile-json", str(path)]) == 2
    assert f"{path} is not a measured profile" in capsys.readouterr().err
