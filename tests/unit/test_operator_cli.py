"""`gpulet status` and `gpulet plan|peak` arguments: a scenario or --url, never both; a router that
is not there is named; the offline scenario form still plans. (Against a running router:
tests/e2e/test_operator.py.)"""

from __future__ import annotations

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
