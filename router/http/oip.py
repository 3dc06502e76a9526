"""The Open Inference Protocol (KServe v2) over HTTP, beside `/v1/infer`: health, metadata, a
Triton-style model config, and infer with JSON or binary tensors, on the same dispatcher.

Every error on these routes keeps OIP's shape, `{"error": "<message>"}` (plus our code and
numbers), with the status of `common.errors`; OipRoute maps them, so handlers only raise.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from common.errors import BadRequest, GpuletError, Unavailable
from common.models import ModelSpec
from common.settings import RouterSettings
from router.control.control import Controller
from router.control.rates import RateMonitor
from router.dispatch.dispatcher import Dispatcher
from router.http import codec, oip_codec
from router.http.bodies import inflate, read_body
from router.http.failure_log import FailureLog
from router.http.openapi import (
    OIP_INFER_BODY,
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    error_responses,
)

logger = logging.getLogger(__name__)
_failures = FailureLog(logger)

PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON = "application/json"
BINARY = "application/octet-stream"  # a JSON header followed by raw tensor bytes
INFER_EXAMPLE = {
    "id": "42",
    "parameters": {"slo_ms": 50},
    "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}],
    "outputs": [{"name": "output"}],
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": OIP_INFER_BODY, "example": INFER_EXAMPLE},
            BINARY: {
                "schema": {"type": "string", "format": "binary"},
                "description": f"binary tensor data: the JSON request ({HEADER_LENGTH} bytes), "
                "then each input with parameters.binary_data_size, its raw little-endian bytes",
            },
        },
    },
    "parameters": [
        {"name": HEADER_LENGTH, "in": "header", "required": False, "schema": {"type": "integer"},
         "description": "length of the JSON header when binary tensor data follows it"},
    ],
}  # fmt: skip


VERSION_PARAMETER = {
    "name": "version", "in": "path", "required": True,
    "schema": {"type": "string", "enum": [oip_codec.VERSION]},
}  # fmt: skip


def path_version(request: Request) -> str | None:
    """The `{version}` of a versioned model route; None on the unversioned one."""
    version = request.path_params.get("version")
    return None if version is None else str(version)


Version = Annotated[str | None, Depends(path_version)]


def error_response(error: GpuletError, request_id: str | None = None) -> Response:
    return Response(codec.dumps(oip_codec.error_body(error, request_id)), status_code=error.status,
                    media_type=JSON, headers=error.headers())  # fmt: skip


def plain_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An HTTP-level error (no such route, wrong method) under /v2, in OIP's shape."""
    body = {"error": message, "code": code, "details": {}}
    return Response(codec.dumps(body), status_code=status, media_type=JSON, headers=headers)


