"""The Open Inference Protocol (KServe v2) wire format, pure: infer bodies in and out, metadata.

An infer body is a JSON header, optionally followed by raw tensor bytes (Triton's binary tensor
data extension). The `Inference-Header-Content-Length` HTTP header gives the JSON's length; each
binary input gives its byte count in `parameters.binary_data_size`, and the bytes follow in the
order of the request's inputs. Answers mirror that: an output asked for with `binary_data` (or
every output, with `parameters.binary_data_output`) is sent as raw little-endian bytes after the
JSON. Every rejection is a BadRequest naming the tensor and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import BadRequest, GpuletError, UnknownModel
from common.frames import Array
from common.models import BATCH_DIM, ModelSpec, TensorSpec
from router.http import codec

# numpy dtype name -> OIP datatype (peers.md section 5.4). No model takes BYTES (strings).
DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    **{f"uint{bits}": f"UINT{bits}" for bits in (8, 16, 32, 64)},
    **{f"int{bits}": f"INT{bits}" for bits in (8, 16, 32, 64)},
    **{f"float{bits}": f"FP{bits}" for bits in (16, 32, 64)},
}
DYNAMIC_DIM = -1  # OIP's mark of a variable dimension in metadata
VERSION = "1"  # models are not versioned; OIP clients that ask for a version get this one
# Triton's names for what we support (its `GET /v2` lists them the same way).
EXTENSIONS = ("binary_tensor_data", "schedule_policy", "model_configuration", "parameters",
              "model_repository")  # fmt: skip
ONNX_PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX Runtime models
SIMULATED_PLATFORM = "gpulet_simulated"  # simulated GPUs: the profile's time, no model runs
VERSION_MARK = "@"  # a served name "m@2" is version 2 of model m (common/repository/layout.py)
US_PER_MS = 1000.0

REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # raw bytes after the JSON, else a JSON list in "data"


@dataclass(frozen=True)
class OipRequest:
    inputs: dict[str, Array]
    batch: int
    outputs: tuple[RequestedOutput, ...]  # in answer order; every output when none was named
    request_id: str | None
    slo_ms: float | None  # parameters.slo_ms (gpulet's own)
    timeout_ms: float | None  # parameters.timeout, sent in µs (Triton's schedule policy)
    priority: int  # parameters.priority: accepted and checked; the dispatcher has one class


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary section after it (empty without the header length)."""
    if header_length is None:
        return codec.parse_body(body), memoryview(b"")
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} must be the byte length of the "
            f"JSON header, at most the body's {len(body)} bytes",
            body_bytes=len(body),
        )
    split = int(header_length)
    return codec.parse_body(body[:split]), memoryview(body)[split:]


