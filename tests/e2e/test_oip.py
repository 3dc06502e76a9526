"""NVIDIA's reference OIP client, tritonclient[http], against a running router and agent:
health, metadata, config, infer with JSON and binary tensors both ways (the answers /v1/infer
gives), and errors raised as InferenceServerException carrying our status and message."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import running
from tests.support.system import RunningSystem

# The first system on a fresh machine measures its CPU profile (~30 s) before it is ready.
pytestmark = pytest.mark.timeout(300)

MODELS = ("noop", "lenet")
SLO_MS = 5000  # generous: the machine is shared, and these tests check answers, not speed
EXAMPLE = Path(__file__).parents[2] / "benchmarks" / "triton_client.py"


@pytest.fixture(scope="module")
def served(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(redis_url, model_dir, models=MODELS)


@pytest.fixture
def client(served: RunningSystem) -> Iterator[triton.InferenceServerClient]:
    # geventhttpclient runs its own (gevent) loop only inside each blocking call; these tests
    # are plain sync functions, so nothing is monkey-patched and asyncio tests are untouched.
    client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def v1_outputs(served: RunningSystem, model: str, array: np.ndarray) -> np.ndarray:
    body = {
        "model": model,
        "inputs": {"input": {"shape": list(array.shape), "dtype": "float32",
                             "data": base64.b64encode(array.tobytes()).decode()}},
        "slo_ms": SLO_MS,
    }  # fmt: skip
    answer = served.post("/v1/infer", body)
    assert answer.status == 200, answer.body
    out = answer.body["outputs"]["output"]
    return np.frombuffer(base64.b64decode(out["data"]), np.float32).reshape(out["shape"])


def infer(
    client: triton.InferenceServerClient,
    model: str,
    array: np.ndarray,
    *,
    binary_in: bool = True,
    binary_out: bool | None = True,
    datatype: str = "FP32",
    **options: Any,
) -> Any:
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary_in)
    outputs = None
    if binary_out is not None:  # None: name no outputs (tritonclient then asks for binary)
        outputs = [triton.InferRequestedOutput("output", binary_data=binary_out)]
    options.setdefault("parameters", {"slo_ms": SLO_MS})
    return client.infer(model, [tensor], outputs=outputs, **options)


def test_health_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert all(client.is_model_ready(m) for m in MODELS)
    assert client.is_model_ready("noop", model_version="1")
    assert not client.is_model_ready("resnet1000")


def test_metadata_and_config(client: triton.InferenceServerClient) -> None:
    server = client.get_server_metadata()
    assert server["name"] == "gpulet" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("lenet")
    assert meta["name"] == "lenet" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    config = client.get_model_config("lenet")
    assert config["max_batch_size"] >= 1
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True, None], ids=["json-out", "binary-out", "all"])
def test_infer_answers_what_v1_answers(
    served: RunningSystem,
    client: triton.InferenceServerClient,
    binary_in: bool,
    binary_out: bool | None,
) -> None:
    images = np.random.default_rng(7).standard_normal((2, 1, 28, 28)).astype(np.float32)
    result = infer(client, "lenet", images, binary_in=binary_in, binary_out=binary_out,
                   request_id="oip-1")  # fmt: skip
    scores = result.as_numpy("output")
    assert scores.shape == (2, 10) and scores.dtype == np.float32
    # The same gpu-lets run both; a batch shared with other requests may round differently.
    np.testing.assert_allclose(scores, v1_outputs(served, "lenet", images), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "lenet" and response["id"] == "oip-1"
    assert response["parameters"]["gpulet"] and response["parameters"]["batch_size"] >= 2
    [output] = response["outputs"]
    assert ("data" not in output) is (binary_out is not False)


def test_noop_echoes_its_input_bit_for_bit(client: triton.InferenceServerClient) -> None:
    rows = (np.arange(48, dtype=np.float32).reshape(3, 16) - 20.0) / 8
    assert infer(client, "noop", rows).as_numpy("output").tobytes() == rows.tobytes()


@pytest.mark.parametrize(
    ("model", "array", "datatype", "options", "status", "words"),
    [
        ("resnet1000", np.zeros((1, 16), np.float32), "FP32", {}, "404",
         ["unknown model 'resnet1000'", "lenet, noop"]),
        ("noop", np.zeros((1, 3), np.float32), "FP32", {}, "400",
         ["shape [1, 3] given", "FP32[-1, 16] expected"]),
        ("noop", np.zeros((1, 16), np.int64), "INT64", {}, "400",
         ["datatype 'INT64' given", "FP32[-1, 16] expected"]),
        # A 1 µs timeout, no slo_ms: the timeout is the SLO, and no placement meets it.
        ("noop", np.zeros((1, 16), np.float32), "FP32", {"timeout": 1, "parameters": {}},
         "422", ["below", "fastest"]),
        # A lax SLO but a 1 µs timeout: the deadline passes before the request can run.
        ("noop", np.zeros((1, 16), np.float32), "FP32", {"timeout": 1}, "504", ["deadline"]),
    ],
    ids=["unknown-model", "bad-shape", "bad-datatype", "timeout-unattainable", "timeout-passed"],
)  # fmt: skip
def test_errors_are_inference_server_exceptions_with_our_status_and_message(
    client: triton.InferenceServerClient,
    model: str,
    array: np.ndarray,
    datatype: str,
    options: dict[str, Any],
    status: str,
    words: list[str],
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(client, model, array, datatype=datatype, **options)
    assert caught.value.status() == status, caught.value.message()
    for word in words:
        assert word in caught.value.message()


def test_the_example_script_runs_unchanged_against_gpulet(served: RunningSystem) -> None:
    url = served.url.removeprefix("http://")
    done = subprocess.run([sys.executable, str(EXAMPLE), "--url", url, "--model", "lenet"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "is_server_ready: True" in done.stdout
    assert "infer binary=True" in done.stdout and "infer binary=False" in done.stdout
    assert "status=400" in done.stdout and "status=404" in done.stdout
