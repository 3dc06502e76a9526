"""Read an ONNX file's signature straight from its protobuf bytes (pure; no onnx, no onnxruntime).

The router lists and checks repository models without loading them into an engine, so it reads
only what Triton's auto-complete reads: the graph's inputs and outputs (name, element type,
dims, each a fixed size or a symbolic name), which inputs are initializers (older exporters list
weights as inputs too), whether any tensor lives in an external data file, and the opsets. A
file that is not protobuf, or ends inside a field, is refused here with the byte offset; whether
ONNX Runtime can run its operators is for the agent's check (agent/model_check.py).

Wire format (protobuf encoding): each field is a varint key `number << 3 | wire type`, then a
varint (type 0), 8 bytes (1), a varint length and that many bytes (2), or 4 bytes (5). Field
numbers from onnx.proto (IR version 3 and later):
    ModelProto      1 ir_version, 7 graph, 8 opset_import
    OperatorSetId   1 domain, 2 version
    GraphProto      5 initializer, 11 input, 12 output
    TensorProto     8 name, 14 data_location (1: EXTERNAL)
    ValueInfoProto  1 name, 2 type
    TypeProto       1 tensor_type (others: sequence, map, optional, sparse)
    TypeProto.Tensor 1 elem_type, 2 shape;  TensorShapeProto 1 dim;  Dimension 1 value, 2 param
"""

from __future__ import annotations

from dataclasses import dataclass

