"""Model config files for `gpulet up --config PATH`: the served models, each with its SLO and an
optional expected rate, turned into the router's GPULET_MODELS, GPULET_SLOS and GPULET_RATES.

    [[models]]
    name = "resnet18"
    slo_ms = 200        # optional: the model's default SLO
    rate_rps = 20       # optional, but all models or none: a plan needs every model's rate

Parsing is pure (text in, dataclasses out); errors name the file, the entry and the fix.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_KEYS = frozenset({"name", "slo_ms", "rate_rps"})


@dataclass(frozen=True)
class ConfiguredModel:
    name: str
    slo_ms: float | None  # None: the model's default SLO
    rate_rps: float | None  # None: no declared rate


@dataclass(frozen=True)
class ModelConfig:
    models: tuple[ConfiguredModel, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def slos_ms(self) -> dict[str, float]:
        return {m.name: m.slo_ms for m in self.models if m.slo_ms is not None}

    @property
    def rates_rps(self) -> dict[str, float]:
        return {m.name: m.rate_rps for m in self.models if m.rate_rps is not None}


def parse_model_config(text: str, source: str = "<config>") -> ModelConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"models"})
    if extra:
        raise ValueError(f"{source}: unknown keys {extra}; the file holds [[models]] entries")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{source}: no models; add [[models]] entries with name = "..." and '
                         "slo_ms = ...")  # fmt: skip
    models = tuple(_model(entry, f"{source}: models[{i}]") for i, entry in enumerate(entries))
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise ValueError(f"{source}: model {model.name!r} is listed twice; list it once")
        seen.add(model.name)
    rated = [m.name for m in models if m.rate_rps is not None]
    if rated and len(rated) != len(models):
        unrated = [m.name for m in models if m.rate_rps is None]
        raise ValueError(f"{source}: {unrated} have no rate_rps while {rated} do; give every "
                         "model a rate_rps, or none (plan for the largest equal rate)")  # fmt: skip
    return ModelConfig(models)


def load_model_config(path: Path) -> ModelConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it: {exc.strerror}") from None
    return parse_model_config(text, str(path))


def _model(entry: Any, where: str) -> ConfiguredModel:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: use a [[models]] table")
    extra = sorted(set(entry) - MODEL_KEYS)
    if extra:
        raise ValueError(f"{where}: unknown keys {extra}; use {sorted(MODEL_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f'{where}: name = "<model>" is missing')
    slo_ms = _number(entry, "slo_ms", where, positive=True)
    rate_rps = _number(entry, "rate_rps", where, positive=False)
    return ConfiguredModel(name.strip(), slo_ms, rate_rps)


def _number(entry: Mapping[str, Any], key: str, where: str, *, positive: bool) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
            positive and value == 0):  # fmt: skip
        raise ValueError(f"{where}: {key} = {value!r}; use a number "
                         f"{'> 0' if positive else '>= 0'}")  # fmt: skip
    return float(value)


def router_env(
    models: tuple[str, ...], slos_ms: Mapping[str, float], rates_rps: Mapping[str, float]
) -> dict[str, str]:
    """GPULET_MODELS, and GPULET_SLOS / GPULET_RATES where any are given."""
    env = {"GPULET_MODELS": ",".join(models)}
    if slos_ms:
        env["GPULET_SLOS"] = ",".join(f"{n}={ms:g}" for n, ms in slos_ms.items())
    if rates_rps:
        env["GPULET_RATES"] = ",".join(f"{n}={r:g}" for n, r in rates_rps.items())
    return env
