"""TensorFlow dtypes and their NumPy and V2 counterparts; dtype names as TF Serving prints them."""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2

from pyserving.errors import InvalidArgument, ServingError

try:  # ml_dtypes ships with TensorFlow; bfloat16 is unavailable without it.
    import ml_dtypes

    _BFLOAT16: np.dtype[Any] | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BFLOAT16 = None


DT_FLOAT = types_pb2.DT_FLOAT
DT_DOUBLE = types_pb2.DT_DOUBLE
DT_INT32 = types_pb2.DT_INT32
DT_UINT8 = types_pb2.DT_UINT8
DT_INT16 = types_pb2.DT_INT16
DT_INT8 = types_pb2.DT_INT8
DT_STRING = types_pb2.DT_STRING
DT_COMPLEX64 = types_pb2.DT_COMPLEX64
DT_INT64 = types_pb2.DT_INT64
DT_BOOL = types_pb2.DT_BOOL
DT_BFLOAT16 = types_pb2.DT_BFLOAT16
DT_UINT16 = types_pb2.DT_UINT16
DT_COMPLEX128 = types_pb2.DT_COMPLEX128
DT_HALF = types_pb2.DT_HALF
DT_UINT32 = types_pb2.DT_UINT32
DT_UINT64 = types_pb2.DT_UINT64

REF_OFFSET = 100  # DT_FLOAT_REF == DT_FLOAT + 100, etc.

_NUMPY_BY_DTYPE: dict[int, np.dtype[Any]] = {
    DT_FLOAT: np.dtype(np.float32),
    DT_DOUBLE: np.dtype(np.float64),
    DT_INT32: np.dtype(np.int32),
    DT_UINT8: np.dtype(np.uint8),
    DT_INT16: np.dtype(np.int16),
    DT_INT8: np.dtype(np.int8),
    DT_STRING: np.dtype(object),
    DT_COMPLEX64: np.dtype(np.complex64),
    DT_INT64: np.dtype(np.int64),
    DT_BOOL: np.dtype(np.bool_),
    DT_UINT16: np.dtype(np.uint16),
    DT_COMPLEX128: np.dtype(np.complex128),
    DT_HALF: np.dtype(np.float16),
    DT_UINT32: np.dtype(np.uint32),
    DT_UINT64: np.dtype(np.uint64),
}
if _BFLOAT16 is not None:
    _NUMPY_BY_DTYPE[DT_BFLOAT16] = _BFLOAT16

_DTYPE_BY_NUMPY: dict[np.dtype[Any], int] = {
    v: k for k, v in _NUMPY_BY_DTYPE.items() if k != DT_STRING
}


def dtype_name(dtype: int) -> str:
    """TensorFlow's ``DataTypeString``: ``float``, ``int32``, ``string``, ``float_ref``..."""
    if dtype == types_pb2.DT_INVALID:
        return "INVALID"
    try:
        return types_pb2.DataType.Name(dtype)[3:].lower()
    except ValueError:
        return f"unknown dtype enum ({dtype})"


def numpy_dtype(dtype: int) -> np.dtype[Any]:
    """The numpy dtype for a TF ``DataType`` (ref types map to their base type).

    ``DT_STRING`` is ``object`` (arrays of ``bytes``). Raises ``InvalidArgument`` for types
    with no numpy equivalent (quantized, resource, variant...).
    """
    base = dtype - REF_OFFSET if dtype > REF_OFFSET else dtype
    try:
        return _NUMPY_BY_DTYPE[base]
    except KeyError:
        raise InvalidArgument(f"Unsupported tensor data type: {dtype_name(dtype)}") from None


def datatype_for_numpy(dtype: np.dtype[Any]) -> int:
    """The TF ``DataType`` of a numpy dtype (object, bytes and str arrays are ``DT_STRING``)."""
    if dtype.kind in "OSU":
        return DT_STRING
    found = _DTYPE_BY_NUMPY.get(dtype)
    if found is None and dtype.byteorder not in "=|":
        found = _DTYPE_BY_NUMPY.get(dtype.newbyteorder("="))
    if found is None:
        raise InvalidArgument(f"Unsupported numpy dtype for a tensor: {dtype}")
    return found


def status_string(error: ServingError) -> str:
    """``absl::Status::ToString()``: ``INVALID_ARGUMENT: message``."""
    return f"{error.code.name}: {error.message}"