class OipRoute(APIRoute):
    """A route whose every failure is answered in OIP's error shape, never a bare 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            # An infer request names itself (request.state.request_id) once it has an id:
            # its error answers carry that id, and the log has it beside the reason.
            try:
                return await handler(request)
            except GpuletError as exc:
                request_id = getattr(request.state, "request_id", None)
                if request_id is not None:
                    _failures.failed(request_id, exc)
                return error_response(exc, request_id)
            except RequestValidationError as exc:
                return error_response(BadRequest(f"invalid request: {exc.errors()}"))
            except Exception:
                request_id = getattr(request.state, "request_id", None)
                logger.exception("unexpected error path=%s request_id=%s", request.url.path,
                                 request_id)  # fmt: skip
                return error_response(GpuletError("internal error; see the router log"),
                                      request_id)  # fmt: skip

        return guarded


def build_router(
    settings: RouterSettings,
    models: dict[str, ModelSpec],
    dispatcher: Dispatcher,
    controller: Controller,
    arrivals: RateMonitor,
) -> APIRouter:
    """The `/v2` routes over the app's models, dispatcher, controller and arrival monitor."""
    router = APIRouter(prefix=PREFIX, route_class=OipRoute, tags=["Open Inference Protocol v2"])
    platform = oip_codec.SIMULATED_PLATFORM if settings.simulated_profile else (
        oip_codec.ONNX_PLATFORM)  # fmt: skip

    def lookup(name: str, version: str | None = None) -> ModelSpec:
        """The served version asked for: the model's latest served one when none is named."""
        return oip_codec.find_version(models, name, version)

    def answer(body: dict[str, Any]) -> Response:
        return Response(codec.dumps(body), media_type=JSON)

    @router.get(
        "",
        summary="Server metadata: name, version and the extensions supported",
        responses={200: {"model": ServerMetadata}, **error_responses(oip=True)},
    )
    async def server_metadata(request: Request) -> Response:
        return answer(oip_codec.server_metadata(request.app.version))

    @router.get(
        "/health/live",
        summary="Liveness",
        responses={200: {"model": Live}, **error_responses(oip=True)},
    )
    async def live() -> Response:
        return answer({"live": True})

    @router.get(
        "/health/ready",
        summary="Ready when every served model has a warm gpu-let",
        responses={200: {"model": Ready}, **error_responses(503, oip=True)},
    )
    async def ready() -> Response:
        missing = sorted(set(models) - controller.table.ready_models())
        if missing:
            raise Unavailable(
                f"models without a ready gpulet: {', '.join(missing)}",
                not_ready=missing,
                retry_after_s=settings.retry_after_s,
            )
        return answer({"ready": True})

    async def model_ready(model_name: str, version: Version) -> Response:
        spec = lookup(model_name, version)
        if spec.name not in controller.table.ready_models():
            raise Unavailable(
                f"model {spec.name} has no ready gpulet yet",
                model=spec.name,
                retry_after_s=settings.retry_after_s,
            )
        return answer({"name": spec.name, "ready": True})

    async def metadata(model_name: str, version: Version) -> Response:
        spec = lookup(model_name, version)
        versions = oip_codec.served_versions(models, model_name) if version is None else None
        return answer(oip_codec.model_metadata(spec, platform, versions))

    async def config(model_name: str, version: Version) -> Response:
        spec = lookup(model_name, version)
        return answer(oip_codec.model_config(spec, platform, settings.max_batch))

    async def infer(model_name: str, request: Request, version: Version) -> Response:
        received = time.monotonic()
        request.state.request_id = uuid.uuid4().hex
        body = inflate(
            await read_body(request, settings.max_body_bytes),
            request.headers.get("content-encoding"),
            settings.max_body_bytes,
        )
        # The path first: a request for a model we do not serve is 404 whatever its body says.
        spec = lookup(model_name, version)
        header, binary = oip_codec.split_body(body, request.headers.get(HEADER_LENGTH))
        if isinstance(header.get("id"), str):
            request.state.request_id = header["id"]
        request_id: str = request.state.request_id
        parsed = oip_codec.decode_request(spec, header, binary, max_batch=settings.max_batch)
        arrivals.record(spec.name, received * 1000)
        slo_ms, deadline_ms = oip_codec.request_times(
            parsed, spec.default_slo_ms, settings.deadline_factor, settings.max_deadline_ms
        )
        result = await dispatcher.submit(
            spec.name,
            parsed.inputs,
            parsed.batch,
            slo_ms,
            received * 1000 + deadline_ms,
            request_id,
            received_ms=received * 1000,
        )
        parameters: dict[str, Any] = {
            "gpulet": result.gpulet_id, "batch_size": result.batch_items,
            "latency_ms": round((time.monotonic() - received) * 1000, 3),
        }  # fmt: skip
        if result.simulated:
            parameters["simulated"] = True  # outputs of the right shape, not a model's answer
        content, header_length = oip_codec.encode_response(
            spec.name, request_id, result.outputs, parsed.outputs, parameters, spec
        )
        headers = {"X-Request-Id": request_id}
        if header_length is None:
            return Response(content, media_type=JSON, headers=headers)
        headers[HEADER_LENGTH] = str(header_length)
        return Response(content, media_type=BINARY, headers=headers)

    def add(
        suffix: str,
        method: str,
        endpoint: Callable[..., Coroutine[Any, Any, Response]],
        summary: str,
        responses: dict[int | str, dict[str, Any]],
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Each model route also answers under /versions/{version}, a served version of the
        model; the endpoints read it from the path (path_version), so it is declared here for
        the docs."""
        extra = extra or {}
        router.add_api_route(
            "/models/{model_name}" + suffix,
            endpoint,
            methods=[method],
            summary=summary,
            responses=responses,
            openapi_extra=extra or None,
            operation_id=f"v2_{endpoint.__name__}",
        )
        versioned = {**extra, "parameters": [*extra.get("parameters", []), VERSION_PARAMETER]}
        router.add_api_route(
            "/models/{model_name}/versions/{version}" + suffix,
            endpoint,
            methods=[method],
            summary=f"{summary} (a given version)",
            responses=responses,
            openapi_extra=versioned,
            operation_id=f"v2_{endpoint.__name__}_version",
        )

    add(
        "",
        "GET",
        metadata,
        "Model metadata: inputs and outputs (-1: the batch axis)",
        {200: {"model": ModelMetadata}, **error_responses(404, oip=True)},
    )
    add(
        "/ready",
        "GET",
        model_ready,
        "Ready when the model has a warm gpu-let",
        {200: {"model": ModelReady}, **error_responses(404, 503, oip=True)},
    )
    add(
        "/config",
        "GET",
        config,
        "Triton-style model configuration",
        {
            200: {"description": "Triton model configuration (JSON)"},
            **error_responses(404, oip=True),
        },
    )
    add(
        "/infer",
        "POST",
        infer,
        "Run one request (JSON or binary tensors) on a model",
        {
            200: {"model": InferResponse},
            **error_responses(400, 404, 413, 422, 502, 503, 504, oip=True),
        },
        INFER_BODY,
    )
    return router
