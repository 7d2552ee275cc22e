"""V2 tensors <-> NumPy (pyserving.server.v2.codec), against signature tensors."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from pyserving.errors import InvalidArgument
from pyserving.server.v2 import codec
from pyserving.server.v2.protos import MESSAGES
from pyserving.server.v2.service import CONTENTS, JSON, RAW, InputTensor, decode_inputs


def info(dtype: int, *dims: int, unknown_rank: bool = False) -> meta_graph_pb2.TensorInfo:
    tensor = meta_graph_pb2.TensorInfo(dtype=dtype)
    tensor.tensor_shape.unknown_rank = unknown_rank
    for d in dims:
        tensor.tensor_shape.dim.add(size=d)
    return tensor


FLOAT_ROWS = info(types_pb2.DT_FLOAT, -1, 2)


def decode(datatype: Any, shape: Any, data: Any, form: str, tensor: Any = FLOAT_ROWS) -> Any:
    return decode_inputs([InputTensor("x", datatype, shape, data, form)], {"x": tensor})["x"]


def test_raw_fixed_width_is_read_in_place() -> None:
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    array = decode("FP32", [3, 2], values.tobytes(), RAW)
    np.testing.assert_array_equal(array, values)
    assert array.dtype == np.float32


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("INT8", np.int8),
        ("UINT16", np.uint16),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP64", np.float64),
        ("UINT64", np.uint64),
    ],
)
def test_raw_every_width(datatype: str, dtype: Any) -> None:
    values = np.array([[1, 2], [3, 4]], dtype=dtype)
    tf_type = {v: k for k, v in codec.TF_DATATYPES.items()}[datatype]
    array = decode(datatype, [2, 2], values.astype(dtype).tobytes(), RAW, info(tf_type, -1, 2))
    np.testing.assert_array_equal(array, values)
    assert codec.raw_bytes(array, datatype) == values.tobytes()


def test_raw_bool_and_bytes() -> None:
    flags = decode("BOOL", [1, 2], b"\x01\x00", RAW, info(types_pb2.DT_BOOL, -1, 2))
    assert flags.tolist() == [[True, False]]
    elements = [b"ab", b"", b"\xff"]
    data = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    strings = decode("BYTES", [3], data, RAW, info(types_pb2.DT_STRING, -1))
    assert strings.tolist() == elements
    assert codec.raw_bytes(strings, "BYTES") == data


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "text"),
    [
        ("FP32", [3, 2], b"\0" * 20, "24"),
        ("FP32", [1, 3], b"\0" * 12, "does not match the model's [-1,2]"),
        ("FP64", [1, 2], b"\0" * 16, "the model expects FP32"),
        ("FLOAT", [1, 2], b"\0" * 8, "invalid datatype"),
        ("FP32", [1, -2], b"", "non-negative"),
        ("FP32", "12", b"", "non-negative"),
        ("FP32", [2**62, 2**62], b"", "too large"),
    ],
)
def test_raw_errors(datatype: str, shape: Any, data: bytes, text: str) -> None:
    with pytest.raises(InvalidArgument, match=text.replace("[", r"\[").replace("]", r"\]")):
        decode(datatype, shape, data, RAW)


@pytest.mark.parametrize(
    "data",
    [struct.pack("<I", 5) + b"ab", struct.pack("<I", 1) + b"a" + b"\0", b"\0\0"],
)
def test_raw_bytes_errors(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode("BYTES", [1], data, RAW, info(types_pb2.DT_STRING, -1))


def test_json_flat_and_nested() -> None:
    flat = decode("FP32", [2, 2], [1, 2.5, 3, 4], JSON)
    nested = decode("FP32", [2, 2], [[1, 2.5], [3, 4]], JSON)
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.float32
    ints = decode("INT32", [3], [1, -2, 3], JSON, info(types_pb2.DT_INT32, 3))
    assert ints.dtype == np.int32 and ints.tolist() == [1, -2, 3]
    words = decode("BYTES", [2], [["é"], ["b"]], JSON, info(types_pb2.DT_STRING, -1))
    assert words.tolist() == ["é".encode(), b"b"]
    # Whole numbers past int64 beside others (NumPy alone would read them as float64).
    big = decode("UINT64", [2], [1, 2**63], JSON, info(types_pb2.DT_UINT64, -1))
    assert big.dtype == np.uint64 and big.tolist() == [1, 2**63]
    top = decode("UINT64", [2, 1], [[0], [2**64 - 1]], JSON, info(types_pb2.DT_UINT64, -1, -1))
    assert top.tolist() == [[0], [2**64 - 1]]


@pytest.mark.parametrize(
    ("datatype", "tf_type", "data", "text"),
    [
        ("FP32", types_pb2.DT_FLOAT, [[1.0, 2.0], [3.0]], "rectangular"),
        ("FP32", types_pb2.DT_FLOAT, [1.0, "2"], "numbers"),
        ("FP32", types_pb2.DT_FLOAT, [True, False], "numbers"),
        ("INT8", types_pb2.DT_INT8, [1, 300], "out of range"),
        ("INT32", types_pb2.DT_INT32, [1, 1.5], "whole numbers"),
        ("UINT64", types_pb2.DT_UINT64, [1, 2**64], "out of range"),
        ("UINT64", types_pb2.DT_UINT64, [2**63, 1.5], "whole numbers"),
        ("INT64", types_pb2.DT_INT64, [-1, 2**63], "out of range"),
        ("BOOL", types_pb2.DT_BOOL, [1, 0], "true or false"),
        ("BYTES", types_pb2.DT_STRING, ["a", 1], "strings"),
        ("FP32", types_pb2.DT_FLOAT, [1.0, 2.0, 3.0], "holds 2 elements"),
    ],
)
def test_json_errors(datatype: str, tf_type: int, data: Any, text: str) -> None:
    with pytest.raises(InvalidArgument, match=text):
        decode(datatype, [2], data, JSON, info(tf_type, -1))


def test_json_deep_nesting_is_refused() -> None:
    deep: Any = [1.0]
    for _ in range(200):
        deep = [deep]
    with pytest.raises(InvalidArgument):
        decode("FP32", [1], deep, JSON, info(types_pb2.DT_FLOAT, unknown_rank=True))
    with pytest.raises(InvalidArgument):
        decode("BYTES", [1], deep, JSON, info(types_pb2.DT_STRING, unknown_rank=True))


def test_typed_contents() -> None:
    contents = MESSAGES["InferTensorContents"](int_contents=[1, -2, 3, 4])
    array = decode("INT16", [2, 2], contents, CONTENTS, info(types_pb2.DT_INT16, 2, 2))
    assert array.dtype == np.int16 and array.tolist() == [[1, -2], [3, 4]]
    out = MESSAGES["InferTensorContents"]()
    codec.fill_contents(out, array, "INT16")
    assert list(out.int_contents) == [1, -2, 3, 4]
    with pytest.raises(InvalidArgument, match="out of range"):
        decode(
            "INT8",
            [1],
            MESSAGES["InferTensorContents"](int_contents=[999]),
            CONTENTS,
            info(types_pb2.DT_INT8, -1),
        )
    with pytest.raises(InvalidArgument, match="raw_input_contents"):
        decode(
            "FP16", [1], MESSAGES["InferTensorContents"](), CONTENTS, info(types_pb2.DT_HALF, -1)
        )


def test_inputs_named_and_unique() -> None:
    tensor = InputTensor("x", "FP32", [1, 2], [1.0, 2.0], JSON)
    with pytest.raises(InvalidArgument, match="given twice"):
        decode_inputs([tensor, tensor], {"x": FLOAT_ROWS})
    with pytest.raises(InvalidArgument, match="unexpected inference input"):
        decode_inputs([InputTensor("z", "FP32", [1, 2], [1.0, 2.0], JSON)], {"x": FLOAT_ROWS})


def test_outputs() -> None:
    assert codec.datatype_of(np.zeros(1, np.uint32)) == "UINT32"
    assert codec.datatype_of(np.array([b"a"], dtype=object)) == "BYTES"
    assert codec.json_data("y", np.array([[1.5]], np.float16), "FP16").tolist() == [1.5]
    assert codec.json_data("s", np.array([b"a", "b"], dtype=object), "BYTES") == ["a", "b"]
    with pytest.raises(InvalidArgument, match="binary_data"):
        codec.json_data("s", np.array([b"\xff"], dtype=object), "BYTES")
    assert codec.metadata_shape(info(types_pb2.DT_FLOAT, -1, 3)) == [-1, 3]
    assert codec.metadata_shape(info(types_pb2.DT_FLOAT, unknown_rank=True)) == [-1]
    assert codec.tf_datatype(types_pb2.DT_COMPLEX64) == "COMPLEX64"
    assert codec.tf_datatype(types_pb2.DT_FLOAT_REF) == "FP32"


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_non_finite_outputs_are_bare_tokens_in_json(datatype: str) -> None:
    """NaN and the infinities as ``NaN``/``Infinity``/``-Infinity`` in place (Triton's JSON),
    the finite values as orjson writes them; arrays without them stay arrays."""
    import orjson

    dtype = codec.NUMPY_DTYPES[datatype]
    array = np.array([[1.5, np.nan], [np.inf, -np.inf], [-0.0, 3.0]], dtype)
    data = codec.json_data("y", array, datatype)
    assert orjson.dumps({"data": data}) == (b'{"data":[1.5,NaN,Infinity,-Infinity,-0.0,3.0]}')
    finite = codec.json_data("y", np.array([1.0, 2.0], dtype), datatype)
    assert isinstance(finite, np.ndarray)