def decode_request(
    spec: ModelSpec, header: Mapping[str, Any], binary: memoryview, *, max_batch: int
) -> OipRequest:
    _check_fields("request", header, REQUEST_FIELDS)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string, got {type(request_id).__name__}')
    params = _parameters("request", header.get("parameters"))
    raw_inputs = header.get("inputs")
    # OIP clients show only the message, so it names the inputs the model takes.
    takes = f"model {spec.name} takes " + ", ".join(f"{t.name} {describe(t)}" for t in spec.inputs)
    if not isinstance(raw_inputs, list) or not all(isinstance(t, dict) for t in raw_inputs):
        raise BadRequest(
            f'"inputs" must be a list of tensors {{name, shape, datatype, data}}; {takes}',
            expected=[tensor_metadata(t) for t in spec.inputs],
        )
    names = [t.get("name") for t in raw_inputs]
    missing = [t.name for t in spec.inputs if t.name not in names]
    unexpected = sorted({str(n) for n in names} - {t.name for t in spec.inputs})
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if missing or unexpected or repeated:
        parts = [f"missing inputs {missing}"] if missing else []
        parts += [f"unexpected inputs {unexpected}"] if unexpected else []
        parts += [f"inputs given twice {repeated}"] if repeated else []
        raise BadRequest(
            f"{'; '.join(parts)}; {takes}", expected=[tensor_metadata(t) for t in spec.inputs]
        )
    arrays: dict[str, Array] = {}
    offset = 0  # binary sections follow one another in the order of the request's inputs
    for raw in raw_inputs:
        tensor = spec.input(raw["name"])
        assert tensor is not None  # every name was checked against the spec above
        arrays[tensor.name], used = decode_input(tensor, raw, binary, offset)
        offset += used
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size "
            f"({offset} bytes in all); check Inference-Header-Content-Length",
            binary_bytes=len(binary),
            declared_bytes=offset,
        )
    batches = {a.shape[0] for a in arrays.values()}
    if len(batches) != 1:
        raise BadRequest(f"inputs disagree on the batch size: "
                         f"{ {n: a.shape[0] for n, a in arrays.items()} }")  # fmt: skip
    batch = batches.pop()
    codec.check_batch(spec, batch, max_batch)
    slo_ms = _positive(params, "slo_ms")
    timeout_us = _count(params, "timeout")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output must be true or false")
    sequence = params.get("sequence_id", 0)
    if sequence not in (0, ""):
        raise BadRequest("parameters.sequence_id: sequence batching is not supported; "
                         "gpulet's models are stateless")  # fmt: skip
    return OipRequest(
        inputs=arrays,
        batch=batch,
        outputs=requested_outputs(spec, header.get("outputs"), binary_default),
        request_id=request_id,
        slo_ms=slo_ms,
        # Triton's convention: a timeout of 0 is no timeout.
        timeout_ms=timeout_us / US_PER_MS if timeout_us else None,
        priority=_count(params, "priority") or 0,
    )


def decode_input(
    spec: TensorSpec, raw: Mapping[str, Any], binary: memoryview, offset: int
) -> tuple[Array, int]:
    """One input tensor, and how many bytes of the binary section it took."""
    what = f"input {spec.name!r}"
    _check_fields(what, raw, INPUT_FIELDS)
    want = DATATYPES[spec.dtype]
    expected = describe(spec)
    if raw.get("datatype") != want:
        raise BadRequest(f"{what}: datatype {raw.get('datatype')!r} given, {expected} expected",
                         input=spec.name, expected=expected)  # fmt: skip
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"{what}: 'shape' must be a list of non-negative integers, "
                         f"{expected} expected", input=spec.name)  # fmt: skip
    codec.check_shape(spec, tuple(shape), expected)
    params = _parameters(what, raw.get("parameters"))
    _no_shared_memory(what, params)
    count = math.prod(shape)
    if "binary_data_size" in params:
        if "data" in raw:
            raise BadRequest(f"{what}: give 'data' or parameters.binary_data_size, not both")
        size = _count(params, "binary_data_size", what)
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        if size != count * dtype.itemsize:
            raise BadRequest(f"{what}: binary_data_size {size} given, shape {shape} of {want} "
                             f"needs {count * dtype.itemsize} bytes", input=spec.name)  # fmt: skip
        if offset + size > len(binary):
            raise BadRequest(
                f"{what}: binary_data_size {size}, but {len(binary) - offset} bytes of binary "
                "data are left; check Inference-Header-Content-Length",
                input=spec.name,
            )
        array = np.frombuffer(binary, dtype, count, offset).reshape(shape)
        return codec.with_batch_axis(spec, array), size
    data = raw.get("data")
    if not isinstance(data, list):
        raise BadRequest(
            f"{what}: 'data' must be a JSON list (flat or nested, row-major), or send the bytes "
            "after the JSON with parameters.binary_data_size",
            input=spec.name,
        )
    array = codec.from_list(spec, data)
    if array.size != count:
        raise BadRequest(f"{what}: {array.size} values given, shape {shape} needs {count}",
                         input=spec.name)  # fmt: skip
    return codec.with_batch_axis(spec, array.reshape(shape)), 0


