"""common.errors (codes, statuses, bodies, from_code) and agent.devices (core lists, discovery)."""

from __future__ import annotations

import os

import pytest

from agent.devices import discover_cpu, parse_cores
from common.errors import (
    BackendFailed,
    BadRequest,
    DeadlinePassed,
    GpuletError,
    Overloaded,
    PayloadTooLarge,
    SloUnattainable,
    Unavailable,
    UnknownModel,
    from_code,
)

pytestmark = pytest.mark.timeout(30)

ERRORS = [
    pytest.param(GpuletError, "internal", 500, id="GpuletError"),
    pytest.param(BadRequest, "bad_request", 400, id="BadRequest"),
    pytest.param(UnknownModel, "unknown_model", 404, id="UnknownModel"),
    pytest.param(PayloadTooLarge, "payload_too_large", 413, id="PayloadTooLarge"),
    pytest.param(SloUnattainable, "slo_unattainable", 422, id="SloUnattainable"),
    pytest.param(Unavailable, "unavailable", 503, id="Unavailable"),
    pytest.param(Overloaded, "overloaded", 503, id="Overloaded"),
    pytest.param(BackendFailed, "backend_failed", 502, id="BackendFailed"),
    pytest.param(DeadlinePassed, "deadline_exceeded", 504, id="DeadlinePassed"),
]


@pytest.mark.parametrize(("cls", "code", "status"), ERRORS)
def test_code_status_and_body(cls: type[GpuletError], code: str, status: int) -> None:
    error = cls("it broke", limit=3, models=["a"])
    assert (error.code, error.status) == (code, status)
    assert isinstance(error, GpuletError)
    assert str(error) == error.message == "it broke"
    assert error.to_body() == {
        "error": {"code": code, "message": "it broke", "limit": 3, "models": ["a"]}
    }


@pytest.mark.parametrize(("cls", "code", "status"), ERRORS)
def test_from_code_round_trip(cls: type[GpuletError], code: str, status: int) -> None:
    original = cls("why", queued=5)
    rebuilt = from_code(original.code, original.message, **original.details)
    assert type(rebuilt) is cls
    assert rebuilt.to_body() == original.to_body()
    assert rebuilt.status == status


@pytest.mark.parametrize("code", ["no_such_code", "", "BAD_REQUEST"])
def test_from_code_unknown_is_internal(code: str) -> None:
    error = from_code(code, "strange", hint=1)
    assert type(error) is GpuletError
    assert (error.status, error.code, error.details) == (500, "internal", {"hint": 1})


@pytest.mark.parametrize(
    ("make", "retry_after_s"),
    [
        pytest.param(lambda: Unavailable("x"), 1.0, id="default"),
        pytest.param(lambda: Unavailable("x", retry_after_s=0.25), 0.25, id="unavailable"),
        pytest.param(lambda: Overloaded("x", retry_after_s=3.0, queued=9), 3.0, id="overloaded"),
        pytest.param(lambda: from_code("overloaded", "x", retry_after_s=2.0), 2.0, id="from-code"),
        pytest.param(lambda: BadRequest("x"), None, id="not-retryable"),
    ],
)
def test_retry_after(make, retry_after_s: float | None) -> None:
    error = make()
    assert error.retry_after_s == retry_after_s
    # It travels as Retry-After, not in the JSON body.
    assert "retry_after_s" not in error.to_body()["error"]


def test_overloaded_is_an_unavailable() -> None:
    # The router retries elsewhere on Unavailable; Overloaded must be caught by the same clause.
    with pytest.raises(Unavailable):
        raise Overloaded("full", queued=1, limit=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0-3,6", (0, 1, 2, 3, 6), id="range-and-single"),
        pytest.param(" 1 , 2 ", (1, 2), id="spaces"),
        pytest.param("5", (5,), id="one"),
        pytest.param("3-3", (3,), id="one-wide-range"),
        pytest.param("6,0-2,1", (0, 1, 2, 6), id="unsorted-overlapping"),
        pytest.param("1,,2,", (1, 2), id="empty-parts"),
    ],
)
def test_parse_cores(text: str, expected: tuple[int, ...]) -> None:
    assert parse_cores(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("3-1", "'3-1'", id="reversed-range"),
        pytest.param("x", "'x'", id="not-a-number"),
        pytest.param("0,a-2", "'a-2'", id="bad-range-end"),
        pytest.param("1-2-3", "'1-2-3'", id="two-dashes"),
        pytest.param("", "names no core", id="empty"),
        pytest.param(" , ", "names no core", id="only-commas"),
    ],
)
def test_parse_cores_rejects(text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cores(text)
    assert words in str(info.value)


AFFINITY = tuple(sorted(os.sched_getaffinity(0)))


@pytest.mark.parametrize("spec", [None, ""], ids=["none", "empty"])
def test_discover_cpu_defaults_to_the_affinity_set(spec: str | None) -> None:
    device = discover_cpu(spec)
    assert (device.device_id, device.kind, device.cores) == ("cpu0", "cpu", AFFINITY)


def test_discover_cpu_narrows_to_a_subset() -> None:
    subset = AFFINITY[:1] + AFFINITY[-1:]
    device = discover_cpu(",".join(map(str, reversed(subset))))
    assert device.cores == tuple(sorted(set(subset)))


def test_discover_cpu_refuses_a_core_outside_the_affinity() -> None:
    outside = max(AFFINITY) + 1
    with pytest.raises(ValueError) as info:
        discover_cpu(f"{AFFINITY[0]},{outside}")
    assert f"[{outside}]" in str(info.value)
