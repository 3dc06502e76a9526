"""Small ONNX files written with onnx's helper (no torch): an identity graph with the inputs,
outputs and weights a test names, for the repository reader's tests."""

from __future__ import annotations

from onnx import TensorProto, helper

Tensors = list[tuple[str, int, list[object]]]


def onnx_bytes(inputs: Tensors, outputs: Tensors, initializers: int = 0) -> bytes:
    nodes = [helper.make_node("Identity", [inputs[0][0]], [outputs[0][0]])]
    weights = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [2], [1.0, 2.0])
               for i in range(initializers)]  # fmt: skip
    made = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], weights,
    )  # fmt: skip
    model = helper.make_model(made, opset_imports=[helper.make_opsetid("", 17)])
    if initializers:  # IR < 4: weights are listed as inputs too, and must be left out
        model.graph.input.extend(helper.make_tensor_value_info(w.name, TensorProto.FLOAT, [2])
                                 for w in weights)  # fmt: skip
    return bytes(model.SerializeToString())
