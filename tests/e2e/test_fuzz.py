"""An outside OpenAPI fuzzer (schemathesis, every check) against a running router and agent: the
schema and the server agree on what is accepted and refused, every answer is documented, 405s
carry `Allow`, and guarded endpoints refuse a client without the admin token.

The router runs with GPULET_ADMIN_TOKEN and the fuzzer is not given it: it cannot load or
unload models, so the run changes nothing and is repeatable (fixed seed)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import running
from tests.support import http
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(240)

RUN_LIMIT_S = 150.0  # about 20 s on a 2-core machine
SEED = "1"
# 5xx the router answers by design, each a coded error with its numbers (common/errors.py):
# 502 backend_failed, 503 unavailable/overloaded, 504 deadline_exceeded (e.g. slo_ms 1 ms).
# Only 500 (internal) stays a failure. A schema-valid request may also be 422 slo_unattainable:
# its slo_ms is below what any partition can do (a fact of the cluster no schema can state).
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# A tensor's contents (data length = the product of its shape, the model's own input names, a
# base64 string's length) are beyond what JSON Schema can state: a schema-valid infer body may
# still be 400 naming the input. The body's shape itself (an object; `null` refused) is checked
# below, and by the negative-data check here.
[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx",
]
"""
INFER_PATHS = ("/v1/infer", "/v2/models/noop/infer", "/v2/models/noop/versions/1/infer")


@pytest.fixture(scope="module")
def guarded(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(redis_url, model_dir, models=("noop", "lenet"),
                       # The first plan is kept: the fuzzer's traffic must not start workers.
                       router_env={"GPULET_ADMIN_TOKEN": "not-given-to-the-fuzzer",
                                   "GPULET_REPLAN_EPOCH_S": "0"})  # fmt: skip


def test_schemathesis_finds_nothing(guarded: RunningSystem, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "--config-file", str(config), "run", f"{guarded.url}/openapi.json",
         "--checks", "all", "--workers", "1", "--seed", SEED, "--no-color"],
        capture_output=True, text=True, timeout=RUN_LIMIT_S, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested is not None and int(tested.group(1)) >= 20, result.stdout[-3000:]


def test_the_schema_and_the_server_agree_on_a_null_body(guarded: RunningSystem) -> None:
    schema = guarded.get("/openapi.json").body["paths"]
    for path in INFER_PATHS:
        answer = http.request("POST", guarded.url + path, b"null")
        assert answer.status == 400, (path, answer.body)
        documented = path.replace("noop", "{model_name}").replace("/1/", "/{version}/")
        body = schema[documented]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"]["type"] == "object"


def test_405_says_which_methods_the_path_allows(guarded: RunningSystem) -> None:
    for path, allowed in (("/v1/infer", "POST"), ("/healthz", "GET"),
                          ("/v2/models/noop/infer", "POST")):  # fmt: skip
        answer = http.request("DELETE", guarded.url + path)
        assert answer.status == 405, answer.body
        assert answer.headers["allow"] == allowed