# TensorProto.DataType -> numpy dtype name; the ones ONNX Runtime's CPU and CUDA providers take.
ELEM_TYPES: dict[int, str] = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}  # fmt: skip
# The others, named for the error message: a served tensor cannot hold them.
UNSUPPORTED_TYPES = {0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128",
                     16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2",
                     20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4"}  # fmt: skip
EXTERNAL = 1  # TensorProto.DataLocation

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


class NotOnnx(ValueError):
    """The bytes are not a readable ONNX model; the message says where reading stopped."""


@dataclass(frozen=True)
class GraphTensor:
    name: str
    elem_type: int  # TensorProto.DataType; 0 when the graph gives no tensor type
    dims: tuple[Dim, ...] | None  # None: the graph gives no shape (any rank)
    kind: str = "tensor"  # "tensor", or what TypeProto holds instead ("sequence", "map", ...)

    @property
    def dtype(self) -> str | None:
        return ELEM_TYPES.get(self.elem_type)

    def type_name(self) -> str:
        if self.kind != "tensor":
            return self.kind
        return self.dtype or UNSUPPORTED_TYPES.get(self.elem_type, f"type {self.elem_type}")


@dataclass(frozen=True)
class GraphSignature:
    ir_version: int
    opsets: tuple[tuple[str, int], ...]  # (domain, version); "" is the default ONNX domain
    inputs: tuple[GraphTensor, ...]  # initializers left out
    outputs: tuple[GraphTensor, ...]
    external_data: tuple[str, ...]  # initializers whose bytes live in another file


def read_signature(data: bytes | memoryview) -> GraphSignature:
    view = memoryview(data)
    ir_version = 0
    graph: memoryview | None = None
    opsets: list[tuple[str, int]] = []
    for number, value in _fields(view, 0, len(view), "ModelProto"):
        if number == 1 and isinstance(value, int):
            ir_version = value
        elif number == 7 and isinstance(value, memoryview):
            graph = value
        elif number == 8 and isinstance(value, memoryview):
            opsets.append(_opset(value))
    if graph is None or ir_version <= 0:
        raise NotOnnx(f"not an ONNX model: no {'graph' if graph is None else 'ir_version'} "
                      f"(ONNX ModelProto field {7 if graph is None else 1}) in its "
                      f"{len(view)} bytes")  # fmt: skip
    return _graph(graph, ir_version, tuple(opsets))


def _graph(
    view: memoryview, ir_version: int, opsets: tuple[tuple[str, int], ...]
) -> GraphSignature:
    inputs: list[GraphTensor] = []
    outputs: list[GraphTensor] = []
    initializers: set[str] = set()
    external: list[str] = []
    for number, value in _fields(view, 0, len(view), "GraphProto"):
        if not isinstance(value, memoryview):
            continue
        if number == 5:
            name, location = _initializer(value)
            initializers.add(name)
            if location == EXTERNAL:
                external.append(name)
        elif number == 11:
            inputs.append(_value_info(value))
        elif number == 12:
            outputs.append(_value_info(value))
    return GraphSignature(
        ir_version, opsets, tuple(t for t in inputs if t.name not in initializers),
        tuple(outputs), tuple(external),
    )  # fmt: skip


def _opset(view: memoryview) -> tuple[str, int]:
    domain, version = "", 0
    for number, value in _fields(view, 0, len(view), "OperatorSetId"):
        if number == 1 and isinstance(value, memoryview):
            domain = _text(value)
        elif number == 2 and isinstance(value, int):
            version = value
    return domain, version


def _initializer(view: memoryview) -> tuple[str, int]:
    name, location = "", 0
    for number, value in _fields(view, 0, len(view), "TensorProto"):
        if number == 8 and isinstance(value, memoryview):
            name = _text(value)
        elif number == 14 and isinstance(value, int):
            location = value
    return name, location


def _value_info(view: memoryview) -> GraphTensor:
    name = ""
    type_view: memoryview | None = None
    for number, value in _fields(view, 0, len(view), "ValueInfoProto"):
        if number == 1 and isinstance(value, memoryview):
            name = _text(value)
        elif number == 2 and isinstance(value, memoryview):
            type_view = value
    if type_view is None:
        return GraphTensor(name, 0, None)
    kinds = {4: "sequence", 5: "map", 8: "sparse tensor", 9: "optional"}
    for number, value in _fields(type_view, 0, len(type_view), "TypeProto"):
        if number == 1 and isinstance(value, memoryview):
            return _tensor_type(name, value)
        if number in kinds:
            return GraphTensor(name, 0, None, kinds[number])
    return GraphTensor(name, 0, None)


def _tensor_type(name: str, view: memoryview) -> GraphTensor:
    elem_type = 0
    dims: tuple[Dim, ...] | None = None
    for number, value in _fields(view, 0, len(view), "TypeProto.Tensor"):
        if number == 1 and isinstance(value, int):
            elem_type = value
        elif number == 2 and isinstance(value, memoryview):
            dims = tuple(
                _dim(d) for n, d in _fields(value, 0, len(value), "TensorShapeProto")
                if n == 1 and isinstance(d, memoryview)
            )  # fmt: skip
    return GraphTensor(name, elem_type, dims)


def _dim(view: memoryview) -> Dim:
    for number, value in _fields(view, 0, len(view), "Dimension"):
        if number == 1 and isinstance(value, int):
            return value
        if number == 2 and isinstance(value, memoryview):
            return _text(value) or None
    return None


def _text(view: memoryview) -> str:
    try:
        return bytes(view).decode()
    except UnicodeDecodeError:
        raise NotOnnx("not an ONNX model: a name is not UTF-8 text") from None


def _fields(
    view: memoryview, start: int, end: int, message: str
) -> list[tuple[int, int | memoryview]]:
    """Every (field number, value) of one message: ints for varints and fixed-width fields, a
    view for length-delimited ones (not copied: weights are skipped without reading them)."""
    found: list[tuple[int, int | memoryview]] = []
    offset = start
    while offset < end:
        key, offset = _varint(view, offset, end, message)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NotOnnx(f"not an ONNX model: field number 0 in {message} at byte {offset}")
        if wire == 0:
            value, offset = _varint(view, offset, end, message)
            found.append((number, value))
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if offset + width > end:
                raise _truncated(message, offset, end)
            found.append((number, int.from_bytes(view[offset:offset + width], "little")))
            offset += width
        elif wire == 2:
            length, offset = _varint(view, offset, end, message)
            if offset + length > end:
                raise _truncated(message, offset + length, end)
            found.append((number, view[offset:offset + length]))
            offset += length
        else:
            raise NotOnnx(f"not an ONNX model: wire type {wire} in {message} at byte {offset} "
                          "(a protobuf file it is not)")  # fmt: skip
    return found


def _varint(view: memoryview, offset: int, end: int, message: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if offset >= end:
            raise _truncated(message, offset, end)
        byte = view[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise NotOnnx(f"not an ONNX model: a varint in {message} runs past 10 bytes")


def _truncated(message: str, needed: int, end: int) -> NotOnnx:
    return NotOnnx(f"truncated: {message} needs byte {needed} but the data ends at {end} "
                   "(an incomplete copy?)")  # fmt: skip
