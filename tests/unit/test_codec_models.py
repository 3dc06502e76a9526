"""The request codecs (/v1 and OIP) on repository models' signatures: a model without a batch axis
(requests carry its whole shape; inside, a batch of one), a model's own max_batch_size, every
dtype (bool strictly true/false), and versions addressed by number."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from common.errors import BadRequest, UnknownModel
from common.models import BATCH_DIM, ModelSpec, TensorSpec
from router.http import codec, oip_codec

pytestmark = pytest.mark.timeout(30)

FIXED = ModelSpec("fixed", (TensorSpec("x", "float32", (3, 5), batched=False),),
                  (TensorSpec("y", "float32", (5,), batched=False),), 100.0, "", 1)  # fmt: skip
PAIR = ModelSpec("pair", (TensorSpec("a", "float32", (BATCH_DIM, 4)),
                          TensorSpec("flag", "bool", (BATCH_DIM, 4))),
                 (TensorSpec("total", "float16", (BATCH_DIM, 4)),), 100.0, "", 8)  # fmt: skip
V1 = ModelSpec("tagger@1", (TensorSpec("ids", "int64", (BATCH_DIM, 2)),),
               (TensorSpec("s", "float32", (BATCH_DIM, 1)),), 100.0, "", version="1")  # fmt: skip
V2 = ModelSpec("tagger", V1.inputs, V1.outputs, 100.0, "", version="2")
MODELS = {"fixed": FIXED, "pair": PAIR, "tagger": V2, "tagger@1": V1}


def v1(model: str, inputs: dict[str, object]) -> codec.InferRequest:
    return codec.decode_request({"model": model, "inputs": inputs}, MODELS, max_batch=64)


def test_a_model_without_a_batch_axis_takes_its_whole_shape_as_one_item() -> None:
    parsed = v1("fixed", {"x": [[1.0] * 5] * 3})
    assert parsed.batch == 1 and parsed.inputs["x"].shape == (1, 3, 5)
    raw = np.arange(15, dtype=np.float32).reshape(3, 5)
    as_base64 = v1("fixed", {"x": {"shape": [3, 5], "dtype": "float32",
                                   "data": base64.b64encode(raw.tobytes()).decode()}})
    np.testing.assert_array_equal(as_base64.inputs["x"][0], raw)
    answer = codec.encode_outputs({"y": np.ones((1, 5), np.float32)}, "nested", FIXED)
    assert answer["y"].shape == (5,)  # answered without the batch axis it travelled with


def test_a_batch_axis_sent_to_a_model_without_one_is_refused_with_a_hint() -> None:
    with pytest.raises(BadRequest, match=r"shape \[1, 3, 5\] given, float32\[3, 5\] expected; "
                       "the model has no batch axis"):  # fmt: skip
        v1("fixed", {"x": [[[1.0] * 5] * 3]})


def test_a_models_own_max_batch_size_bounds_requests() -> None:
    assert v1("pair", {"a": [[0.0] * 4] * 8, "flag": [[True] * 4] * 8}).batch == 8
    with pytest.raises(BadRequest, match="exceeds model pair's max_batch_size of 8"):
        v1("pair", {"a": [[0.0] * 4] * 9, "flag": [[True] * 4] * 9})
    assert PAIR.batch_limit(4) == 4 and PAIR.batch_limit(64) == 8 and V1.batch_limit(64) == 64


def test_bool_inputs_take_true_and_false_only() -> None:
    parsed = v1("pair", {"a": [[0.0] * 4], "flag": [[True, False, True, False]]})
    assert parsed.inputs["flag"].dtype == np.bool_
    with pytest.raises(BadRequest, match="'flag': data must be true or false"):
        v1("pair", {"a": [[0.0] * 4], "flag": [[1, 0, 1, 0]]})


def test_oip_inputs_of_a_model_without_a_batch_axis_and_answers_name_the_version() -> None:
    header = {"inputs": [{"name": "x", "shape": [3, 5], "datatype": "FP32",
                          "data": list(range(15))}]}  # fmt: skip
    parsed = oip_codec.decode_request(FIXED, header, memoryview(b""), max_batch=64)
    assert parsed.inputs["x"].shape == (1, 3, 5) and parsed.batch == 1
    body, _ = oip_codec.encode_response(
        "tagger@1", "id", {"s": np.zeros((1, 1), np.float32)},
        (oip_codec.RequestedOutput("s", False),), {}, V1,
    )  # fmt: skip
    assert b'"model_name":"tagger","model_version":"1"' in body


def test_versions_are_found_by_number_and_the_latest_is_the_default() -> None:
    assert oip_codec.find_version(MODELS, "tagger", None) is V2
    assert oip_codec.find_version(MODELS, "tagger", "2") is V2
    assert oip_codec.find_version(MODELS, "tagger", "1") is V1
    assert oip_codec.served_versions(MODELS, "tagger") == ["1", "2"]
    with pytest.raises(UnknownModel, match="no version '3' served; served versions: 1, 2"):
        oip_codec.find_version(MODELS, "tagger", "3")
    with pytest.raises(UnknownModel, match="unknown model 'tagger@1'"):
        oip_codec.find_version(MODELS, "tagger@1", None)  # versions are addressed by number


def test_metadata_and_config_of_versions_and_of_a_model_without_a_batch_axis() -> None:
    assert oip_codec.model_metadata(V1, "onnxruntime_onnx")["name"] == "tagger"
    fixed = oip_codec.model_config(FIXED, "onnxruntime_onnx", 64)
    assert fixed["max_batch_size"] == 0 and fixed["input"][0]["dims"] == [3, 5]
    assert "dynamic_batching" not in fixed
    assert oip_codec.model_config(PAIR, "onnxruntime_onnx", 64)["max_batch_size"] == 8
    assert oip_codec.tensor_metadata(FIXED.inputs[0])["shape"] == [3, 5]
