"""The model repository's own files, parsed: protobuf text (config.pbtxt), the subset of Triton's
model configuration gpulet honours, and gpulet.toml; every problem names the file and field."""

from __future__ import annotations

import pytest

from common.repository import pbtxt
from common.repository.config import (
    ConfigTensor,
    ModelProblem,
    VersionPolicy,
    parse_config,
    parse_gpulet_toml,
)

pytestmark = pytest.mark.timeout(30)
FILE = "m/config.pbtxt"

TRITON_EXAMPLE = """
# from Triton's model configuration docs, for an ONNX model
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "input1"
    data_type: TYPE_INT64
    dims: [ 3, 4 ]
  }
]
output { name: "output0", data_type: TYPE_FP16, dims: [ -1 ] }
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_GPU } ]
version_policy: { specific: { versions: [1, 3] } }
"""


def test_protobuf_text_reads_nested_messages_lists_and_repeats() -> None:
    message = pbtxt.parse('a: 1 b { c: "x\\ty" d: [1, -2.5, TYPE_FP32] } b { c: \'z\' }; e: true')
    assert message["a"] == [1]
    assert [b["c"] for b in message["b"]] == [["x\ty"], ["z"]]
    assert message["b"][0]["d"] == [1, -2.5, "TYPE_FP32"]
    assert isinstance(message["b"][0]["d"][2], pbtxt.Ident)
    assert message["e"] == [True]


@pytest.mark.parametrize(("text", "where"), [
    ("a: ", "line 1, column 4"),
    ("a {\n b: 1\n", "missing '}'"),
    ("a: [1 2]", "expected ',' or ']'"),
    ("a 1", "expected ':' or '{'"),
    ("a: @", "unexpected '@'"),
])  # fmt: skip
def test_protobuf_text_errors_say_where(text: str, where: str) -> None:
    with pytest.raises(pbtxt.PbtxtError, match=where):
        pbtxt.parse(text)


def test_a_triton_config_reads_the_honoured_fields_and_lists_the_rest() -> None:
    config = parse_config(TRITON_EXAMPLE, FILE, "m")
    assert config.max_batch_size == 8
    assert config.inputs == (ConfigTensor("input0", "float32", (16,)),
                             ConfigTensor("input1", "int64", (3, 4)))  # fmt: skip
    assert config.outputs == (ConfigTensor("output0", "float16", (-1,)),)
    assert config.dynamic_batching
    assert config.version_policy == VersionPolicy("specific", versions=(1, 3))
    assert config.ignored == ("instance_group", "dynamic_batching.max_queue_delay_microseconds",
                              "dynamic_batching.preferred_batch_size")  # fmt: skip


@pytest.mark.parametrize(("policy", "available", "served"), [
    ("", [1, 2, 3], [3]),
    ("version_policy: { latest: { num_versions: 2 } }", [1, 2, 3], [2, 3]),
    ("version_policy: { all: {} }", [3, 1], [1, 3]),
    ("version_policy: { specific: { versions: [2, 9] } }", [1, 2, 3], [2]),
])  # fmt: skip
def test_version_policies_choose_the_served_versions(
    policy: str, available: list[int], served: list[int]
) -> None:
    assert parse_config(policy, FILE, "m").version_policy.choose(available) == served


@pytest.mark.parametrize(("text", "field", "words"), [
    ('name: "other"', "name", "differs from the folder's name 'm'"),
    ('platform: "tensorrt_plan"', "platform", "gpulet serves ONNX models"),
    ('backend: "python"', "backend", "gpulet serves ONNX models"),
    ("max_batch_size: -1", "max_batch_size", ">= 0"),
    ('max_batch_size: "8"', "max_batch_size", "not an integer"),
    ('input [{ name: "x", data_type: TYPE_STRING, dims: [1] }]', "input 'x' data_type",
     "TYPE_STRING"),
    ('input [{ name: "x", dims: [1] }]', "input 'x'", "has no data_type"),
    ('input [{ data_type: TYPE_FP32 }]', "input[0]", "has no name"),
    ('input [{ name: "x", data_type: TYPE_FP32, dims: [-2] }]', "input 'x' dims", "-1"),
    ("version_policy: { newest: {} }", "version_policy", "use latest, all or specific"),
    ("version_policy: { latest: { num_versions: 0 } }", "version_policy.latest.num_versions",
     "at least 1"),
    ('default_model_filename: "../x.onnx"', "default_model_filename", "inside the version"),
])  # fmt: skip
def test_config_problems_name_the_file_and_field(text: str, field: str, words: str) -> None:
    with pytest.raises(ModelProblem) as caught:
        parse_config(text, FILE, "m")
    assert caught.value.file == FILE and caught.value.field == field
    assert words in str(caught.value) and str(caught.value).startswith(f"{FILE}: {field}: ")


def test_text_that_is_not_protobuf_text_is_a_problem_of_the_file() -> None:
    with pytest.raises(ModelProblem, match=r"^m/config.pbtxt: not protobuf text format: line 1"):
        parse_config("max_batch_size = 4", FILE, "m")


def test_gpulet_toml_gives_slo_rate_and_description() -> None:
    options = parse_gpulet_toml('slo_ms = 50\nrate_rps = 0\ndescription = "d"\n', "m/gpulet.toml")
    assert (options.slo_ms, options.rate_rps, options.description) == (50.0, 0.0, "d")


@pytest.mark.parametrize(("text", "field"), [
    ("slo_ms = 0", "slo_ms"), ("rate_rps = -1", "rate_rps"), ("slo = 5", "slo"),
    ("description = 3", "description"),
])  # fmt: skip
def test_gpulet_toml_problems_name_the_key(text: str, field: str) -> None:
    with pytest.raises(ModelProblem) as caught:
        parse_gpulet_toml(text, "m/gpulet.toml")
    assert caught.value.field == field and caught.value.file == "m/gpulet.toml"
