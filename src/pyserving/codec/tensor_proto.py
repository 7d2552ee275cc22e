"""``TensorProto`` <-> NumPy, as TensorFlow's ``Tensor::FromProto`` / ``Tensor::AsProtoField``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2

from pyserving.codec.dtypes import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_COMPLEX64,
    DT_COMPLEX128,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    REF_OFFSET,
    datatype_for_numpy,
    dtype_name,
    numpy_dtype,
)
from pyserving.codec.json_predict import (
    MAX_RANK,
    shape_text,
)
from pyserving.codec.tf_json import (
    utf8_bytes,
)
from pyserving.errors import InvalidArgument, ServingError

# Packed fixed-width fields: (field number, little-endian numpy dtype of the payload).
_PACKED_FIELDS: dict[int, tuple[int, str]] = {
    DT_FLOAT: (5, "<f4"),
    DT_DOUBLE: (6, "<f8"),
    DT_COMPLEX64: (9, "<c8"),
    DT_COMPLEX128: (12, "<c16"),
    DT_BOOL: (11, "u1"),  # a 0/1 varint is one byte
}
_INT_VAL_TYPES = frozenset({DT_INT32, DT_INT16, DT_INT8, DT_UINT8, DT_UINT16})


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def ndarray_to_tensor_proto(
    array: Any, *, use_tensor_content: bool = False, into: tensor_pb2.TensorProto | None = None
) -> tensor_pb2.TensorProto:
    """A TensorProto holding ``array``: ``into`` (an empty TensorProto, e.g. a response's map
    entry, filled in place instead of copied there), or a new one.

    By default the values go into the typed ``*_val`` fields, as ``Tensor::AsProtoField``
    does (TF Serving's Predict responses); ``use_tensor_content=True`` writes the raw bytes
    into ``tensor_content`` instead (``AsProtoTensorContent``; strings always use
    ``string_val``). Object / bytes / str arrays become ``DT_STRING`` (``str`` as UTF-8).
    Fixed-width fields are filled from the raw bytes (no per-element Python work).

    Raises:
        InvalidArgument: a dtype with no TensorFlow equivalent.
    """
    array = np.asarray(array)
    dtype = datatype_for_numpy(array.dtype)
    if into is None:
        proto = tensor_pb2.TensorProto(dtype=dtype)
    else:
        proto = into
        proto.dtype = dtype
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    if array.size == 0:
        return proto
    if dtype == DT_STRING:
        flat = array.ravel().tolist()
        proto.string_val.extend(utf8_bytes(v) if isinstance(v, str) else bytes(v) for v in flat)
        return proto
    if use_tensor_content:
        little = array.dtype.newbyteorder("<")
        proto.tensor_content = np.ascontiguousarray(array, dtype=little).tobytes()
        return proto
    packed = _PACKED_FIELDS.get(dtype)
    if packed is not None:
        field, layout = packed
        raw = np.ascontiguousarray(array, dtype=layout).tobytes()
        proto.MergeFromString(_varint((field << 3) | 2) + _varint(len(raw)) + raw)
    elif dtype in _INT_VAL_TYPES:
        proto.int_val.extend(array.ravel().tolist())
    elif dtype == DT_INT64:
        proto.int64_val.extend(array.ravel().tolist())
    elif dtype == DT_UINT32:
        proto.uint32_val.extend(array.ravel().tolist())
    elif dtype == DT_UINT64:
        proto.uint64_val.extend(array.ravel().tolist())
    elif dtype in (DT_HALF, DT_BFLOAT16):
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    else:  # pragma: no cover - every dtype datatype_for_numpy returns is handled above
        raise InvalidArgument(f"Unsupported tensor data type: {dtype_name(dtype)}")
    return proto


def _parse_error(name: str | None, reason: str) -> InvalidArgument:
    if name is not None:
        return InvalidArgument(f"tensor parsing error: {name}")
    return InvalidArgument(f"Cannot convert TensorProto to a tensor: {reason}")


#: Up to this many values, a repeated field is copied into a list before NumPy reads it:
#: ``np.array(field)`` costs ~2 us whatever the length (it probes the field's buffer
#: interfaces first), a list of a few values a fraction of that; from about 48 values on
#: the direct read is the cheaper.
_LIST_COPY_MAX = 32


def _values(field: Any) -> Any:
    """``field`` (a repeated scalar field) in the form NumPy converts fastest."""
    return field[:] if len(field) <= _LIST_COPY_MAX else field


def _typed_values(proto: tensor_pb2.TensorProto, dtype: int, np_dtype: np.dtype[Any]) -> np.ndarray:
    if dtype == DT_FLOAT:
        return np.array(_values(proto.float_val), dtype=np.float32)
    if dtype == DT_DOUBLE:
        return np.array(_values(proto.double_val), dtype=np.float64)
    if dtype in _INT_VAL_TYPES:
        return np.array(_values(proto.int_val), dtype=np.int64).astype(np_dtype)
    if dtype == DT_INT64:
        return np.array(_values(proto.int64_val), dtype=np.int64)
    if dtype == DT_BOOL:
        return np.array(_values(proto.bool_val), dtype=np.bool_)
    if dtype == DT_UINT32:
        return np.array(_values(proto.uint32_val), dtype=np.uint32)
    if dtype == DT_UINT64:
        return np.array(_values(proto.uint64_val), dtype=np.uint64)
    if dtype in (DT_HALF, DT_BFLOAT16):
        return np.array(_values(proto.half_val), dtype=np.int64).astype(np.uint16).view(np_dtype)
    if dtype == DT_COMPLEX64:
        pairs = np.array(proto.scomplex_val, dtype=np.float32)
        return pairs[: len(pairs) // 2 * 2].view(np.complex64)
    if dtype == DT_COMPLEX128:
        pairs = np.array(proto.dcomplex_val, dtype=np.float64)
        return pairs[: len(pairs) // 2 * 2].view(np.complex128)
    if dtype == DT_STRING:
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
        return values
    raise InvalidArgument(f"Unsupported tensor data type: {dtype_name(dtype)}")  # pragma: no cover


def _string_list(content: bytes, count: int) -> np.ndarray | None:
    """The ``count`` strings of a ``DT_STRING`` tensor's ``tensor_content`` as an object
    array, or None when it is not TensorFlow's encoding of them (``count`` varint32
    lengths, then the strings back to back, nothing after)."""
    end = len(content)
    if count > end:  # every length takes at least one byte
        return None
    head = np.frombuffer(content, np.uint8, count)
    lengths: Any
    if count and int(head.max()) < 0x80:  # every length one byte: no varint to walk
        lengths = head.astype(np.int64)
        pos = count
    else:
        lengths = []
        pos = 0
        for _ in range(count):
            value = 0
            shift = 0
            while True:
                if pos >= end or shift > 28:
                    return None
                byte = content[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            if value > 0xFFFFFFFF:
                return None
            lengths.append(value)
    stops = (np.cumsum(lengths, dtype=np.int64) + pos).tolist()
    if (stops[-1] if stops else pos) != end:
        return None
    starts = [pos, *stops[:-1]]
    strings = np.empty(count, dtype=object)
    strings[:] = [content[a:b] for a, b in zip(starts, stops, strict=True)]
    return strings


#: The largest size NumPy can describe (``npy_intp``): a shape past it is refused.
_MAX_ARRAY_BYTES = 2**63 - 1


#: Bytes per element a string tensor is counted at against a byte budget (an object array's
#: pointer plus the list it is filled from).
STRING_ELEMENT_BYTES = 16


class ByteBudget:
    """What decoding may still allocate: :func:`tensor_proto_to_ndarray` takes each tensor's
    decoded size (elements x item size, :data:`STRING_ELEMENT_BYTES` per string) from
    ``remaining`` before allocating it, and refuses the tensor that would take it below 0."""

    __slots__ = ("remaining",)

    def __init__(self, limit: int) -> None:
        self.remaining = limit


def tensor_proto_to_ndarray(
    proto: tensor_pb2.TensorProto, *, name: str | None = None, budget: ByteBudget | None = None
) -> np.ndarray:
    """The array a TensorProto describes (``Tensor::FromProto`` semantics).

    ``tensor_content`` must hold exactly the tensor's bytes (for strings, TensorFlow's
    encoding of them: every length as a varint, then the strings). Typed ``*_val`` fields may hold
    fewer values than the shape needs: none means all zeros (empty strings), otherwise the
    last value is repeated to fill the tensor (a single value broadcasts). More values than
    the shape holds is an error.

    Args:
        name: the input alias, if any; errors then read ``tensor parsing error: <name>``
            exactly as TF Serving's Predict says.
        budget: when given, the tensor's decoded size is taken from it once its shape and
            dtype are known to be valid and before anything is allocated; a tensor larger
            than what remains is refused (``tensor parsing error: <name>``), as TF Serving
            refuses a tensor it cannot allocate. A few bytes on the wire can describe a huge
            tensor (typed values fewer than the shape are filled out), so this is the
            check that bounds what a request makes the server allocate.

    Raises:
        InvalidArgument: invalid shape or dtype, values that do not fit the shape, or a
            tensor over the budget.
    """
    dtype = proto.dtype
    try:
        np_dtype = numpy_dtype(dtype)
    except ServingError:
        raise _parse_error(name, f"unsupported dtype {dtype_name(dtype)}") from None
    if dtype > REF_OFFSET:
        raise _parse_error(name, f"reference dtype {dtype_name(dtype)}")
    shape_proto = proto.tensor_shape
    if shape_proto.unknown_rank:
        raise _parse_error(name, "unknown rank")
    shape = [d.size for d in shape_proto.dim]
    if len(shape) > MAX_RANK:
        raise _parse_error(name, f"{len(shape)} dimensions (NumPy arrays have at most {MAX_RANK})")
    if shape and min(shape) < 0:
        raise _parse_error(name, f"invalid shape {shape_text(shape)}")
    count = math.prod(shape)
    if (count or math.prod(d for d in shape if d)) * max(np_dtype.itemsize, 1) > _MAX_ARRAY_BYTES:
        # No array can have this shape, even with no elements (a zero dimension beside
        # dimensions whose product overflows): NumPy refuses it.
        raise _parse_error(name, f"shape {shape_text(shape)} is too large")
    if budget is not None:
        size = count * (STRING_ELEMENT_BYTES if dtype == DT_STRING else np_dtype.itemsize)
        if size > budget.remaining:
            budget.remaining = -1  # nothing more fits
            raise _parse_error(name, f"shape {shape_text(shape)} is over the size limit")
        budget.remaining -= size
    if count == 0:  # (tensor_content and typed values are not read, as in TensorFlow)
        return np.empty(shape, dtype=object if dtype == DT_STRING else np_dtype)
    if proto.tensor_content and dtype == DT_STRING:
        strings = _string_list(proto.tensor_content, count)
        if strings is None:
            raise _parse_error(name, "tensor_content is not an encoded list of strings")
        return strings.reshape(shape)
    if proto.tensor_content:
        content = proto.tensor_content
        little = np_dtype.newbyteorder("<") if np_dtype.byteorder not in "|" else np_dtype
        if len(content) != count * np_dtype.itemsize:
            raise _parse_error(
                name,
                f"tensor_content holds {len(content)} bytes, the shape "
                f"{shape_text(shape)} of {dtype_name(dtype)} needs {count * np_dtype.itemsize}",
            )
        return np.frombuffer(content, dtype=little).astype(np_dtype).reshape(shape)
    values = _typed_values(proto, dtype, np_dtype)
    given = len(values)
    if given == count:
        return values.reshape(shape)
    if given > count:
        raise _parse_error(name, f"{given} values do not fit the shape {shape_text(shape)}")
    if given == 0:
        if dtype == DT_STRING:
            filled = np.empty(count, dtype=object)
            filled[:] = [b""] * count
            return filled.reshape(shape)
        return np.zeros(shape, dtype=np_dtype)
    filled = np.empty(count, dtype=np_dtype)
    filled[:given] = values
    filled[given:] = values[-1]
    return filled.reshape(shape)
