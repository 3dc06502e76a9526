"""Every failure a client can meet answers with its status, a stable code and a usable message."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import BODY_LIMIT_BYTES, running
from tests.support import http
from tests.support.system import RunningSystem, wait_until

# The first system on a fresh machine measures its CPU profile (~30 s) before it is ready.
pytestmark = pytest.mark.timeout(300)

BERT_OK = {"input_ids": [[1] * 128], "attention_mask": [[1] * 128]}
NOOP_ROW = [0.5] * 16


def post_raw(system: RunningSystem, body: bytes, **headers: str) -> http.Answer:
    return http.request("POST", f"{system.url}/v1/infer", body, headers=headers)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "noop", "inputs": {}}, ["missing inputs ['input']"]),
        ({"model": "noop", "inputs": {"input": [NOOP_ROW], "extra": [1]}},
         ["unexpected inputs ['extra']"]),
        ({"model": "noop", "inputs": {"input": [[0.5] * 15]}}, ["'input'", "float32[batch, 16]"]),
        ({"model": "noop", "inputs": {"input": NOOP_ROW}}, ["add a batch axis"]),
        ({"model": "noop", "inputs": {"input": [["x"] * 16]}}, ["must be numbers"]),
        ({"model": "noop", "inputs": {"input": {"shape": [1, 16], "dtype": "int64",
                                                "data": [1] * 16}}},
         ["dtype 'int64' given", "'float32' expected"]),
        ({"model": "bert_mini", "inputs": {**BERT_OK, "input_ids": [[0.5] * 128]}},
         ["'input_ids'", "fractional"]),
        ({"model": "noop", "inputs": {"input": [NOOP_ROW]}, "slo_ms": -5}, ["slo_ms"]),
        ({"model": "noop", "input": {}}, ["unknown fields ['input']"]),
    ],
    ids=["missing-input", "extra-input", "wrong-shape", "no-batch-axis", "non-numeric",
         "wrong-dtype", "fractional-int", "bad-slo", "misspelt-field"],
)  # fmt: skip
def test_bad_input_is_400_naming_what_was_expected(
    system: RunningSystem, body: dict[str, object], words: list[str]
) -> None:
    answer = system.post("/v1/infer", body)
    assert (answer.status, answer.code) == (400, "bad_request")
    for word in words:
        assert word in answer.body["error"]["message"]
    assert answer.body["error"]["request_id"]


def test_malformed_json_is_400(system: RunningSystem) -> None:
    answer = post_raw(system, b'{"model": "noop", "inputs": ')
    assert (answer.status, answer.code) == (400, "bad_request")
    assert "not valid JSON" in answer.body["error"]["message"]


def test_unknown_model_is_404_listing_the_known_ones(system: RunningSystem) -> None:
    answer = system.post("/v1/infer", {"model": "resnet1000", "inputs": {}})
    assert (answer.status, answer.code) == (404, "unknown_model")
    assert "resnet18" in answer.body["error"]["models"]
    assert "resnet18" in answer.body["error"]["message"]


def test_body_over_the_limit_is_413_before_it_is_parsed(system: RunningSystem) -> None:
    filler = base64.b64encode(bytes(BODY_LIMIT_BYTES)).decode()
    body = f'{{"model": "noop", "inputs": {{"input": "{filler}"}}}}'.encode()
    answer = post_raw(system, body)
    assert (answer.status, answer.code) == (413, "payload_too_large")
    assert answer.body["error"]["limit_bytes"] == BODY_LIMIT_BYTES


def test_slo_below_the_best_achievable_is_422_with_that_number(system: RunningSystem) -> None:
    image = np.zeros((1, 3, 224, 224), np.float32)
    inputs = {"input": {"shape": list(image.shape), "dtype": "float32",
                        "data": base64.b64encode(image.tobytes()).decode()}}  # fmt: skip
    answer = system.post("/v1/infer", {"model": "resnet50", "inputs": inputs, "slo_ms": 1})
    assert (answer.status, answer.code) == (422, "slo_unattainable")
    assert answer.body["error"]["best_achievable_ms"] > 1
    assert "at least" in answer.body["error"]["message"]


def test_a_batch_that_cannot_meet_its_deadline_is_504_without_running(
    system: RunningSystem,
) -> None:
    # One bert_mini item takes a few ms (so slo 20 is not refused as unattainable); 32 items
    # take far more than 20 ms: the dispatcher refuses it at once, before it is queued.
    ids = [[1] * 128] * 32
    body = {"model": "bert_mini", "inputs": {"input_ids": ids, "attention_mask": ids},
            "slo_ms": 20}  # fmt: skip
    answer = system.post("/v1/infer", body)
    assert (answer.status, answer.code) == (504, "deadline_exceeded")
    assert "refused before queueing" in answer.body["error"]["message"]
    assert answer.body["error"]["predicted_ms"] > answer.body["error"]["slo_ms"] == 20
    # The system is fine afterwards.
    after = system.post("/v1/infer", {"model": "noop", "inputs": {"input": [NOOP_ROW]}})
    assert after.status == 200


def test_unknown_route_and_method_answer_in_the_error_shape(system: RunningSystem) -> None:
    missing = system.get("/v1/nothing")
    assert (missing.status, missing.code) == (404, "not_found")
    wrong = system.get("/v1/infer")
    assert (wrong.status, wrong.code) == (405, "method_not_allowed")
    # Under /v2 the same errors keep the Open Inference Protocol's shape.
    oip = system.get("/v2/nothing")
    assert oip.status == 404 and oip.body["code"] == "not_found"
    assert "/v2/nothing" in oip.body["error"]


@pytest.fixture(scope="module")
def router_without_agents(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(redis_url, model_dir, ready=False, with_agent=False, models=("noop",))


def test_no_gpulet_for_the_model_is_503_with_retry_after(
    router_without_agents: RunningSystem,
) -> None:
    system = router_without_agents

    def listening() -> bool:
        try:
            return system.get("/healthz").status == 200
        except OSError:
            return False

    wait_until(listening, 30, "the router to listen")
    answer = system.post("/v1/infer", {"model": "noop", "inputs": {"input": [NOOP_ROW]}})
    assert (answer.status, answer.code) == (503, "unavailable")
    assert int(answer.headers["retry-after"]) >= 1
    assert "no ready gpulet" in answer.body["error"]["message"]
    ready = system.get("/readyz")
    assert ready.status == 503 and ready.body["error"]["not_ready"] == ["noop"]
