"""Compact messages between processes: a small JSON header plus raw little-endian tensor bytes.

Used on every internal hop (router -> agent over HTTP, agent -> worker over a unix socket) so
no tensor is ever JSON-encoded or pickled between our own processes (DESIGN.md section 6).

Layout of one frame body:  u32 header_len | header (JSON) | tensor bytes, back to back.
The header's "tensors" list gives each tensor's name, dtype, shape and byte count in order.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

# dtypes that may cross a process boundary; all little-endian on the wire.
WIRE_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
     "uint32", "uint64", "bool"}
)  # fmt: skip

_HEADER_LEN = struct.Struct("<I")
Array = npt.NDArray[Any]


class FrameError(ValueError):
    """A frame that cannot be decoded: truncated, inconsistent or of an unknown dtype."""


@dataclass(frozen=True)
class Frame:
    header: dict[str, Any]
    tensors: dict[str, Array]


def wire_dtype(name: str) -> np.dtype[Any]:
    if name not in WIRE_DTYPES:
        raise FrameError(f"dtype {name!r} cannot cross the wire; allowed: {sorted(WIRE_DTYPES)}")
    return np.dtype(name).newbyteorder("<")


def encode(header: Mapping[str, Any], tensors: Mapping[str, Array] | None = None) -> bytes:
    return b"".join(encode_parts(header, tensors))


def encode_parts(
    header: Mapping[str, Any], tensors: Mapping[str, Array] | None = None
) -> list[bytes | memoryview]:
    """The frame as the pieces `encode` joins: a writer that takes a list (os.writev) skips
    the copy into one buffer."""
    metas = []
    chunks: list[bytes | memoryview] = []
    for name, array in (tensors or {}).items():
        dtype_name = array.dtype.name
        # astype keeps 0-d shapes (ascontiguousarray would make them 1-d) and copies only
        # when the layout or byte order must change.
        contiguous = array.astype(wire_dtype(dtype_name), order="C", copy=False)
        metas.append(
            {
                "name": name,
                "dtype": dtype_name,
                "shape": list(contiguous.shape),
                "nbytes": contiguous.nbytes,
            }
        )
        if contiguous.size:  # memoryview cannot cast a view with a zero in its shape
            chunks.append(contiguous.reshape(-1).data.cast("B"))
    head = orjson.dumps({**header, "tensors": metas})
    return [_HEADER_LEN.pack(len(head)), head, *chunks]


def decode(body: bytes | bytearray | memoryview) -> Frame:
    """Decode without copying tensor bytes: arrays are read-only views into `body`."""
    view = memoryview(body)
    if len(view) < _HEADER_LEN.size:
        raise FrameError(f"frame of {len(view)} bytes is shorter than its length prefix")
    (head_len,) = _HEADER_LEN.unpack_from(view)
    start = _HEADER_LEN.size
    if start + head_len > len(view):
        raise FrameError(f"header of {head_len} bytes runs past the frame ({len(view)} bytes)")
    try:
        header = orjson.loads(view[start : start + head_len])
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    offset = start + head_len
    tensors: dict[str, Array] = {}
    metas = header.pop("tensors", [])
    if not isinstance(metas, list):
        raise FrameError(f"frame header 'tensors' must be a list, got {type(metas).__name__}")
    for meta in metas:
        try:
            name, dtype_name = str(meta["name"]), str(meta["dtype"])
            shape = tuple(int(d) for d in meta["shape"])
            nbytes = int(meta["nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FrameError(f"bad tensor description {meta!r}") from exc
        if any(d < 0 for d in shape):
            raise FrameError(f"tensor {name!r}: negative dimension in shape {list(shape)}")
        dtype = wire_dtype(dtype_name)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected or offset + nbytes > len(view):
            raise FrameError(
                f"tensor {name!r}: {nbytes} bytes declared, {expected} needed for "
                f"{dtype_name}{list(shape)}, {len(view) - offset} left in frame"
            )
        flat = np.frombuffer(view, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
        tensors[name] = flat.reshape(shape)
        offset += nbytes
    if offset != len(view):
        raise FrameError(f"{len(view) - offset} trailing bytes after the last tensor")
    return Frame(header=header, tensors=tensors)
