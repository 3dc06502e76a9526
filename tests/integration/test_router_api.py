"""The router's HTTP surface in process (no agent): the OpenAPI schema and /docs, and the OIP v2
routes' metadata, readiness and errors before any gpu-let is ready."""

from __future__ import annotations

import gzip
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

import router.http.oip_codec
from common.procs import free_port
from common.settings import RouterSettings
from common.store import Store
from router.http.app import create_app

pytestmark = pytest.mark.timeout(60)

MODELS = "noop,lenet"
V2_PATHS = {
    "/v2", "/v2/health/live", "/v2/health/ready",
    "/v2/models/{model_name}", "/v2/models/{model_name}/versions/{version}",
    "/v2/models/{model_name}/ready", "/v2/models/{model_name}/versions/{version}/ready",
    "/v2/models/{model_name}/config", "/v2/models/{model_name}/versions/{version}/config",
    "/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer",
}  # fmt: skip


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # The app is never started (no lifespan), so its store is never dialled: these routes
    # answer from the settings and the (still empty) routing table alone.
    store = Store.from_url(f"redis://127.0.0.1:{free_port()}/0", "gpulet-test-unused:")
    app = create_app(RouterSettings(redis_url="unused", models=MODELS), store=store)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            yield client
    finally:
        await store.close()


def assert_oip_error(response: httpx.Response, status: int, code: str, *words: str) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["code"] == code
    for word in words:
        assert word in body["error"]
    return body


async def test_openapi_documents_every_v1_and_v2_endpoint_with_its_errors(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    assert V2_PATHS | {"/v1/infer", "/v1/models", "/v1/cluster", "/healthz", "/readyz"} <= set(
        paths
    )
    undocumented = []
    for path, operations in paths.items():
        for method, operation in operations.items():
            errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
            refs = {
                r.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                for r in errors.values()
            }
            want = "OipErrorBody" if path.startswith("/v2") else "ErrorBody"
            if "500" not in errors or refs != {f"#/components/schemas/{want}"}:
                undocumented.append(f"{method.upper()} {path}: {sorted(errors)} {refs}")
    assert undocumented == []
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert {"400", "404", "413", "422", "503", "504"} <= set(infer["responses"])
    assert "Retry-After" in infer["responses"]["503"]["headers"]
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])
    # Our handlers answer validation errors 400, so FastAPI's default 422 must not be claimed.
    assert "HTTPValidationError" not in response.text


async def test_docs_page_loads_the_schema(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower() and "/openapi.json" in response.text


async def test_server_metadata_and_liveness(client: httpx.AsyncClient) -> None:
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "gpulet" and "binary_tensor_data" in meta["extensions"]
    live = await client.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})


async def test_readiness_is_503_with_retry_after_until_gpulets_are_warm(
    client: httpx.AsyncClient,
) -> None:
    ready = await client.get("/v2/health/ready")
    body = assert_oip_error(ready, 503, "unavailable", "lenet", "noop")
    assert body["details"]["not_ready"] == ["lenet", "noop"]
    assert int(ready.headers["retry-after"]) >= 1
    model = await client.get("/v2/models/noop/versions/1/ready")
    assert_oip_error(model, 503, "unavailable", "noop")


@pytest.mark.parametrize("path", ["/v2/models/lenet", "/v2/models/lenet/versions/1"])
async def test_model_metadata_and_config(client: httpx.AsyncClient, path: str) -> None:
    meta = (await client.get(path)).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    config = (await client.get(f"{path}/config")).json()
    assert config["name"] == "lenet" and config["max_batch_size"] == RouterSettings().max_batch
    assert config["input"][0]["dims"] == [1, 28, 28]


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "words"),
    [
        ("GET", "/v2/models/resnet1000", 404, "unknown_model", ["resnet1000", "lenet, noop"]),
        ("GET", "/v2/models/noop/versions/2/config", 404, "unknown_model", ["no version '2'"]),
        ("GET", "/v2/models/noop/ready", 503, "unavailable", ["noop"]),
        ("GET", "/v2/no/such/route", 404, "not_found", ["/v2/no/such/route"]),
        ("POST", "/v2/health/live", 405, "method_not_allowed", ["POST"]),
    ],
)
async def test_v2_errors_keep_oips_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int, code: str, words: list[str]
) -> None:
    assert_oip_error(await client.request(method, path), status, code, *words)


async def test_infer_rejects_bad_input_before_dispatch_and_answers_503_without_gpulets(
    client: httpx.AsyncClient,
) -> None:
    row = {"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
    unknown = await client.post("/v2/models/resnet1000/infer", json={"inputs": [row]})
    assert_oip_error(unknown, 404, "unknown_model", "resnet1000")
    bad = await client.post("/v2/models/noop/infer", json={"id": "b-1", "inputs": [{**row,
                            "shape": [1, 8]}]})  # fmt: skip
    body = assert_oip_error(bad, 400, "bad_request", "shape [1, 8] given")
    assert body["details"]["request_id"] == "b-1"
    # A gzip body (tritonclient's request_compression_algorithm) is inflated first.
    packed = gzip.compress(orjson.dumps({"inputs": [{**row, "datatype": "INT64"}]}))
    gzipped = await client.post("/v2/models/noop/infer", content=packed,
                                headers={"content-encoding": "gzip"})  # fmt: skip
    assert_oip_error(gzipped, 400, "bad_request", "datatype 'INT64' given")
    waiting = await client.post("/v2/models/noop/infer", json={"inputs": [row]})
    assert_oip_error(waiting, 503, "unavailable", "no ready gpulet")
    assert int(waiting.headers["retry-after"]) >= 1


async def test_unexpected_errors_are_500_in_oip_shape_without_internals(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: object) -> object:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(router.http.oip_codec, "model_metadata", explode)
    response = await client.get("/v2/models/noop")
    assert_oip_error(response, 500, "internal", "see the router log")
    assert "secret" not in response.text

    monkeypatch.setattr(router.http.oip_codec, "decode_request", explode)
    with caplog.at_level(logging.ERROR, logger="router.http.oip"):
        failed = await client.post("/v2/models/noop/infer", json={"id": "x-9", "inputs": []})
    body = assert_oip_error(failed, 500, "internal", "see the router log")
    assert body["details"]["request_id"] == "x-9" and "secret" not in failed.text
    assert any("x-9" in r.getMessage() for r in caplog.records)
