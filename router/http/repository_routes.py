"""Triton's model repository extension over HTTP: `POST /v2/repository/index`, and
`POST /v2/repository/models/{m}/load|unload` (200 with `{}` once done), on `Repository`.

Errors keep OIP's `{"error": "<message>"}` shape (oip.OipRoute), so tritonclient's
`get_model_repository_index`, `load_model` and `unload_model` show our message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from common.errors import BadRequest
from router.control.repository import Repository, load_parameters
from router.http import oip
from router.http.bodies import read_body
from router.http.openapi import LOAD_BODY, error_responses

INDEX_LIMIT_BYTES = 64 * 1024  # an index or load body is a few parameters
LOAD_EXAMPLE = {"parameters": {"slo_ms": 100, "rate_rps": 20}}


def repository_routes(repository: Repository, admin: Sequence[Any] = ()) -> APIRouter:
    """`admin`: the dependencies that guard load and unload (admin.py); none: open."""
    guarded = list(admin)
    unauthorized = (401,) if guarded else ()
    router = APIRouter(prefix=f"{oip.PREFIX}/repository", route_class=oip.OipRoute,
                       tags=["Model repository (Triton extension)"])  # fmt: skip

    def empty() -> Response:
        return Response(b"{}", media_type=oip.JSON)

    async def body(request: Request) -> bytes:
        return await read_body(request, INDEX_LIMIT_BYTES)  # 413 past the limit, unbuffered

    @router.post(
        "/index",
        summary="Every model the repository can load, with its state and why it is not ready",
        responses={
            200: {"description": 'a list of {"name", "version", "state", "reason"}; state is '
                  "READY, LOADING, UNLOADING or UNAVAILABLE"},
            **error_responses(400, oip=True),
        },
        openapi_extra={"requestBody": {"required": False, "content": {
            oip.JSON: {"example": {"ready": False}}}}},
    )  # fmt: skip
    async def index(request: Request) -> Response:
        data = await body(request)
        ready_only = False
        if data.strip():
            try:
                parsed: Any = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"index body is not JSON: {exc}") from None
            ready_only = isinstance(parsed, dict) and parsed.get("ready") is True
        rows = [r.to_json() for r in repository.index(ready_only=ready_only)]
        return Response(orjson.dumps(rows), media_type=oip.JSON)

    @router.post(
        "/models/{model_name:path}/load",
        summary="Load a model: build it if needed, re-plan, answer once it has a ready gpu-let",
        responses={200: {"description": "loaded: {}"},
                   **error_responses(400, *unauthorized, 404, 409, 422, 503, oip=True)},
        dependencies=guarded,
        openapi_extra={"requestBody": {"required": False, "content": {
            oip.JSON: {"schema": LOAD_BODY, "example": LOAD_EXAMPLE}}}},
    )  # fmt: skip
    async def load(model_name: str, request: Request) -> Response:
        await repository.load(model_name, load_parameters(await body(request)))
        return empty()

    @router.post(
        "/models/{model_name:path}/unload",
        summary="Unload a model: refuse its new requests, drain the queued ones, re-plan",
        responses={200: {"description": "unloaded: {}"},
                   **error_responses(*unauthorized, 404, 503, oip=True)},
        dependencies=guarded,
    )  # fmt: skip
    async def unload(model_name: str, request: Request) -> Response:
        await body(request)  # Triton's unload parameters (unload_dependents) change nothing here
        await repository.unload(model_name)
        return empty()

    return router
