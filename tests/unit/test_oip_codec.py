"""router.http.oip_codec: OIP infer bodies with JSON and binary tensors both ways, every rejection,
deadlines from parameters, and the metadata and Triton config of a model."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from common.errors import BadRequest, GpuletError, UnknownModel
from common.models import CATALOG
from router.http.oip_codec import (
    OipRequest,
    RequestedOutput,
    check_version,
    decode_request,
    encode_response,
    error_body,
    model_config,
    model_metadata,
    request_times,
    server_metadata,
    split_body,
)

pytestmark = pytest.mark.timeout(30)

MAX_BATCH = 8
NOOP = CATALOG["noop"]
BERT = CATALOG["bert_mini"]
# Values exactly representable in float32, so JSON and binary must agree bit for bit.
NOOP_ARRAY = (np.arange(32, dtype=np.float32).reshape(2, 16) - 7.0) / 4
IDS = np.arange(256, dtype=np.int64).reshape(2, 128) * 1000
MASK = (np.arange(256, dtype=np.int64).reshape(2, 128) % 3 == 0).astype(np.int64)


def json_tensor(name: str, array: np.ndarray, datatype: str, *, nested: bool = False) -> Any:
    data = array.tolist() if nested else array.reshape(-1).tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def binary_tensor(name: str, array: np.ndarray, datatype: str) -> Any:
    return {"name": name, "shape": list(array.shape), "datatype": datatype,
            "parameters": {"binary_data_size": array.nbytes}}  # fmt: skip


def body_of(header: dict[str, Any], *arrays: np.ndarray) -> tuple[bytes, str | None]:
    """The HTTP body and Inference-Header-Content-Length, as tritonclient builds them."""
    text = orjson.dumps(header)
    if not arrays:
        return text, None
    return text + b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays), str(
        len(text)
    )


def decode(header: dict[str, Any], *arrays: np.ndarray, spec: Any = NOOP) -> OipRequest:
    body, length = body_of(header, *arrays)
    parsed, binary = split_body(body, length)
    return decode_request(spec, parsed, binary, max_batch=MAX_BATCH)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_and_binary_inputs_decode_to_the_same_arrays(nested: bool) -> None:
    as_json = decode(
        {"inputs": [json_tensor("input_ids", IDS, "INT64", nested=nested),
                    json_tensor("attention_mask", MASK, "INT64", nested=nested)]},
        spec=BERT,
    )  # fmt: skip
    as_binary = decode(
        {"inputs": [binary_tensor("input_ids", IDS, "INT64"),
                    binary_tensor("attention_mask", MASK, "INT64")]},
        IDS, MASK, spec=BERT,
    )  # fmt: skip
    for request in (as_json, as_binary):
        assert request.batch == 2
        assert request.inputs["input_ids"].dtype == np.int64
        assert request.inputs["input_ids"].tobytes() == IDS.tobytes()
        assert request.inputs["attention_mask"].tobytes() == MASK.tobytes()


def test_binary_and_json_inputs_mix_and_bytes_follow_the_inputs_order() -> None:
    # attention_mask comes first in the request, so its bytes come first in the body.
    request = decode(
        {"inputs": [binary_tensor("attention_mask", MASK, "INT64"),
                    json_tensor("input_ids", IDS, "INT64")]},
        MASK, spec=BERT,
    )  # fmt: skip
    assert request.inputs["attention_mask"].tobytes() == MASK.tobytes()
    assert request.inputs["input_ids"].tobytes() == IDS.tobytes()


def test_defaults_every_output_in_json_with_no_schedule() -> None:
    request = decode({"inputs": [json_tensor("input", NOOP_ARRAY, "FP32")]})
    assert request.outputs == (RequestedOutput("output", binary=False),)
    assert (request.request_id, request.slo_ms, request.timeout_ms, request.priority) == (
        None, None, None, 0)  # fmt: skip


def test_parameters_carry_id_slo_timeout_priority_and_binary_outputs() -> None:
    request = decode({
        "id": "r-1",
        "parameters": {"slo_ms": 25, "timeout": 40_000, "priority": 2,
                       "binary_data_output": True, "custom": "ignored"},
        "inputs": [json_tensor("input", NOOP_ARRAY, "FP32")],
    })  # fmt: skip
    assert request.request_id == "r-1"
    assert (request.slo_ms, request.timeout_ms, request.priority) == (25.0, 40.0, 2)
    assert request.outputs == (RequestedOutput("output", binary=True),)


@pytest.mark.parametrize(
    ("output", "binary_default", "binary"),
    [
        ({"name": "output"}, False, False),
        ({"name": "output"}, True, True),
        ({"name": "output", "parameters": {"binary_data": True}}, False, True),
        ({"name": "output", "parameters": {"binary_data": False}}, True, False),
    ],
)
def test_a_named_outputs_binary_data_overrides_the_requests_default(
    output: dict[str, Any], binary_default: bool, binary: bool
) -> None:
    request = decode({"parameters": {"binary_data_output": binary_default},
                      "inputs": [json_tensor("input", NOOP_ARRAY, "FP32")],
                      "outputs": [output]})  # fmt: skip
    assert request.outputs == (RequestedOutput("output", binary),)


@pytest.mark.parametrize(
    ("slo_ms", "timeout_ms", "want"),
    [
        (None, None, (10.0, 20.0)),  # the model's default SLO x the factor
        (30.0, None, (30.0, 60.0)),
        (None, 15.0, (15.0, 15.0)),  # the timeout is the deadline, and the SLO
        (30.0, 15.0, (30.0, 15.0)),
        (None, 500_000.0, (500_000.0, 60_000.0)),  # capped
    ],
)
def test_request_times_follow_slo_then_timeout_then_default(
    slo_ms: float | None, timeout_ms: float | None, want: tuple[float, float]
) -> None:
    request = OipRequest({}, 1, (), None, slo_ms, timeout_ms, 0)
    assert request_times(request, NOOP.default_slo_ms, 2.0, 60_000.0) == want


def test_a_timeout_of_zero_is_no_timeout_as_in_triton() -> None:
    request = decode({"parameters": {"timeout": 0},
                      "inputs": [json_tensor("input", NOOP_ARRAY, "FP32")]})  # fmt: skip
    assert request.timeout_ms is None


def test_outputs_encode_as_json_and_as_binary_after_the_header() -> None:
    outputs = {"output": NOOP_ARRAY}
    text, length = encode_response("noop", "r-1", outputs, (RequestedOutput("output", False),),
                                   {"gpulet": "g1"})  # fmt: skip
    assert length is None
    answer = orjson.loads(text)
    assert answer == {
        "model_name": "noop", "id": "r-1", "parameters": {"gpulet": "g1"},
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [2, 16],
                     "data": NOOP_ARRAY.reshape(-1).tolist()}],
    }  # fmt: skip

    body, length = encode_response("noop", "r-1", outputs, (RequestedOutput("output", True),), {})
    assert length is not None
    header = orjson.loads(body[:length])
    [tensor] = header["outputs"]
    assert "data" not in tensor
    assert tensor["parameters"] == {"binary_data_size": NOOP_ARRAY.nbytes}
    got = np.frombuffer(body[length:], "<f4").reshape(tensor["shape"])
    assert got.tobytes() == NOOP_ARRAY.tobytes()


def test_binary_outputs_follow_the_requested_order() -> None:
    first, second = np.ones((1, 2), np.float32), np.arange(3, dtype=np.int64).reshape(1, 3)
    body, length = encode_response(
        "m", "r", {"a": first, "b": second},
        (RequestedOutput("b", True), RequestedOutput("a", True)), {},
    )  # fmt: skip
    assert length is not None
    header = orjson.loads(body[:length])
    assert [(t["name"], t["datatype"]) for t in header["outputs"]] == [
        ("b", "INT64"),
        ("a", "FP32"),
    ]
    assert body[length:] == second.tobytes() + first.tobytes()


def test_a_missing_output_is_an_internal_error_not_a_client_one() -> None:
    with pytest.raises(GpuletError) as caught:
        encode_response("noop", "r", {}, (RequestedOutput("output", False),), {})
    assert caught.value.status == 500 and "output" in caught.value.message


def _noop_input(**change: Any) -> dict[str, Any]:
    return {**json_tensor("input", NOOP_ARRAY[:1], "FP32"), **change}


# (header, binary arrays after it, words the message must contain); every one is a 400.
BAD: list[Any] = [
    pytest.param({"inputs": [_noop_input()], "input": 1}, (), ["unknown fields ['input']"],
                 id="unknown-field"),
    pytest.param({"id": 7, "inputs": [_noop_input()]}, (), ['"id" must be a string'], id="id"),
    pytest.param({"inputs": {"input": [1]}}, (), ['"inputs" must be a list', "FP32"],
                 id="inputs-object"),
    pytest.param({"inputs": []}, (), ["missing inputs ['input']"], id="missing-input"),
    pytest.param({"inputs": [_noop_input(), _noop_input(name="extra")]}, (),
                 ["unexpected inputs ['extra']"], id="extra-input"),
    pytest.param({"inputs": [_noop_input(), _noop_input()]}, (), ["given twice ['input']"],
                 id="repeated-input"),
    pytest.param({"inputs": [_noop_input(datatype="INT64")]}, (),
                 ["datatype 'INT64' given", "FP32[-1, 16] expected"], id="wrong-datatype"),
    pytest.param({"inputs": [_noop_input(shape=[1, 15], data=[0.0] * 15)]}, (),
                 ["shape [1, 15] given", "FP32[-1, 16] expected"], id="wrong-shape"),
    pytest.param({"inputs": [_noop_input(shape=[16], data=[0.0] * 16)]}, (),
                 ["add a batch axis: shape [1, 16]"], id="no-batch-axis"),
    pytest.param({"inputs": [_noop_input(shape=[1, -16])]}, (),
                 ["'shape' must be a list of non-negative integers"], id="negative-dim"),
    pytest.param({"inputs": [_noop_input(data=[0.0] * 15)]}, (),
                 ["15 values given", "needs 16"], id="too-few-values"),
    pytest.param({"inputs": [_noop_input(data=["x"] * 16)]}, (), ["must be numbers"],
                 id="not-numbers"),
    pytest.param({"inputs": [_noop_input(data="AAAA")]}, (), ["'data' must be a JSON list",
                 "binary_data_size"], id="data-string"),
    pytest.param({"inputs": [{k: v for k, v in _noop_input().items() if k != "data"}]}, (),
                 ["'data' must be a JSON list"], id="no-data"),
    pytest.param({"inputs": [_noop_input(parameters={"binary_data_size": 64})]},
                 (NOOP_ARRAY[:1],), ["not both"], id="data-and-binary"),
    pytest.param({"inputs": [binary_tensor("input", NOOP_ARRAY[:1], "FP32") | {
                 "parameters": {"binary_data_size": 60}}]}, (NOOP_ARRAY[:1],),
                 ["binary_data_size 60 given", "needs 64 bytes"], id="binary-size-wrong"),
    pytest.param({"inputs": [binary_tensor("input", NOOP_ARRAY, "FP32") | {"shape": [2, 16]}]},
                 (NOOP_ARRAY[:1],), ["64 bytes of binary data are left"], id="binary-short"),
    pytest.param({"inputs": [binary_tensor("input", NOOP_ARRAY[:1], "FP32")]},
                 (NOOP_ARRAY,), ["64 bytes of binary data follow"], id="binary-extra"),
    pytest.param({"inputs": [_noop_input(parameters={"shared_memory_region": "r"})]}, (),
                 ["shared memory extension is not supported"], id="shared-memory"),
    pytest.param({"inputs": [_noop_input(shape=[9, 16], data=[0.0] * 144)]}, (),
                 ["batch of 9 exceeds the limit of 8"], id="batch-too-large"),
    pytest.param({"parameters": {"slo_ms": -1}, "inputs": [_noop_input()]}, (),
                 ["parameters.slo_ms", "-1"], id="slo-negative"),
    pytest.param({"parameters": {"timeout": "soon"}, "inputs": [_noop_input()]}, (),
                 ["parameters.timeout", "non-negative integer"], id="timeout-string"),
    pytest.param({"parameters": {"priority": -1}, "inputs": [_noop_input()]}, (),
                 ["parameters.priority"], id="priority-negative"),
    pytest.param({"parameters": {"sequence_id": 3}, "inputs": [_noop_input()]}, (),
                 ["sequence batching is not supported"], id="sequence"),
    pytest.param({"parameters": [], "inputs": [_noop_input()]}, (),
                 ["'parameters' must be an object"], id="parameters-list"),
    pytest.param({"inputs": [_noop_input()], "outputs": [{"name": "logits"}]}, (),
                 ["no output 'logits'", "['output']"], id="unknown-output"),
    pytest.param({"inputs": [_noop_input()], "outputs": [{"name": "output"}] * 2}, (),
                 ["asked for twice"], id="repeated-output"),
    pytest.param({"inputs": [_noop_input()],
                  "outputs": [{"name": "output", "parameters": {"class_count": 3}}]}, (),
                 ["classification extension is not supported"], id="class-count"),
    pytest.param({"inputs": [_noop_input()],
                  "outputs": [{"name": "output", "parameters": {"binary_data": "yes"}}]}, (),
                 ["binary_data must be true or false"], id="binary-data-not-bool"),
]  # fmt: skip


@pytest.mark.parametrize(("header", "arrays", "words"), BAD)
def test_bad_requests_are_400_naming_what_was_expected(
    header: dict[str, Any], arrays: tuple[np.ndarray, ...], words: list[str]
) -> None:
    with pytest.raises(BadRequest) as caught:
        decode(header, *arrays)
    for word in words:
        assert word in caught.value.message


@pytest.mark.parametrize(
    ("body", "length", "words"),
    [
        (b'{"inputs": []}', "99", ["Inference-Header-Content-Length '99'", "14 bytes"]),
        (b'{"inputs": []}', "ten", ["Inference-Header-Content-Length 'ten'"]),
        (b'{"inputs": [', "12", ["not valid JSON"]),
        (b"[1]", None, ["JSON object"]),
    ],
)
def test_a_body_that_does_not_split_is_400(
    body: bytes, length: str | None, words: list[str]
) -> None:
    with pytest.raises(BadRequest) as caught:
        split_body(body, length)
    for word in words:
        assert word in caught.value.message


def test_errors_keep_oips_message_string_with_our_code_and_numbers() -> None:
    error = UnknownModel("unknown model 'x'", models=["noop"])
    assert error_body(error, "r-1") == {
        "error": "unknown model 'x'",
        "code": "unknown_model",
        "details": {"models": ["noop"], "request_id": "r-1"},
    }


def test_metadata_marks_the_batch_axis_dynamic_in_oip_datatypes() -> None:
    assert model_metadata(BERT, "onnxruntime_onnx") == {
        "name": "bert_mini",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, 128]},
                   {"name": "attention_mask", "datatype": "INT64", "shape": [-1, 128]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
    }  # fmt: skip


def test_config_leaves_the_batch_axis_to_max_batch_size() -> None:
    config = model_config(CATALOG["lenet"], "onnxruntime_onnx", 64)
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]
    assert config["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["platform"] == "onnxruntime_onnx" and "dynamic_batching" in config
    assert config["parameters"]["default_slo_ms"] == {"string_value": "5"}


def test_server_metadata_lists_the_extensions() -> None:
    meta = server_metadata("0.1.0")
    assert meta["name"] == "gpulet" and meta["version"] == "0.1.0"
    assert {"binary_tensor_data", "schedule_policy", "model_configuration"} <= set(
        meta["extensions"]
    )


def test_only_version_one_exists() -> None:
    check_version(NOOP, None)
    check_version(NOOP, "1")
    with pytest.raises(UnknownModel, match="no version '2'"):
        check_version(NOOP, "2")
