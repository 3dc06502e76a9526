"""A repository model's signature: read from the ONNX bytes (without onnxruntime), the batch axis
found as Triton's auto-complete finds it, and a config.pbtxt that must agree with the graph."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto

from common.models import BATCH_DIM, DYNAMIC_DIM, ModelSpec, TensorSpec
from common.repository.config import NO_CONFIG, GpuletOptions, ModelProblem, parse_config
from common.repository.onnx_graph import GraphSignature, GraphTensor, NotOnnx, read_signature
from common.repository.signature import DEFAULT_SLO_MS, derive_spec
from tests.support.onnx_files import onnx_bytes

pytestmark = pytest.mark.timeout(30)
FLOAT, INT64, UINT8, FP16, BOOL = 1, 7, 2, 10, 9


def graph(inputs: list[GraphTensor], outputs: list[GraphTensor]) -> GraphSignature:
    return GraphSignature(8, (("", 17),), tuple(inputs), tuple(outputs), ())


def spec(g: GraphSignature, config: str = "", options: GpuletOptions | None = None) -> ModelSpec:
    parsed = parse_config(config, "m/config.pbtxt", "m") if config else NO_CONFIG
    return derive_spec("m", "3", g, parsed, options or GpuletOptions(),
                       model_file="m/3/model.onnx", config_file="m/config.pbtxt")  # fmt: skip


def test_the_signature_is_read_from_the_bytes() -> None:
    data = onnx_bytes([("ids", INT64, ["batch", 12]), ("mask", FLOAT, ["batch", 12])],
                      [("scores", FLOAT, ["batch", 3])], initializers=2)  # fmt: skip
    found = read_signature(data)
    assert [(t.name, t.dtype, t.dims) for t in found.inputs] == [
        ("ids", "int64", ("batch", 12)), ("mask", "float32", ("batch", 12))]
    assert [(t.name, t.dtype, t.dims) for t in found.outputs] == [("scores", "float32",
                                                                    ("batch", 3))]
    assert found.opsets == (("", 17),) and found.external_data == ()


@pytest.mark.parametrize(("data", "words"), [
    (b"", "no graph"),
    (b"hello, world\n", "not an ONNX model"),
    (b"\x08\x08", "no graph"),  # ir_version only
], ids=["empty", "text", "no-graph"])  # fmt: skip
def test_bytes_that_are_not_a_model_say_so(data: bytes, words: str) -> None:
    with pytest.raises(NotOnnx, match=words):
        read_signature(data)


def test_a_truncated_file_says_where_it_ends() -> None:
    data = onnx_bytes([("x", FLOAT, ["b", 4])], [("y", FLOAT, ["b", 4])], initializers=3)
    with pytest.raises(NotOnnx, match=rf"truncated: .* data ends at {len(data) - 5}"):
        read_signature(data[:-5])


def test_external_data_is_refused_naming_the_tensor() -> None:
    model = onnx.load_from_string(onnx_bytes([("x", FLOAT, ["b", 2])], [("y", FLOAT, ["b", 2])],
                                             initializers=1))  # fmt: skip
    model.graph.initializer[0].data_location = TensorProto.EXTERNAL
    found = read_signature(model.SerializeToString())
    assert found.external_data == ("w0",)
    with pytest.raises(ModelProblem, match="'w0' keeps its data in another file"):
        spec(found)


def test_a_symbolic_first_axis_everywhere_is_a_batch_axis() -> None:
    got = spec(graph([GraphTensor("pixels", UINT8, ("N", 3, 8, 8))],
                     [GraphTensor("probs", FLOAT, (None, 5))]))  # fmt: skip
    assert got.inputs == (TensorSpec("pixels", "uint8", (BATCH_DIM, 3, 8, 8)),)
    assert got.outputs == (TensorSpec("probs", "float32", (BATCH_DIM, 5)),)
    assert got.batched and got.max_batch_size == 0  # GPULET_MAX_BATCH bounds it
    assert (got.name, got.version, got.default_slo_ms) == ("m", "3", DEFAULT_SLO_MS)


def test_a_fixed_first_axis_means_no_batch_axis_and_one_item_per_request() -> None:
    got = spec(graph([GraphTensor("x", FP16, (3, 5))], [GraphTensor("y", BOOL, (5,))]))
    assert got.inputs == (TensorSpec("x", "float16", (3, 5), batched=False),)
    assert got.outputs == (TensorSpec("y", "bool", (5,), batched=False),)
    assert not got.batched and got.max_batch_size == 1 and got.inputs[0].item_shape == (3, 5)


def test_a_variable_item_size_must_be_fixed_by_the_config() -> None:
    seq = graph([GraphTensor("ids", INT64, ("batch", "seq"))],
                [GraphTensor("out", FLOAT, ("batch", "seq", 4))])  # fmt: skip
    with pytest.raises(ModelProblem, match=r"m/3/model.onnx: input 'ids' has a variable size at "
                       r"item axis 0 .*give it a size in config.pbtxt dims"):  # fmt: skip
        spec(seq)
    fixed = spec(seq, 'input [{ name: "ids", data_type: TYPE_INT64, dims: [128] }]\n'
                      'output [{ name: "out", data_type: TYPE_FP32, dims: [-1, 4] }]')  # fmt: skip
    assert fixed.inputs[0].shape == (BATCH_DIM, 128)
    assert fixed.outputs[0].shape == (BATCH_DIM, DYNAMIC_DIM, 4)  # outputs may stay variable


def test_max_batch_size_decides_the_batch_axis() -> None:
    batched = graph([GraphTensor("x", FLOAT, ("b", 4))], [GraphTensor("y", FLOAT, ("b", 4))])
    assert spec(batched, "max_batch_size: 8").max_batch_size == 8
    whole = spec(graph([GraphTensor("x", FLOAT, (2, 4))], [GraphTensor("y", FLOAT, (2, 4))]),
                 "max_batch_size: 0")  # fmt: skip
    assert not whole.batched and whole.inputs[0].shape == (2, 4)
    with pytest.raises(ModelProblem, match=r"config.pbtxt: max_batch_size: 4 needs a dynamic "
                       r"batch axis .* 'x' has shape \[2, 4\]; use max_batch_size: 0"):  # fmt: skip
        spec(graph([GraphTensor("x", FLOAT, (2, 4))], [GraphTensor("y", FLOAT, (2, 4))]),
             "max_batch_size: 4")


@pytest.mark.parametrize(("config", "field", "words"), [
    ('input [{ name: "z", data_type: TYPE_FP32, dims: [4] }]', "input",
     "['z'] are not in the graph; the graph's ['x'] are missing"),
    ('input [{ name: "x", data_type: TYPE_INT32, dims: [4] }]', "input 'x' data_type",
     "int32, but the graph's input is float32"),
    ('max_batch_size: 2 input [{ name: "x", data_type: TYPE_FP32, dims: [5] }]', "input 'x' dims",
     "[5] disagrees with the graph's [4] at axis 0"),
    ('max_batch_size: 2 input [{ name: "x", data_type: TYPE_FP32, dims: [1, 4] }]',
     "input 'x' dims", "has 2 dimensions, the graph's [4] has 1 (without the batch axis"),
    ('output [{ name: "y", data_type: TYPE_FP16, dims: [4] }]', "output 'y' data_type",
     "float16, but the graph's output is float32"),
])  # fmt: skip
def test_a_config_that_disagrees_with_the_graph_names_the_field(
    config: str, field: str, words: str
) -> None:
    g = graph([GraphTensor("x", FLOAT, ("b", 4))], [GraphTensor("y", FLOAT, ("b", 4))])
    with pytest.raises(ModelProblem) as caught:
        spec(g, config)
    assert (caught.value.file, caught.value.field) == ("m/config.pbtxt", field)
    assert words in str(caught.value)


def test_tensors_gpulet_cannot_serve_are_named() -> None:
    with pytest.raises(ModelProblem, match="input 'text' is STRING; gpulet serves numeric"):
        spec(graph([GraphTensor("text", 8, ("b",))], [GraphTensor("y", FLOAT, ("b",))]))
    with pytest.raises(ModelProblem, match="output 'seq' is sequence"):
        spec(graph([GraphTensor("x", FLOAT, ("b", 1))], [GraphTensor("seq", 0, None, "sequence")]))


def test_gpulet_toml_sets_the_slo_and_description() -> None:
    g = graph([GraphTensor("x", FLOAT, ("b", 1))], [GraphTensor("y", FLOAT, ("b", 1))])
    got = spec(g, options=GpuletOptions(slo_ms=25.0, description="mine"))
    assert (got.default_slo_ms, got.description) == (25.0, "mine")
