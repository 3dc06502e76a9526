"""Turn a `/v1/infer` JSON body into validated arrays, and outputs back into JSON (pure).

Inputs come in one of three forms (DESIGN.md section 5), and outputs go back in the form of the
request's first input:
    nested list                         [[0.1, 0.2, ...], ...]
    object with a flat list             {"shape": [1, 16], "dtype": "float32", "data": [...]}
    object with base64 of raw LE bytes  {"shape": [1, 16], "dtype": "float32", "data": "AAB..."}
Every rejection is a BadRequest naming the input and what was expected.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
import pybase64

from common.errors import BadRequest, UnknownModel
from common.frames import Array
from common.models import ModelSpec, TensorSpec

InputForm = Literal["nested", "flat", "base64"]
REQUEST_FIELDS = frozenset({"model", "inputs", "slo_ms", "id"})


@dataclass(frozen=True)
class InferRequest:
    model: ModelSpec
    inputs: dict[str, Array]
    batch: int
    form: InputForm
    slo_ms: float | None
    request_id: str | None


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object, got {type(data).__name__}")
    return data


def decode_request(
    data: dict[str, Any], models: dict[str, ModelSpec], *, max_batch: int
) -> InferRequest:
    extra = sorted(set(data) - REQUEST_FIELDS)
    if extra:
        raise BadRequest(f"unknown fields {extra}; allowed: {sorted(REQUEST_FIELDS)}")
    name = data.get("model")
    if not isinstance(name, str):
        raise BadRequest('"model" must be a string naming a model', models=sorted(models))
    spec = models.get(name)
    if spec is None:
        raise UnknownModel(
            f"unknown model {name!r}; known models: {', '.join(sorted(models))}",
            models=sorted(models),
        )
    slo_ms = data.get("slo_ms")
    if slo_ms is not None and (
        isinstance(slo_ms, bool) or not isinstance(slo_ms, int | float) or not slo_ms > 0
    ):
        raise BadRequest(f'"slo_ms" must be a positive number of milliseconds, got {slo_ms!r}')
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string, got {type(request_id).__name__}')
    raw_inputs = data.get("inputs")
    if not isinstance(raw_inputs, dict):
        raise BadRequest(
            '"inputs" must be an object mapping input names to tensors',
            expected={t.name: t.describe() for t in spec.inputs},
        )
    missing = [t.name for t in spec.inputs if t.name not in raw_inputs]
    unexpected = sorted(set(raw_inputs) - {t.name for t in spec.inputs})
    if missing or unexpected:
        parts = [f"missing inputs {missing}"] if missing else []
        parts += [f"unexpected inputs {unexpected}"] if unexpected else []
        raise BadRequest(
            f"model {name}: {'; '.join(parts)}",
            expected={t.name: t.describe() for t in spec.inputs},
        )
    arrays: dict[str, Array] = {}
    forms: list[InputForm] = []
    for tensor in spec.inputs:
        arrays[tensor.name], form = decode_tensor(tensor, raw_inputs[tensor.name])
        forms.append(form)
    batches = {a.shape[0] for a in arrays.values()}
    if len(batches) != 1:
        sizes = {n: a.shape[0] for n, a in arrays.items()}
        raise BadRequest(f"inputs disagree on the batch size: {sizes}")
    batch = batches.pop()
    check_batch(spec, batch, max_batch)
    return InferRequest(spec, arrays, batch, forms[0], float(slo_ms) if slo_ms else None,
                        request_id)  # fmt: skip


def check_batch(spec: ModelSpec, batch: int, max_batch: int) -> None:
    """BadRequest when a request carries more items than the model (or GPULET_MAX_BATCH) takes."""
    limit = spec.batch_limit(max_batch)
    if batch <= limit:
        return
    if limit < max_batch:
        raise BadRequest(f"batch of {batch} exceeds model {spec.name}'s max_batch_size of "
                         f"{limit}; split the request", max_batch_size=limit)  # fmt: skip
    raise BadRequest(f"batch of {batch} exceeds the limit of {max_batch}; split the request")


def with_batch_axis(spec: TensorSpec, array: Array) -> Array:
    """Inside gpulet every tensor has a batch axis: a model without one gets a batch of one."""
    return array if spec.batched else array.reshape((1, *array.shape))


def decode_tensor(spec: TensorSpec, value: Any) -> tuple[Array, InputForm]:
    if isinstance(value, list):
        return _check_shape(spec, from_list(spec, value)), "nested"
    if isinstance(value, dict):
        return _from_object(spec, value)
    raise BadRequest(
        f"input {spec.name!r}: expected a nested list or an object with shape, dtype and data, "
        f"got {type(value).__name__}",
        input=spec.name,
        expected=spec.describe(),
    )


def from_list(spec: TensorSpec, value: list[Any]) -> Array:
    try:
        array = np.asarray(value)
    except ValueError:
        raise BadRequest(
            f"input {spec.name!r}: ragged nested list; expected {spec.describe()}",
            input=spec.name,
            expected=spec.describe(),
        ) from None
    return cast_numbers(spec, array)


def cast_numbers(spec: TensorSpec, array: Array) -> Array:
    kind = array.dtype.kind
    target = np.dtype(spec.dtype)
    if target.kind == "b" and kind != "b" and array.size:
        raise BadRequest(f"input {spec.name!r}: data must be true or false; expected "
                         f"{spec.describe()}", input=spec.name,
                         expected=spec.describe())  # fmt: skip
    if kind not in "biuf" or (kind == "b" and target.kind != "b"):
        raise BadRequest(
            f"input {spec.name!r}: data must be numbers; expected {spec.describe()}",
            input=spec.name,
            expected=spec.describe(),
        )
    if (target.kind in "iu" and kind == "f") and (
        not np.all(np.isfinite(array)) or not np.all(np.floor(array) == array)
    ):
        raise BadRequest(
            f"input {spec.name!r}: expected integers ({spec.dtype}), got fractional values",
            input=spec.name,
            expected=spec.describe(),
        )
    if array.size and _out_of_range(array, target):
        raise BadRequest(f"input {spec.name!r}: values out of range for {spec.dtype}",
                         input=spec.name, expected=spec.describe())  # fmt: skip
    return array.astype(target, copy=False)


def _out_of_range(array: Array, target: np.dtype[Any]) -> bool:
    low, high = array.min(), array.max()
    if target.kind in "iu":
        info = np.iinfo(target)
        if array.dtype.kind == "f":
            # float(info.max) rounds up to 2**bits, so compare against the exact bounds:
            # valid integers lie in [min, max + 1) when both are powers of two apart.
            return bool(low < float(info.min) or high >= float(info.max) + 1.0)
        return bool(low < info.min or high > info.max)
    if target.kind == "f" and array.dtype.kind == "f" and array.dtype.itemsize > target.itemsize:
        limit = np.finfo(target).max
        return bool(low < -limit or high > limit)
    return False


def _from_object(spec: TensorSpec, value: dict[str, Any]) -> tuple[Array, InputForm]:
    extra = sorted(set(value) - {"shape", "dtype", "data"})
    if extra or not {"shape", "data"} <= set(value):
        raise BadRequest(
            f"input {spec.name!r}: object form needs 'shape', 'dtype' and 'data' only",
            input=spec.name,
            expected=spec.describe(),
        )
    shape = value["shape"]
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input {spec.name!r}: 'shape' must be a list of non-negative integers",
                         input=spec.name)  # fmt: skip
    dtype = value.get("dtype", spec.dtype)
    if dtype != spec.dtype:
        raise BadRequest(
            f"input {spec.name!r}: dtype {dtype!r} given, {spec.dtype!r} expected",
            input=spec.name,
            expected=spec.describe(),
        )
    count = math.prod(shape)
    data = value["data"]
    if isinstance(data, str):
        try:
            raw = pybase64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {spec.name!r}: 'data' is not valid base64",
                             input=spec.name) from None  # fmt: skip
        itemsize = np.dtype(spec.dtype).itemsize
        if len(raw) != count * itemsize:
            raise BadRequest(
                f"input {spec.name!r}: {len(raw)} bytes of data, shape {shape} of {spec.dtype} "
                f"needs {count * itemsize}",
                input=spec.name,
            )
        array = np.frombuffer(raw, dtype=np.dtype(spec.dtype).newbyteorder("<")).reshape(shape)
        return _check_shape(spec, array), "base64"
    if isinstance(data, list):
        if len(data) != count:
            raise BadRequest(
                f"input {spec.name!r}: {len(data)} values given, shape {shape} needs {count}",
                input=spec.name,
            )
        array = from_list(spec, data)
        if array.ndim != 1 and count:
            raise BadRequest(f"input {spec.name!r}: 'data' must be a flat list", input=spec.name)
        return _check_shape(spec, array.reshape(shape)), "flat"
    raise BadRequest(f"input {spec.name!r}: 'data' must be a flat list or a base64 string",
                     input=spec.name)  # fmt: skip


def _check_shape(spec: TensorSpec, array: Array) -> Array:
    check_shape(spec, tuple(array.shape))
    return with_batch_axis(spec, array)


def check_shape(spec: TensorSpec, got: tuple[int, ...], expected: str | None = None) -> None:
    """BadRequest unless `got` is the spec's item shape under a batch axis of at least 1 (or,
    for a model without a batch axis, its whole shape); `expected` describes the tensor in the
    caller's terms (default: `spec.describe()`)."""
    want = spec.item_shape
    if not spec.batched and got == want:
        return
    if spec.batched and len(got) == len(spec.shape) and got[1:] == want and got[0] >= 1:
        return
    expected = expected or spec.describe()
    hint = ""
    if spec.batched and got == want:
        hint = f"; add a batch axis: shape {[1, *got]} for one item"
    elif not spec.batched and got[1:] == want:
        hint = "; the model has no batch axis: send one item, without a leading batch dimension"
    raise BadRequest(
        f"input {spec.name!r}: shape {list(got)} given, {expected} expected{hint}",
        input=spec.name,
        expected=expected,
        got=list(got),
    )


def encode_outputs(
    outputs: dict[str, Array], form: InputForm, spec: ModelSpec | None = None
) -> dict[str, Any]:
    """Outputs in the request's form; numpy arrays are left for orjson to serialise natively.
    A model without a batch axis answers its one item without one (`spec` says which)."""
    encoded: dict[str, Any] = {}
    for name, array in without_batch_axis(outputs, spec).items():
        if form == "nested":
            encoded[name] = np.ascontiguousarray(array)
        elif form == "flat":
            encoded[name] = {
                "shape": list(array.shape),
                "dtype": array.dtype.name,
                "data": np.ascontiguousarray(array).reshape(-1),
            }
        else:
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            encoded[name] = {
                "shape": list(array.shape),
                "dtype": array.dtype.name,
                "data": pybase64.b64encode_as_string(little.tobytes()),
            }
    return encoded


def without_batch_axis(outputs: dict[str, Array], spec: ModelSpec | None) -> dict[str, Array]:
    if spec is None or spec.batched:
        return outputs
    return {name: array[0] if array.ndim else array for name, array in outputs.items()}


def dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
