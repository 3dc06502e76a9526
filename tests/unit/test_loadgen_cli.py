"""`gpulet loadgen`'s arguments: help renders, usage errors exit 2 before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cli.main import build_parser, main


def test_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["loadgen", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--url", "--rate", "--replay", "--process", "--cv", "--warmup", "--plot",
                   "--time-scale"):  # fmt: skip
        assert option in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give the rate r (--rate)"),
        (["--rate", "10", "--warmup", "5", "--duration", "5"], "--warmup 5"),
        (["--rate", "10", "--replay", "missing.txt"], "missing.txt"),
        (["--rate", "10", "--time-scale", "0"], "time scale must be > 0"),
    ],
)
def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('[rate]\nmode = "sweep"\n[[models]]\nname = "noop"\nslo_ms = 10\n')
    # Port 9 (discard) is never contacted: each case fails before a request is sent.
    code = main(["loadgen", str(scenario), "--url", "http://127.0.0.1:9", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_fixed_scenarios_take_no_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "f.toml"
    scenario.write_text('[rate]\nmode = "fixed"\n[[models]]\nname = "noop"\nslo_ms = 10\n')
    assert main(["loadgen", str(scenario), "--url", "http://127.0.0.1:9", "--rate", "3"]) == 2
    assert "fixes each model's rate" in capsys.readouterr().err
