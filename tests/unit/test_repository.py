"""Model management's pure parts: load parameters, index states, and the "what if" check that
answers why a model cannot be placed before anything changes."""

from __future__ import annotations

import time

import pytest

from common.cluster import AgentInfo, DeviceInfo
from common.errors import BadRequest, NotLoadable, SloUnattainable, Unavailable
from common.profiles import find_profile
from router.control.repository import (
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADING,
    LoadParameters,
    check_rate,
    load_parameters,
    model_state,
    placement_problem,
)

pytestmark = pytest.mark.timeout(60)

SIM_DEVICES = tuple(DeviceInfo(f"sim{i}", "simulated", ()) for i in range(2))
SIMS = AgentInfo("s", "http://s", "host", 1, SIM_DEVICES, time.time())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", LoadParameters()),
        (b"{}", LoadParameters()),
        (b'{"parameters": {}}', LoadParameters()),
        (b'{"parameters": {"slo_ms": 50}}', LoadParameters(50.0, None)),
        (b'{"parameters": {"slo_ms": 50.5, "rate_rps": 0}}', LoadParameters(50.5, 0.0)),
    ],
)
def test_load_parameters(body: bytes, expected: LoadParameters) -> None:
    assert load_parameters(body) == expected


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{", "not JSON"),
        (b'{"parameters": []}', "parameters"),
        (b'{"parameters": {"slo_ms": 0}}', "slo_ms"),
        (b'{"parameters": {"slo_ms": "50"}}', "slo_ms"),
        (b'{"parameters": {"rate_rps": -1}}', "rate_rps"),
        (b'{"parameters": {"rate_rps": true}}', "rate_rps"),
        (b'{"parameters": {"config": "{}"}}', "config"),
    ],
)
def test_bad_load_parameters_name_the_fix(body: bytes, named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        load_parameters(body)


@pytest.mark.parametrize(
    ("flags", "state"),
    [
        ({"served": True, "ready": True, "loading": False, "unloading": False}, READY),
        ({"served": True, "ready": False, "loading": False, "unloading": False}, LOADING),
        ({"served": False, "ready": False, "loading": True, "unloading": False}, LOADING),
        ({"served": False, "ready": True, "loading": False, "unloading": True}, UNLOADING),
        ({"served": False, "ready": False, "loading": False, "unloading": False}, UNAVAILABLE),
    ],
)
def test_model_state(flags: dict[str, bool], state: str) -> None:
    row = model_state("m", reason="", **flags)
    assert row.state == state
    assert row.to_json() == {"name": "m", "version": "1", "state": state, "reason": row.reason}
    assert (row.reason == "") == (state == READY)


def test_an_unavailable_model_says_why() -> None:
    row = model_state("m", served=False, ready=False, loading=False, unloading=False,
                      reason="unloaded")  # fmt: skip
    assert (row.state, row.reason) == (UNAVAILABLE, "unloaded")


def problem(name: str, slos_ms: dict[str, float], **kw: object) -> object:
    options: dict[str, object] = {
        "scheduler": "gpulet+int", "profile": find_profile("a100-class"), "agents": [SIMS],
        "slos_ms": slos_ms, "rates_rps": {}, "interference": None, "retry_after_s": 1.0,
    }  # fmt: skip
    options.update(kw)
    return placement_problem(name, **options)  # type: ignore[arg-type]


def test_a_model_the_profile_serves_beside_the_others_has_no_problem() -> None:
    assert problem("vgg16", {"resnet50": 108.0, "vgg16": 142.0}) is None
    rated = problem("vgg16", {"resnet50": 108.0, "vgg16": 142.0},
                    rates_rps={"resnet50": 100.0, "vgg16": 50.0})  # fmt: skip
    assert rated is None


def test_a_model_without_profile_rows_is_not_loadable() -> None:
    found = problem("noop", {"resnet50": 108.0, "noop": 10.0})
    assert isinstance(found, NotLoadable)
    assert "no rows for noop" in found.message and "gpulet profile --nvidia" in found.message


def test_an_slo_no_plan_meets_is_unattainable_with_the_numbers() -> None:
    found = problem("vgg16", {"resnet50": 108.0, "vgg16": 0.01})
    assert isinstance(found, SloUnattainable)
    assert found.details == {"model": "vgg16", "slo_ms": 0.01}


def test_without_a_profile_yet_retry_later() -> None:
    found = problem("vgg16", {"vgg16": 142.0}, profile=None)
    assert isinstance(found, Unavailable) and found.retry_after_s == 1.0


def test_the_static_rule_places_anything() -> None:
    assert problem("noop", {"noop": 10.0}, scheduler="static", profile=None) is None


@pytest.mark.parametrize(
    ("rate_rps", "declared", "others", "named"),
    [
        (None, True, True, "declared rates"),
        (5.0, False, True, "no declared rates"),
    ],
)
def test_rates_are_declared_for_every_model_or_none(
    rate_rps: float | None, declared: bool, others: bool, named: str
) -> None:
    with pytest.raises(BadRequest, match=named):
        check_rate("m", rate_rps, declared=declared, others=others)


@pytest.mark.parametrize(
    ("rate_rps", "declared", "others"),
    [(5.0, True, True), (None, False, True), (5.0, False, False), (None, False, False)],
)
def test_a_rate_that_keeps_the_rule_is_accepted(
    rate_rps: float | None, declared: bool, others: bool
) -> None:
    check_rate("m", rate_rps, declared=declared, others=others)
