"""`gpulet up --config`: the model config file's parsing, and what it sets for the router."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cli.main import build_parser, up_options
from common.model_config import ConfiguredModel, load_model_config, parse_model_config, router_env

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[[models]]
name = "resnet18"
slo_ms = 200
rate_rps = 20

[[models]]
name = "noop"
slo_ms = 12.5
rate_rps = 500
"""


def test_a_config_gives_models_slos_and_rates_in_order() -> None:
    config = parse_model_config(CONFIG)
    assert config.models == (ConfiguredModel("resnet18", 200.0, 20.0),
                             ConfiguredModel("noop", 12.5, 500.0))  # fmt: skip
    assert config.names == ("resnet18", "noop")
    assert router_env(config.names, config.slos_ms, config.rates_rps) == {
        "GPULET_MODELS": "resnet18,noop",
        "GPULET_SLOS": "resnet18=200,noop=12.5",
        "GPULET_RATES": "resnet18=20,noop=500",
    }


def test_slo_and_rate_are_optional() -> None:
    config = parse_model_config('[[models]]\nname = "lenet"\n')
    assert config.models == (ConfiguredModel("lenet", None, None),)
    assert router_env(config.names, config.slos_ms, config.rates_rps) == {"GPULET_MODELS": "lenet"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[[models", "not valid TOML"),
        ("", "no models"),
        ("models = []", "no models"),
        ("scheduler = 'x'\n[[models]]\nname = 'noop'", "unknown keys \\['scheduler'\\]"),
        ("[[models]]\nslo_ms = 5", "name"),
        ("[[models]]\nname = 'noop'\nslo = 5", "unknown keys \\['slo'\\]"),
        ("[[models]]\nname = 'noop'\nslo_ms = 0", "slo_ms = 0"),
        ("[[models]]\nname = 'noop'\nslo_ms = 'fast'", "slo_ms"),
        ("[[models]]\nname = 'noop'\nrate_rps = -1", "rate_rps = -1"),
        ("[[models]]\nname = 'noop'\n[[models]]\nname = 'noop'", "listed twice"),
        ("[[models]]\nname = 'noop'\nrate_rps = 5\n[[models]]\nname = 'lenet'",
         "\\['lenet'\\] have no rate_rps"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_file_and_the_fix(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named) as raised:
        parse_model_config(text, "models.toml")
    assert str(raised.value).startswith("models.toml: ")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.toml: cannot read it"):
        load_model_config(tmp_path / "missing.toml")


def test_gpulet_up_config_sets_the_routers_models_slos_and_rates(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(CONFIG)
    options = up_options(build_parser().parse_args(["up", "--config", str(path)]))
    assert options.models == ("resnet18", "noop")
    assert dict(options.slos_ms) == {"resnet18": 200.0, "noop": 12.5}
    assert dict(options.rates_rps) == {"resnet18": 20.0, "noop": 500.0}
    picked = up_options(build_parser().parse_args(["up", "--config", str(path),
                                                   "--models", "noop"]))  # fmt: skip
    assert (picked.models, dict(picked.rates_rps)) == (("noop",), {"noop": 500.0})


def test_gpulet_up_config_errors_exit_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("[[models]]\nname = 'nope'\n")
    with pytest.raises(SystemExit, match="unknown models \\['nope'\\]"):
        up_options(build_parser().parse_args(["up", "--config", str(path)]))
    path.write_text("[[models]]\nname = 'noop'\nslo_ms = -3\n")
    with pytest.raises(SystemExit, match="--config: .*slo_ms = -3"):
        up_options(build_parser().parse_args(["up", "--config", str(path)]))
