"""router.http.codec: the three input forms, every rejection, and outputs in the request's form."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson
import pytest

from common.errors import BadRequest, UnknownModel
from common.models import CATALOG
from router.http.codec import decode_request, decode_tensor, dumps, encode_outputs, parse_body

pytestmark = pytest.mark.timeout(30)

MAX_BATCH = 8
NOOP_INPUT = CATALOG["noop"].inputs[0]
BERT_IDS = CATALOG["bert_mini"].inputs[0]


def _b64(array: np.ndarray) -> str:
    little = array.astype(array.dtype.newbyteorder("<"))
    return base64.b64encode(little.tobytes()).decode("ascii")


def _as_form(array: np.ndarray, form: str) -> Any:
    if form == "nested":
        return array.tolist()
    data: Any = array.reshape(-1).tolist() if form == "flat" else _b64(array)
    return {"shape": list(array.shape), "dtype": array.dtype.name, "data": data}


def _via_json(data: dict[str, Any]) -> Any:
    # stdlib json, because orjson refuses to write ints beyond 64 bits.
    return decode_request(parse_body(json.dumps(data).encode()), CATALOG, max_batch=MAX_BATCH)


# Values exactly representable in float32, so every form must agree bit for bit.
NOOP_ARRAYS = {"input": (np.arange(32, dtype=np.float32).reshape(2, 16) - 7.0) / 4}
BERT_ARRAYS = {
    "input_ids": np.arange(256, dtype=np.int64).reshape(2, 128) * 1000,
    "attention_mask": (np.arange(256, dtype=np.int64).reshape(2, 128) % 3 == 0).astype(np.int64),
}


@pytest.mark.parametrize("form", ["nested", "flat", "base64"])
@pytest.mark.parametrize(
    ("model", "arrays"),
    [("noop", NOOP_ARRAYS), ("bert_mini", BERT_ARRAYS)],
    ids=["noop", "bert_mini"],
)
def test_each_input_form_decodes_to_the_same_array(
    model: str, arrays: dict[str, np.ndarray], form: str
) -> None:
    body = {
        "model": model,
        "inputs": {name: _as_form(a, form) for name, a in arrays.items()},
        "slo_ms": 25,
        "id": "req-1",
    }
    request = decode_request(parse_body(orjson.dumps(body)), CATALOG, max_batch=MAX_BATCH)

    spec = CATALOG[model]
    assert request.model is spec
    assert request.form == form
    assert request.batch == 2
    assert request.slo_ms == 25.0 and isinstance(request.slo_ms, float)
    assert request.request_id == "req-1"
    assert set(request.inputs) == {t.name for t in spec.inputs}
    for tensor in spec.inputs:
        got = request.inputs[tensor.name]
        assert got.dtype == np.dtype(tensor.dtype)
        assert got.shape == arrays[tensor.name].shape
        assert got.tobytes() == arrays[tensor.name].tobytes()


def test_slo_and_id_are_optional() -> None:
    request = _via_json({"model": "noop", "inputs": {"input": [[0.0] * 16]}})
    assert (request.slo_ms, request.request_id, request.batch) == (None, None, 1)


def test_form_follows_the_first_input() -> None:
    body = {
        "model": "bert_mini",
        "inputs": {
            "attention_mask": BERT_ARRAYS["attention_mask"].tolist(),
            "input_ids": _as_form(BERT_ARRAYS["input_ids"], "base64"),
        },
    }
    # The catalog's order (input_ids first) decides, not the order of the JSON object.
    assert _via_json(body).form == "base64"


def test_batch_equal_to_the_limit_is_accepted() -> None:
    body = {"model": "noop", "inputs": {"input": [[1.0] * 16] * MAX_BATCH}}
    assert _via_json(body).batch == MAX_BATCH


def _noop(value: Any, **top: Any) -> dict[str, Any]:
    return {"model": "noop", "inputs": {"input": value}, **top}


def _bert(ids: Any, mask: Any = None) -> dict[str, Any]:
    mask = [[1] * 128] if mask is None else mask
    return {"model": "bert_mini", "inputs": {"input_ids": ids, "attention_mask": mask}}


ROW = [0.5] * 16
F32_OBJ = {"shape": [1, 16], "dtype": "float32"}

# (body, words the message must contain); every one is a 400 bad_request.
BAD_REQUESTS: list[Any] = [
    pytest.param(b"{not json", ["not valid JSON"], id="not-json"),
    pytest.param(b"[1, 2]", ["JSON object", "list"], id="body-is-a-list"),
    pytest.param(b'"noop"', ["JSON object", "str"], id="body-is-a-string"),
    pytest.param(_noop([ROW], extra=1), ["unknown fields", "extra"], id="unknown-field"),
    pytest.param({"model": 5, "inputs": {}}, ['"model" must be a string'], id="model-not-str"),
    pytest.param({"inputs": {}}, ['"model" must be a string'], id="model-missing"),
    pytest.param(_noop([ROW], slo_ms=-5), ["slo_ms", "-5"], id="slo-negative"),
    pytest.param(_noop([ROW], slo_ms=0), ["slo_ms"], id="slo-zero"),
    pytest.param(_noop([ROW], slo_ms=True), ["slo_ms", "True"], id="slo-bool"),
    pytest.param(_noop([ROW], slo_ms="10"), ["slo_ms", "'10'"], id="slo-string"),
    pytest.param(_noop([ROW], id=7), ['"id" must be a string', "int"], id="id-not-str"),
    pytest.param(
        {"model": "noop", "inputs": [ROW]}, ['"inputs" must be an object'], id="inputs-list"
    ),
    pytest.param({"model": "noop"}, ['"inputs" must be an object'], id="inputs-missing"),
    pytest.param(
        {"model": "bert_mini", "inputs": {"input_ids": [[0] * 128]}},
        ["missing inputs", "attention_mask"],
        id="missing-input",
    ),
    pytest.param(
        {"model": "noop", "inputs": {"input": [ROW], "bonus": [ROW]}},
        ["unexpected inputs", "bonus"],
        id="unexpected-input",
    ),
    pytest.param(_noop([[0.5] * 15]), ["'input'", "[1, 15]", "float32[batch, 16]"], id="shape"),
    pytest.param(_noop([[ROW]]), ["'input'", "[1, 1, 16]", "float32[batch, 16]"], id="extra-axis"),
    pytest.param(_noop(ROW), ["'input'", "[16]", "add a batch axis"], id="no-batch-axis"),
    pytest.param(_noop([]), ["'input'", "[0]"], id="empty-list"),
    pytest.param(_noop([ROW, [0.5] * 15]), ["'input'", "ragged"], id="ragged"),
    pytest.param(_noop([["a"] * 16]), ["'input'", "must be numbers"], id="strings"),
    pytest.param(_noop([[None] * 16]), ["'input'", "must be numbers"], id="nulls"),
    pytest.param(_noop([[True] * 16]), ["'input'", "must be numbers"], id="bool-for-float"),
    pytest.param(_noop("abc"), ["'input'", "nested list or an object"], id="input-is-str"),
    pytest.param(_bert([[True] * 128]), ["'input_ids'", "must be numbers"], id="bool-for-int"),
    pytest.param(_bert([[0.5] * 128]), ["'input_ids'", "fractional"], id="fractional-int64"),
    pytest.param(_bert([[2**70] * 128]), ["'input_ids'", "out of range"], id="int64-2**70"),
    pytest.param(_bert([[-(2**70)] * 128]), ["'input_ids'", "out of range"], id="int64-neg"),
    pytest.param(_bert([[2**63] * 128]), ["'input_ids'", "out of range"], id="int64-2**63"),
    pytest.param(
        _noop({**F32_OBJ, "dtype": "float64", "data": ROW}),
        ["'input'", "'float64' given", "'float32' expected"],
        id="object-wrong-dtype",
    ),
    pytest.param(
        _noop({**F32_OBJ, "data": _b64(np.zeros(15, np.float32))}),
        ["'input'", "60 bytes", "needs 64"],
        id="base64-byte-count",
    ),
    pytest.param(
        _noop({**F32_OBJ, "data": "!!not base64!!"}), ["'input'", "not valid base64"], id="bad-b64"
    ),
    pytest.param(
        _noop({**F32_OBJ, "data": [0.5] * 15}),
        ["'input'", "15 values given", "needs 16"],
        id="flat-count",
    ),
    pytest.param(
        _noop({**F32_OBJ, "data": [[0.5]] * 16}), ["'input'", "flat list"], id="flat-not-flat"
    ),
    pytest.param(
        _noop({**F32_OBJ, "data": ROW, "order": "C"}),
        ["'input'", "'shape', 'dtype' and 'data' only"],
        id="object-extra-key",
    ),
    pytest.param(
        _noop({"dtype": "float32", "data": ROW}),
        ["'input'", "'shape', 'dtype' and 'data'"],
        id="object-no-shape",
    ),
    pytest.param(
        _noop({"shape": [1, -16], "data": ROW}),
        ["'input'", "non-negative integers"],
        id="object-negative-shape",
    ),
    pytest.param(
        _noop({"shape": "1x16", "data": ROW}), ["'input'", "non-negative integers"], id="shape-str"
    ),
    pytest.param(
        _noop({**F32_OBJ, "data": 5}), ["'input'", "flat list or a base64 string"], id="data-int"
    ),
    pytest.param(
        _noop({"shape": [0, 16], "dtype": "float32", "data": ""}),
        ["'input'", "[0, 16]"],
        id="batch-of-zero",
    ),
    pytest.param(
        _noop([ROW] * (MAX_BATCH + 1)),
        [f"batch of {MAX_BATCH + 1}", f"limit of {MAX_BATCH}"],
        id="batch-over-limit",
    ),
    pytest.param(
        _bert([[0] * 128], [[1] * 128] * 2), ["disagree on the batch size"], id="batch-disagree"
    ),
]


@pytest.mark.parametrize(("body", "words"), BAD_REQUESTS)
def test_rejections_are_bad_requests_naming_the_problem(body: Any, words: list[str]) -> None:
    with pytest.raises(BadRequest) as info:
        if isinstance(body, bytes):
            decode_request(parse_body(body), CATALOG, max_batch=MAX_BATCH)
        else:
            _via_json(body)
    error = info.value
    assert (type(error), error.status, error.code) == (BadRequest, 400, "bad_request")
    for word in words:
        assert word in error.message


def test_shape_rejection_carries_expected_and_got() -> None:
    with pytest.raises(BadRequest) as info:
        _via_json(_noop([[0.5] * 15]))
    assert info.value.details == {
        "input": "input",
        "expected": "float32[batch, 16]",
        "got": [1, 15],
    }


def test_unknown_model_is_404_listing_known_models() -> None:
    with pytest.raises(UnknownModel) as info:
        _via_json({"model": "gpt5", "inputs": {}})
    error = info.value
    assert (error.status, error.code) == (404, "unknown_model")
    assert "'gpt5'" in error.message
    for name in CATALOG:
        assert name in error.message
    assert error.details["models"] == sorted(CATALOG)


def test_python_int_beyond_64_bits_is_rejected_without_json() -> None:
    # Straight from Python (not via JSON, which turns it into a float) numpy makes an object
    # array; it must still be a 400 naming the input.
    with pytest.raises(BadRequest) as info:
        decode_tensor(BERT_IDS, [[2**70] * 128])
    assert info.value.details["input"] == "input_ids"


@pytest.mark.parametrize(
    "row",
    [[2.0**63] * 128, [2**63] + [0] * 127],
    ids=["float-2**63", "int-2**63-mixed-with-small-ints"],
)
def test_values_just_past_int64_max_are_rejected(row: list[Any]) -> None:
    with pytest.raises(BadRequest):
        _via_json(_bert([row]))


def test_float_beyond_float32_range_is_rejected() -> None:
    with pytest.raises(BadRequest):
        _via_json(_noop([[1e39] + [0.0] * 15]))


@pytest.mark.parametrize(
    ("tensor", "value", "expected"),
    [
        pytest.param(
            NOOP_INPUT, [list(range(16))], np.arange(16, dtype=np.float32)[None], id="ints-f32"
        ),
        pytest.param(
            NOOP_INPUT,
            [[-3] * 8 + [2.5] * 8],
            np.array([[-3.0] * 8 + [2.5] * 8], np.float32),
            id="mixed-f32",
        ),
        pytest.param(
            BERT_IDS,
            [[float(i) for i in range(128)]],
            np.arange(128, dtype=np.int64)[None],
            id="integral-floats-int64",
        ),
        pytest.param(
            BERT_IDS,
            [[2**63 - 1, -(2**63)] * 64],
            np.array([[2**63 - 1, -(2**63)] * 64], np.int64),
            id="int64-extremes",
        ),
    ],
)
def test_numbers_are_cast_to_the_catalog_dtype(
    tensor: Any, value: Any, expected: np.ndarray
) -> None:
    array, form = decode_tensor(tensor, value)
    assert form == "nested"
    assert array.dtype == expected.dtype
    assert np.array_equal(array, expected)


OUTPUTS = [
    pytest.param({"logits": np.array([[0.1, -2.5], [3e-38, 1e30]], np.float32)}, id="float32"),
    pytest.param({"ids": np.array([[2**62, -(2**63)], [0, 7]], np.int64)}, id="int64"),
    pytest.param({"t": (np.arange(12, dtype=np.float32).reshape(3, 4) / 3).T}, id="non-contiguous"),
    pytest.param(
        {
            "a": np.array([[1.5, 2.5, 3.5]], np.float32),
            "b": np.array([[1, 2]], np.int32),
        },
        id="two-outputs",
    ),
]


def _decode_output(value: Any, form: str, like: np.ndarray) -> np.ndarray:
    if form == "nested":
        return np.asarray(value, dtype=like.dtype)
    assert value["dtype"] == like.dtype.name
    shape = tuple(value["shape"])
    if form == "flat":
        return np.asarray(value["data"], dtype=like.dtype).reshape(shape)
    little = like.dtype.newbyteorder("<")
    return np.frombuffer(base64.b64decode(value["data"]), dtype=little).reshape(shape)


@pytest.mark.parametrize("form", ["nested", "flat", "base64"])
@pytest.mark.parametrize("outputs", OUTPUTS)
def test_outputs_round_trip_through_json(outputs: dict[str, np.ndarray], form: Any) -> None:
    body = orjson.loads(dumps({"o": encode_outputs(outputs, form)}))
    assert set(body["o"]) == set(outputs)
    for name, array in outputs.items():
        got = _decode_output(body["o"][name], form, array)
        assert got.shape == array.shape
        assert got.astype(array.dtype).tobytes() == np.ascontiguousarray(array).tobytes()


def test_dumps_writes_numpy_and_plain_values() -> None:
    raw = dumps({"id": "x", "o": np.array([1, 2], np.int64), "ms": 1.5})
    assert orjson.loads(raw) == {"id": "x", "o": [1, 2], "ms": 1.5}