def requested_outputs(
    spec: ModelSpec, raw: Any, binary_default: bool
) -> tuple[RequestedOutput, ...]:
    """The outputs to answer with; none named (or an empty list) means all of them."""
    if raw is None or raw == []:
        return tuple(RequestedOutput(t.name, binary_default) for t in spec.outputs)
    known = [t.name for t in spec.outputs]
    if not isinstance(raw, list) or not all(isinstance(o, dict) for o in raw):
        raise BadRequest('"outputs" must be a list of {name, parameters?}', outputs=known)
    chosen: list[RequestedOutput] = []
    for item in raw:
        name = item.get("name")
        what = f"output {name!r}"
        _check_fields(what, item, OUTPUT_FIELDS)
        if name not in known:
            raise BadRequest(f"model {spec.name} has no {what}; its outputs: {known}",
                             outputs=known)  # fmt: skip
        if any(c.name == name for c in chosen):
            raise BadRequest(f"{what} is asked for twice")
        params = _parameters(what, item.get("parameters"))
        _no_shared_memory(what, params)
        if params.get("class_count", 0) != 0:
            raise BadRequest(f"{what}: parameters.class_count: the classification extension "
                             "is not supported; ask for the scores")  # fmt: skip
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"{what}: parameters.binary_data must be true or false")
        chosen.append(RequestedOutput(name, binary))
    return tuple(chosen)


def request_times(
    request: OipRequest, default_slo_ms: float, deadline_factor: float, max_deadline_ms: float
) -> tuple[float, float]:
    """(slo_ms, deadline in ms after arrival) for the dispatcher.

    The SLO is `parameters.slo_ms`, else the timeout, else the model's default. Triton's timeout
    is how long the client waits, so it is the deadline itself; without one the deadline is the
    SLO times the deadline factor, as for `/v1/infer`. Either way it is capped.
    """
    slo_ms = request.slo_ms or request.timeout_ms or default_slo_ms
    after_ms = request.timeout_ms if request.timeout_ms is not None else slo_ms * deadline_factor
    return slo_ms, min(after_ms, max_deadline_ms)


def encode_response(
    model: str,
    request_id: str,
    outputs: Mapping[str, Array],
    requested: tuple[RequestedOutput, ...],
    parameters: Mapping[str, Any],
    spec: ModelSpec | None = None,
) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary outputs follow it (else None). With
    `spec`, the answer names the model and version it served, and a model without a batch axis
    answers its one item without one."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    outputs = codec.without_batch_axis(dict(outputs), spec)
    for want in requested:
        array = outputs.get(want.name)
        datatype = None if array is None else DATATYPES.get(array.dtype.name)
        if array is None or datatype is None:
            raise GpuletError(f"model {model} answered without a usable output {want.name!r}",
                              outputs=sorted(outputs))  # fmt: skip
        entry: dict[str, Any] = {"name": want.name, "datatype": datatype,
                                 "shape": list(array.shape)}  # fmt: skip
        if want.binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)  # OIP: flat, row-major
        tensors.append(entry)
    named: dict[str, Any] = {"model_name": model}
    if spec is not None:
        named = {"model_name": base_name(spec.name), "model_version": spec.version}
    header = codec.dumps(
        {**named, "id": request_id, "parameters": dict(parameters), "outputs": tensors}
    )  # fmt: skip
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def error_body(error: GpuletError, request_id: str | None = None) -> dict[str, Any]:
    """OIP's `{"error": "<message>"}`, which OIP clients show, plus our code and numbers."""
    details = dict(error.details)
    if request_id is not None:
        details.setdefault("request_id", request_id)
    return {"error": error.message, "code": error.code, "details": details}


def check_version(spec: ModelSpec, version: str | None) -> None:
    if version is not None and version != VERSION:
        raise UnknownModel(
            f"model {spec.name} has no version {version!r}; its only version is {VERSION!r}",
            versions=[VERSION],
        )


def base_name(served_name: str) -> str:
    """The model a served name is a version of ("m@2" -> "m"; "m" -> "m")."""
    return served_name.partition(VERSION_MARK)[0]


