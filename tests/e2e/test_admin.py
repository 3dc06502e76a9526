"""Admin endpoints behind GPULET_ADMIN_TOKEN: model load/unload need the bearer token (401
without it, the state unchanged), inference and the read-only views stay open; without a token
nothing is guarded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from common.procs import free_port
from common.settings import RouterSettings
from common.store import Store
from router.http.app import create_app
from tests.e2e.conftest import running
from tests.support import http
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cret-admin-token"
TIME_SCALE = 10
SIMULATED = {"GPULET_SIMULATED_PROFILE": "a100-class", "GPULET_SIMULATED_DEVICES": "2"}
TOKEN_BODY = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]}


@pytest.fixture(scope="module")
def guarded(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(
        redis_url, model_dir, models=("resnet50", "vgg16"),
        agent_env={**SIMULATED, "GPULET_SIM_TIME_SCALE": str(TIME_SCALE)},
        router_env={**SIMULATED, "GPULET_ADMIN_TOKEN": SECRET,
                    "GPULET_SLOS": f"resnet50={108 * TIME_SCALE},vgg16={142 * TIME_SCALE}"},
    )  # fmt: skip


def post(system: RunningSystem, path: str, token: str | None = None) -> http.Answer:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return http.request("POST", system.url + path, b"", headers=headers)


def ready_models(system: RunningSystem) -> set[str]:
    index = system.post("/v2/repository/index", {"ready": True})
    assert index.status == 200, index.body  # the index is read-only: open
    return {row["name"] for row in index.body}


def test_unload_without_the_token_is_401_and_changes_nothing(guarded: RunningSystem) -> None:
    for token in (None, "wrong"):
        answer = post(guarded, "/v2/repository/models/vgg16/unload", token)
        assert answer.status == 401, answer.body
        assert answer.body["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert ready_models(guarded) == {"resnet50", "vgg16"}
    # Inference stays open, on /v1 and on the OIP path.
    assert guarded.post("/v2/models/vgg16/infer", TOKEN_BODY).status == 200
    v1 = {"model": "vgg16", "inputs": {"input": [[0.0]]}}
    assert guarded.post("/v1/infer", v1).status == 200


def test_the_token_unloads_and_loads(guarded: RunningSystem) -> None:
    assert post(guarded, "/v2/repository/models/vgg16/load", None).status == 401
    unloaded = post(guarded, "/v2/repository/models/vgg16/unload", SECRET)
    assert unloaded.status == 200, unloaded.body
    assert guarded.post("/v2/models/vgg16/infer", TOKEN_BODY).status == 404
    loaded = http.request(
        "POST", guarded.url + "/v2/repository/models/vgg16/load",
        orjson.dumps({"parameters": {"slo_ms": 142 * TIME_SCALE}}),
        headers={"authorization": f"Bearer {SECRET}"},
    )  # fmt: skip
    assert loaded.status == 200, loaded.body
    assert guarded.post("/v2/models/vgg16/infer", TOKEN_BODY).status == 200


@pytest.mark.parametrize("token", [None, "", SECRET])
async def test_the_schema_and_the_guard_follow_the_setting(token: str | None) -> None:
    """No token (unset or empty): load/unload are open (an unknown model is 404, not 401) and
    the schema declares no security; a token: 401 first, and the schema says bearer."""
    dead = Store.from_url(f"redis://127.0.0.1:{free_port()}/0", "gpulet-test-dead:")
    app = create_app(RouterSettings(redis_url="unused", admin_token=token), store=dead)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            answer = await client.post("/v2/repository/models/nosuch/unload")
            schema = (await client.get("/openapi.json")).json()
    finally:
        await dead.close()
    unload = schema["paths"]["/v2/repository/models/{model_name}/unload"]["post"]
    infer = schema["paths"]["/v1/infer"]["post"]
    assert "security" not in infer
    if token:
        assert answer.status_code == 401
        assert unload["security"] == [{"adminToken": []}]
        assert "401" in unload["responses"]
    else:
        assert answer.status_code == 404
        assert "security" not in unload
        assert "401" not in unload["responses"]
