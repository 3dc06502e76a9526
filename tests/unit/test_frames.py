"""common.frames: round trips of header and tensors, zero-copy decoding, and every FrameError."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.frames import WIRE_DTYPES, FrameError, decode, encode

pytestmark = pytest.mark.timeout(30)


def _sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(size=shape) * 1e3).astype(dtype)


ROUND_TRIPS = [
    ("float32", (2, 3)),
    ("float16", (4,)),
    ("float64", (1, 1, 2)),
    ("int8", (5,)),
    ("int16", (2, 2)),
    ("int32", (3,)),
    ("int64", (2, 128)),
    ("uint8", (7,)),
    ("bool", (2, 3)),
    ("float32", (0,)),
    ("bool", (0,)),
    ("float32", (1, 1, 1, 1)),
]


@pytest.mark.parametrize(
    ("dtype", "shape"), ROUND_TRIPS, ids=[f"{d}{list(s)}" for d, s in ROUND_TRIPS]
)
def test_round_trip_is_bit_exact(dtype: str, shape: tuple[int, ...]) -> None:
    array = _sample(dtype, shape)
    frame = decode(encode({"op": "infer"}, {"x": array}))
    got = frame.tensors["x"]
    assert (got.dtype, got.shape) == (array.dtype, array.shape)
    assert got.tobytes() == array.tobytes()


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 4)], ids=["0x3", "2x0x4"])
def test_zero_size_multi_dim_round_trips(shape: tuple[int, ...]) -> None:
    array = np.zeros(shape, np.float32)
    assert decode(encode({}, {"x": array})).tensors["x"].shape == shape


def test_zero_dim_round_trips() -> None:
    array = np.array(2.5, np.float32)
    assert decode(encode({}, {"x": array})).tensors["x"].shape == ()


def test_header_and_tensor_order_are_preserved() -> None:
    header = {"op": "infer", "id": "r1", "deadline_ms": 12.5, "meta": {"models": ["a", "b"]}}
    tensors = {
        "z": np.arange(4, dtype=np.int64),
        "a": np.ones((2, 2), np.float32),
        "m": np.array([True, False]),
    }
    frame = decode(encode(header, tensors))
    # "tensors" is the frame's own bookkeeping: it is popped, not handed back.
    assert frame.header == header
    assert list(frame.tensors) == ["z", "a", "m"]
    for name, array in tensors.items():
        assert np.array_equal(frame.tensors[name], array)


def test_header_only_frame() -> None:
    frame = decode(encode({"op": "ping", "n": 3}))
    assert (frame.header, frame.tensors) == ({"op": "ping", "n": 3}, {})


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        np.arange(12, dtype=np.int32).reshape(3, 4).T,
        np.arange(6, dtype=">f4"),
        np.arange(6, dtype=">i8").reshape(2, 3),
    ],
    ids=["strided", "transposed", "big-endian-f4", "big-endian-i8"],
)
def test_non_contiguous_and_big_endian_arrays_arrive_as_little_endian_values(
    array: np.ndarray,
) -> None:
    got = decode(encode({}, {"x": array})).tensors["x"]
    assert got.dtype == array.dtype.newbyteorder("<")
    assert got.shape == array.shape
    assert np.array_equal(got, array)


def test_decoded_arrays_are_views_into_the_body() -> None:
    a = np.arange(4, dtype=np.float32)
    b = np.arange(3, dtype=np.int64)
    body = bytearray(encode({}, {"a": a, "b": b}))
    frame = decode(body)
    # Overwrite the body's last 8 bytes (b[2]): a copy would not see it.
    body[-8:] = struct.pack("<q", -42)
    assert frame.tensors["b"].tolist() == [0, 1, -42]
    assert np.shares_memory(frame.tensors["a"], np.frombuffer(body, np.uint8))


def test_arrays_decoded_from_bytes_are_read_only() -> None:
    frame = decode(encode({}, {"x": np.zeros(3, np.float32)}))
    assert not frame.tensors["x"].flags.writeable


def _raw(header: Any, tail: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return struct.pack("<I", len(head)) + head + tail


def _meta(**over: Any) -> dict[str, Any]:
    return {"name": "x", "dtype": "float32", "shape": [2], "nbytes": 8, **over}


FRAME_ERRORS = [
    pytest.param(b"", "shorter than its length prefix", id="empty"),
    pytest.param(b"\x01\x00\x00", "shorter than its length prefix", id="truncated-prefix"),
    pytest.param(struct.pack("<I", 100) + b"{}", "runs past the frame", id="header-past-end"),
    pytest.param(struct.pack("<I", 5) + b"{nope", "not JSON", id="header-not-json"),
    pytest.param(_raw([1, 2]), "not a JSON object", id="header-is-list"),
    pytest.param(_raw("hello"), "not a JSON object", id="header-is-string"),
    pytest.param(_raw({"tensors": [{"name": "x"}]}), "bad tensor description", id="meta-missing"),
    pytest.param(_raw({"tensors": ["x"]}), "bad tensor description", id="meta-is-str"),
    pytest.param(
        _raw({"tensors": [_meta(shape=["a"])]}), "bad tensor description", id="shape-not-int"
    ),
    pytest.param(_raw({"tensors": [_meta(shape=3)]}), "bad tensor description", id="shape-int"),
    pytest.param(
        _raw({"tensors": [_meta(nbytes="eight")]}), "bad tensor description", id="nbytes-str"
    ),
    pytest.param(
        _raw({"tensors": [_meta(nbytes=12)]}, b"\0" * 12),
        "12 bytes declared, 8 needed",
        id="nbytes-mismatch",
    ),
    pytest.param(_raw({"tensors": [_meta()]}, b"\0" * 4), "4 left in frame", id="tensor-past-end"),
    pytest.param(_raw({"tensors": [_meta()]}, b"\0" * 9), "1 trailing bytes", id="trailing-bytes"),
    pytest.param(_raw({"op": "x"}, b"\0"), "1 trailing bytes", id="trailing-no-tensors"),
    pytest.param(
        _raw({"tensors": [_meta(dtype="complex64")]}, b"\0" * 16),
        "'complex64' cannot cross the wire",
        id="dtype-complex64",
    ),
    pytest.param(
        _raw({"tensors": [_meta(dtype="object")]}, b"\0" * 16),
        "cannot cross the wire",
        id="dtype-object",
    ),
]


@pytest.mark.parametrize(("body", "words"), FRAME_ERRORS)
def test_bad_frames_raise_frame_error(body: bytes, words: str) -> None:
    with pytest.raises(FrameError) as info:
        decode(body)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        _raw({"tensors": 5}),
        _raw({"tensors": None}),
        _raw({"tensors": [_meta(shape=[-1, -1], nbytes=4)]}, b"\0" * 4),
    ],
    ids=["tensors-int", "tensors-null", "negative-dims"],
)
def test_malformed_tensor_list_raises_frame_error(body: bytes) -> None:
    with pytest.raises(FrameError):
        decode(body)


def test_encoding_a_dtype_off_the_wire_list_is_refused() -> None:
    with pytest.raises(FrameError, match="complex64"):
        encode({}, {"x": np.zeros(2, np.complex64)})


SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(sorted(WIRE_DTYPES)).map(np.dtype),
        shape=SHAPES,
    ),
    st.dictionaries(
        st.text(max_size=5).filter(lambda k: k != "tensors"), st.integers(-(2**63), 2**63 - 1)
    ),
)
def test_random_arrays_round_trip_bit_exactly(array: np.ndarray, header: dict[str, int]) -> None:
    frame = decode(encode(header, {"t": array}))
    got = frame.tensors["t"]
    assert frame.header == header
    assert (got.dtype, got.shape) == (array.dtype, array.shape)
    assert got.tobytes() == array.tobytes()