def served_versions(models: Mapping[str, ModelSpec], name: str) -> list[str]:
    """The versions of model `name` served, ascending (its own spec's, and any "name@v")."""
    found = {s.version for n, s in models.items() if n == name or n.startswith(name + VERSION_MARK)}
    return sorted(found, key=lambda v: (len(v), v))


def find_version(models: Mapping[str, ModelSpec], name: str, version: str | None) -> ModelSpec:
    """The spec serving `name` at `version` (None: the model's default, its latest served)."""
    spec = models.get(name)
    if spec is None or VERSION_MARK in name:
        known = sorted({base_name(n) for n in models})
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(known)}",
                           models=known)  # fmt: skip
    if version is None or version == spec.version:
        return spec
    other = models.get(f"{name}{VERSION_MARK}{version}")
    if other is not None:
        return other
    versions = served_versions(models, name)
    raise UnknownModel(f"model {name} has no version {version!r} served; served versions: "
                       f"{', '.join(versions)}", versions=versions)  # fmt: skip


def describe(spec: TensorSpec) -> str:
    """'FP32[-1, 16]': the tensor as OIP metadata names it (-1: the batch, any size >= 1)."""
    return f"{DATATYPES[spec.dtype]}{_dims(spec.shape)}"


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": DATATYPES[spec.dtype], "shape": _dims(spec.shape)}


def model_metadata(
    spec: ModelSpec, platform: str, versions: list[str] | None = None
) -> dict[str, Any]:
    return {
        "name": base_name(spec.name),
        "versions": versions or [spec.version],
        "platform": platform,
        "inputs": [tensor_metadata(t) for t in spec.inputs],
        "outputs": [tensor_metadata(t) for t in spec.outputs],
    }


def model_config(spec: ModelSpec, platform: str, max_batch_size: int) -> dict[str, Any]:
    """A Triton model configuration (as its `/config` answers JSON): dims leave out the batch
    axis, which `max_batch_size` stands for (0: the model has none, dims are its whole shape);
    the router batches requests (`dynamic_batching`)."""

    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": f"TYPE_{DATATYPES[t.dtype]}",
                 "dims": list(t.item_shape)} for t in specs]  # fmt: skip

    return {
        "name": base_name(spec.name),
        "platform": platform,
        "max_batch_size": spec.batch_limit(max_batch_size) if spec.batched else 0,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": tensors(spec.inputs),
        "output": tensors(spec.outputs),
        # The router batches a batched model's requests; one without a batch axis runs alone.
        **({"dynamic_batching": {}} if spec.batched else {}),
        "parameters": {"default_slo_ms": {"string_value": f"{spec.default_slo_ms:g}"}},
    }


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "gpulet", "version": version, "extensions": list(EXTENSIONS)}


def _dims(shape: tuple[int, ...]) -> list[int]:
    return [DYNAMIC_DIM if d == BATCH_DIM else d for d in shape]


def _check_fields(what: str, raw: Mapping[str, Any], allowed: frozenset[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise BadRequest(f"{what}: unknown fields {extra}; allowed: {sorted(allowed)}")


def _parameters(what: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{what}: 'parameters' must be an object, got {type(raw).__name__}")
    return raw


def _no_shared_memory(what: str, params: Mapping[str, Any]) -> None:
    used = [p for p in SHARED_MEMORY if p in params]
    if used:
        raise BadRequest(f"{what}: {used[0]}: the shared memory extension is not supported; "
                         "send the data in the body (JSON or binary_data_size)")  # fmt: skip


def _count(params: Mapping[str, Any], name: str, what: str = "request") -> int | None:
    """A non-negative integer parameter, or None when absent."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{what}: parameters.{name} must be a non-negative integer, "
                         f"got {value!r}")  # fmt: skip
    return value


def _positive(params: Mapping[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BadRequest(f"parameters.{name} must be a positive number of milliseconds, "
                         f"got {value!r}")  # fmt: skip
    return float(value)
