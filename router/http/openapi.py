"""What the OpenAPI schema (`/openapi.json`, `/docs`) says the router answers: error bodies per
status, for `/v1` and for the Open Inference Protocol's `/v2`, and the v2 answers' shapes.

These models document the wire format; handlers write their bodies with orjson directly.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

# Status -> when it is answered, following the error tree (common/errors.py).
WHEN: dict[int, str] = {
    400: "bad_request: malformed body, missing or extra input, wrong shape or datatype, "
    "non-numeric data, batch too large; the message names the input and what was expected",
    401: "unauthorized: a state-changing endpoint without the admin token (GPULET_ADMIN_TOKEN) "
    "as `Authorization: Bearer`",
    404: "unknown_model: no such model (or version); lists the served ones",
    409: "not_loadable: model load: the cluster cannot serve this model (e.g. the measured "
    "profile has no rows for it); the message names the fix",
    413: "payload_too_large: the body is over GPULET_MAX_BODY_BYTES; gives the limit",
    422: "slo_unattainable: the SLO is tighter than any placement can meet; gives the best "
    "achievable",
    500: "internal: unexpected; the body carries no internals, the router log has the traceback",
    502: "backend_failed: the worker died or failed the batch",
    503: "unavailable / overloaded: no ready gpu-let, agent or Redis gone, or queues full; "
    "retry after Retry-After seconds",
    504: "deadline_exceeded: the request's deadline passed or cannot be met",
}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # the numbers behind the error, by name

    code: str = Field(description="stable code of the error tree", examples=["bad_request"])
    message: str = Field(examples=["input 'input': shape [1, 15] given, float32[batch, 16] "
                                   "expected"])  # fmt: skip
    request_id: str | None = Field(default=None, description="find it in the router's log")


class ErrorBody(BaseModel):
    """A `/v1` error: `{"error": {"code", "message", ...numbers}}`."""

    error: ErrorDetail


class OipErrorBody(BaseModel):
    """A `/v2` error in OIP's shape, `{"error": "<message>"}` (what tritonclient shows), plus
    our stable code and the numbers behind it."""

    error: str = Field(examples=["unknown model 'resnet1000'; known models: lenet, noop"])
    code: str = Field(description="stable code of the error tree", examples=["unknown_model"])
    details: dict[str, Any] = Field(default_factory=dict, description="numbers and request_id")


# Request bodies, as JSON Schema (OpenAPI 3.1): what the handlers accept, so that a client (or
# a fuzzer) reading the schema agrees with the server on what is refused. Each is an object:
# `null` or a list is answered 400. Fields the handlers treat as absent when null may be null.
V1_INFER_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "inputs"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "description": "a served model (GET /v1/models)"},
        "inputs": {
            "type": "object",
            "description": "input name -> nested list, or {shape, dtype, data} with data a flat "
            "list or the base64 of the raw little-endian bytes",
            "additionalProperties": {"type": ["array", "object"]},
        },
        "slo_ms": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "id": {"type": ["string", "null"]},
    },
}
OIP_INFER_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": ["string", "null"]},
        "parameters": {"type": ["object", "null"]},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "examples": ["FP32"]},
                    "parameters": {"type": ["object", "null"]},
                    "data": {"description": "flat or nested list, row-major"},
                },
            },
        },
        "outputs": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": ["object", "null"]},
                },
            },
        },
    },
}
LOAD_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "slo_ms": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "rate_rps": {"type": ["number", "null"], "minimum": 0},
            },
        },
    },
}


def error_responses(*statuses: int, oip: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these statuses and 500, with the error body of `/v1` or OIP."""
    model = OipErrorBody if oip else ErrorBody
    documented: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500}):
        entry: dict[str, Any] = {"model": model, "description": WHEN[status]}
        if status == 503:
            entry["headers"] = RETRY_AFTER
        documented[status] = entry
    return documented


def install(app: FastAPI) -> None:
    """Make `app`'s schema say what its handlers do with requests that fail validation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's, cached until the routes change
        answer_validation_with_400(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def answer_validation_with_400(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 "Validation Error" on every route with parameters; our handlers
    answer those 400 bad_request (a 422 is slo_unattainable). Where a client's query, header
    or body could fail, document that 400; a string path parameter cannot fail. Idempotent."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" not in str(responses.get("422", "")):
                continue
            del responses["422"]
            fallible = "requestBody" in operation or any(
                p.get("in") != "path" or p.get("schema", {}).get("type") != "string"
                for p in operation.get("parameters", [])
            )
            if fallible and "400" not in responses:
                model = "OipErrorBody" if path.startswith("/v2") else "ErrorBody"
                responses["400"] = {
                    "description": "bad_request: a parameter did not validate",
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}
                    },
                }
    schemas = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in str(schema.get("paths")):
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)


class ServerMetadata(BaseModel):
    name: str = Field(examples=["gpulet"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data", "schedule_policy"]])


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str = Field(examples=["input"])
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1: the batch axis, any size", examples=[[-1, 16]])


class ModelMetadata(BaseModel):
    name: str = Field(examples=["noop"])
    versions: list[str] = Field(examples=[["1"]])
    platform: str = Field(examples=["onnxruntime_onnx"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(default=None, description="flat, row-major; absent when "
                                   "the bytes follow the JSON (binary_data_size)")  # fmt: skip
    parameters: dict[str, Any] | None = Field(default=None, examples=[{"binary_data_size": 64}])


class InferResponse(BaseModel):
    """With binary outputs the body is this JSON, `Inference-Header-Content-Length` bytes long,
    then each binary output's raw little-endian bytes in order."""

    model_name: str
    id: str = Field(description="the request's id, else one the router made")
    parameters: dict[str, Any] = Field(
        description="gpulet's: the gpu-let that ran it, the batch it rode in, latency_ms",
        examples=[{"gpulet": "host.cpu0.c1", "batch_size": 1, "latency_ms": 1.9}],
    )
    outputs: list[OutputTensor]
