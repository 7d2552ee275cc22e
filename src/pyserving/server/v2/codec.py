"""V2 tensors <-> NumPy, checked against a signature.

A V2 tensor is a name, a datatype (``BOOL``, ``INT8``..``INT64``, ``UINT8``..``UINT64``,
``FP16``, ``FP32``, ``FP64``, ``BYTES``; ``BF16`` where ``ml_dtypes`` is present), a shape
and its elements, which arrive in one of three forms:

* **raw bytes**: gRPC's ``raw_input_contents`` or REST's binary tensor data: little-endian,
  row-major, no padding; a ``BOOL`` is one byte (0 or 1); a ``BYTES`` element is a 4-byte
  little-endian length followed by that many bytes. Fixed-width tensors are read with
  ``np.frombuffer`` (no copy, no per-element Python).
* **JSON data**: REST's ``data``, flat or nested lists (nested lists must be rectangular);
  numbers for numeric types (whole numbers in range for integer types), ``true``/``false``
  for ``BOOL``, strings (UTF-8) for ``BYTES``.
* **typed contents**: gRPC's ``InferTensorContents`` field of the datatype
  (``fp32_contents``, ``int_contents``...).

Every decoding function checks, before allocating anything the request did not already
carry: the datatype is known and is the signature's; the shape's dimensions are
non-negative, its element count is what the data holds, and it fits the signature's shape
(same rank unless the signature's rank is unknown, same size wherever the signature's size is
known). Violations raise :class:`~pyserving.errors.InvalidArgument` naming the input.

Outputs are encoded the other way: :func:`raw_bytes` (gRPC raw or REST binary),
:func:`json_data` (flat list, REST) or :func:`fill_contents` (gRPC typed contents).

Thread-safe (pure functions).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from tensorflow.core.framework import types_pb2

from pyserving.errors import InvalidArgument

try:  # ml_dtypes ships with TensorFlow.
    import ml_dtypes

    _BF16: np.dtype[Any] | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BF16 = None

#: V2 datatype -> NumPy dtype (``BYTES``: object arrays of ``bytes``).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
if _BF16 is not None:
    NUMPY_DTYPES["BF16"] = _BF16

#: TensorFlow DataType -> V2 datatype.
TF_DATATYPES: dict[int, str] = {
    types_pb2.DT_BOOL: "BOOL",
    types_pb2.DT_UINT8: "UINT8",
    types_pb2.DT_UINT16: "UINT16",
    types_pb2.DT_UINT32: "UINT32",
    types_pb2.DT_UINT64: "UINT64",
    types_pb2.DT_INT8: "INT8",
    types_pb2.DT_INT16: "INT16",
    types_pb2.DT_INT32: "INT32",
    types_pb2.DT_INT64: "INT64",
    types_pb2.DT_HALF: "FP16",
    types_pb2.DT_FLOAT: "FP32",
    types_pb2.DT_DOUBLE: "FP64",
    types_pb2.DT_STRING: "BYTES",
    types_pb2.DT_BFLOAT16: "BF16",
}

#: V2 datatype -> the ``InferTensorContents`` field holding it (FP16 and BF16 have none).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LITTLE = {name: dtype.newbyteorder("<") for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}
_BY_NUMPY = {dtype: name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}
#: The largest array NumPy can describe: a shape past it is refused even with no elements.
_MAX_ARRAY_BYTES = 2**63 - 1
_UINT32 = struct.Struct("<I")


def tf_datatype(dtype: int) -> str:
    """The V2 datatype of a TensorFlow DataType; types V2 cannot carry (complex, resource,
    variant...) get their TensorFlow name without ``DT_`` (``COMPLEX64``)."""
    base = dtype - 100 if dtype > 100 else dtype
    found = TF_DATATYPES.get(base)
    if found is not None:
        return found
    try:
        return str(types_pb2.DataType.Name(base))[3:]
    except ValueError:
        return "INVALID"


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of an output array (object, bytes and str arrays are ``BYTES``)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    found = _BY_NUMPY.get(array.dtype)
    if found is None and array.dtype.byteorder not in "=|":
        found = _BY_NUMPY.get(array.dtype.newbyteorder("="))
    if found is None:
        raise InvalidArgument(f"Output of type {array.dtype} has no V2 datatype")
    return found


def metadata_shape(tensor_info: Any) -> list[int]:
    """A signature tensor's shape for V2 metadata: -1 for unknown dimensions, ``[-1]`` for
    an unknown rank (any shape)."""
    shape = tensor_info.tensor_shape
    if shape.unknown_rank:
        return [-1]
    return [d.size if d.size >= 0 else -1 for d in shape.dim]


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_header(
    name: str, datatype: Any, shape: Any, tensor_info: Any | None
) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """Validate an input's datatype and shape against its signature tensor.

    Returns ``(numpy dtype, shape, element count)``. ``tensor_info`` None skips the
    signature checks; a ``tensor_info`` of dtype ``DT_INVALID`` (a model that declares no
    dtype) takes any datatype. Raises ``InvalidArgument``.
    """
    if type(datatype) is not str or datatype not in NUMPY_DTYPES:
        raise InvalidArgument(f"input '{name}': invalid datatype {datatype!r}")
    if tensor_info is not None and tensor_info.dtype != 0:  # DT_INVALID: any datatype
        expected = tf_datatype(tensor_info.dtype)
        if expected != datatype:
            raise InvalidArgument(
                f"input '{name}': datatype is {datatype}, the model expects {expected}"
            )
    if type(shape) not in (list, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidArgument(
            f"input '{name}': shape must be a list of non-negative integers, got {shape!r}"
        )
    shape = tuple(shape)
    if len(shape) > 64:
        raise InvalidArgument(f"input '{name}': shape has {len(shape)} dimensions (at most 64)")
    dtype = NUMPY_DTYPES[datatype]
    if math.prod(d for d in shape if d) * max(dtype.itemsize, 1) > _MAX_ARRAY_BYTES:
        raise InvalidArgument(f"input '{name}': shape {_shape_text(shape)} is too large")
    if tensor_info is not None and not tensor_info.tensor_shape.unknown_rank:
        model = [d.size for d in tensor_info.tensor_shape.dim]
        if len(model) != len(shape) or any(
            m >= 0 and m != d for m, d in zip(model, shape, strict=True)
        ):
            raise InvalidArgument(
                f"input '{name}': shape {_shape_text(shape)} does not match the model's "
                f"{_shape_text(metadata_shape(tensor_info))}"
            )
    return dtype, shape, math.prod(shape)


def _count_error(name: str, shape: Sequence[int], count: int, given: int, what: str) -> Exception:
    return InvalidArgument(
        f"input '{name}': shape {_shape_text(shape)} holds {count} elements, the {what} "
        f"holds {given}"
    )


def from_raw(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: bytes | memoryview
) -> np.ndarray:
    """An input from raw bytes (header already checked with :func:`check_header`)."""
    if datatype == "BYTES":
        return _bytes_elements(name, shape, count, data)
    itemsize = NUMPY_DTYPES[datatype].itemsize
    if len(data) != count * itemsize:
        raise InvalidArgument(
            f"input '{name}': {len(data)} bytes of data, shape {_shape_text(shape)} of "
            f"{datatype} needs {count * itemsize}"
        )
    if datatype == "BOOL":
        return np.frombuffer(data, dtype=np.uint8).astype(np.bool_).reshape(shape)
    array = np.frombuffer(data, dtype=_LITTLE[datatype])
    if not array.dtype.isnative:
        array = array.astype(NUMPY_DTYPES[datatype])
    return array.reshape(shape)


def _bytes_elements(
    name: str, shape: tuple[int, ...], count: int, data: bytes | memoryview
) -> np.ndarray:
    view = memoryview(data)
    elements: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if len(elements) == count or offset + 4 > end:
            raise InvalidArgument(
                f"input '{name}': BYTES data does not hold {count} length-prefixed elements"
            )
        (length,) = _UINT32.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(
                f"input '{name}': a BYTES element of {length} bytes runs past the data"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise _count_error(name, shape, count, len(elements), "BYTES data")
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array.reshape(shape)


_INT_RANGES = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}


def from_json(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any
) -> np.ndarray:
    """An input from JSON ``data`` (flat or nested lists; a scalar for a 0-d shape)."""
    if type(data) is not list:
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(name, data)
        if len(flat) != count:
            raise _count_error(name, shape, count, len(flat), "data")
        array = np.empty(count, dtype=object)
        try:
            array[:] = [v.encode("utf-8") if type(v) is str else _not_string(name, v) for v in flat]
        except UnicodeEncodeError:
            raise InvalidArgument(f"input '{name}': a string is not valid UTF-8") from None
        return array.reshape(shape)
    try:
        wide = np.array(data)
    except (ValueError, OverflowError, TypeError):
        raise InvalidArgument(
            f"input '{name}': data must be a rectangular list of {datatype} values"
        ) from None
    if wide.size != count:
        raise _count_error(name, shape, count, wide.size, "data")
    kind = wide.dtype.kind
    if count == 0:
        return np.zeros(shape, dtype=NUMPY_DTYPES[datatype])
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidArgument(f"input '{name}': BOOL data must be true or false")
        return wide.reshape(shape)
    if datatype in _INT_RANGES:
        if kind not in "iu":
            # NumPy reads whole numbers past int64 beside others as float64 (or objects):
            # read them one by one, exactly.
            flat = _flatten(name, data) if kind in "fO" else []
            if not flat or not all(type(v) is int for v in flat):
                raise InvalidArgument(f"input '{name}': {datatype} data must be whole numbers")
            lo, hi = _INT_RANGES[datatype]
            if min(flat) < lo or max(flat) > hi:
                raise InvalidArgument(f"input '{name}': a value is out of range for {datatype}")
            return np.array(flat, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
        lo, hi = _INT_RANGES[datatype]
        if int(wide.min()) < lo or int(wide.max()) > hi:
            raise InvalidArgument(f"input '{name}': a value is out of range for {datatype}")
        return wide.astype(NUMPY_DTYPES[datatype]).reshape(shape)
    if kind not in "iuf":
        raise InvalidArgument(f"input '{name}': {datatype} data must be numbers")
    with np.errstate(over="ignore"):
        return wide.astype(NUMPY_DTYPES[datatype]).reshape(shape)


def _not_string(name: str, value: Any) -> bytes:
    raise InvalidArgument(f"input '{name}': BYTES data must be strings")


def _flatten(name: str, data: list[Any]) -> list[Any]:
    """The leaves of nested lists, in order (depth bounded by NumPy's 64 dimensions)."""
    flat: list[Any] = []
    stack: list[tuple[list[Any], int]] = [(data, 0)]
    while stack:
        items, start = stack.pop()
        for index in range(start, len(items)):
            item = items[index]
            if type(item) is list:
                if len(stack) >= 64:
                    raise InvalidArgument(f"input '{name}': data nested more than 64 lists deep")
                stack.append((items, index + 1))
                stack.append((item, 0))
                break
            flat.append(item)
    return flat


def from_contents(
    name: str, datatype: str, shape: tuple[int, ...], count: int, contents: Any
) -> np.ndarray:
    """An input from gRPC typed ``contents`` (the field of its datatype)."""
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidArgument(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    values = getattr(contents, field)
    if len(values) != count:
        raise _count_error(name, shape, count, len(values), field)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.array(values, dtype=np.float64 if datatype.startswith("FP") else None)
    if datatype in ("INT8", "INT16", "UINT8", "UINT16") and count:
        lo, hi = _INT_RANGES[datatype]
        if int(wide.min()) < lo or int(wide.max()) > hi:
            raise InvalidArgument(f"input '{name}': a value is out of range for {datatype}")
    return wide.astype(NUMPY_DTYPES[datatype]).reshape(shape)


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """An output's elements as raw bytes (little-endian; BYTES length-prefixed)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.ravel().tolist():
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(_UINT32.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=_LITTLE[datatype]).tobytes()


def json_data(name: str, array: np.ndarray, datatype: str) -> Any:
    """An output's elements as a flat list for JSON (``BYTES`` as UTF-8 text; an output
    holding other bytes must be asked for as binary data: ``InvalidArgument``)."""
    if datatype == "BYTES":
        try:
            return [
                v.decode("utf-8") if isinstance(v, bytes) else str(v)
                for v in array.ravel().tolist()
            ]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output '{name}' holds bytes that are not UTF-8 text: request it as binary "
                'data (output parameter "binary_data": true)'
            ) from None
    if datatype in ("FP16", "BF16"):
        flat = array.astype(np.float32).ravel()
    else:
        flat = np.ascontiguousarray(array).ravel()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return _with_non_finite_tokens(flat)
    return flat


_NON_FINITE_TOKENS = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}


def _with_non_finite_tokens(flat: np.ndarray) -> orjson.Fragment:
    """``flat`` (floats, some not finite) as a JSON list with ``NaN``, ``Infinity`` and
    ``-Infinity`` as bare tokens, as Triton writes them (RapidJSON's ``kWriteNanAndInfFlag``)
    and as TF Serving's REST API writes them; strict JSON has no such numbers, and orjson
    would write ``null``, which reads back as no number at all."""
    text = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
    pieces = text.split(b"null")  # a numeric list holds no other null
    tokens = [_NON_FINITE_TOKENS[str(v)] for v in flat[~np.isfinite(flat)].tolist()]
    joined = [pieces[0]]
    for token, piece in zip(tokens, pieces[1:], strict=True):
        joined.append(token)
        joined.append(piece)
    return orjson.Fragment(b"".join(joined))


def fill_contents(contents: Any, array: np.ndarray, datatype: str) -> None:
    """Put an output's elements into the ``InferTensorContents`` field of its datatype."""
    field = CONTENTS_FIELDS[datatype]
    values = array.ravel().tolist()
    if datatype == "BYTES":
        values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
    getattr(contents, field).extend(values)


__all__ = [
    "CONTENTS_FIELDS",
    "NUMPY_DTYPES",
    "TF_DATATYPES",
    "check_header",
    "datatype_of",
    "fill_contents",
    "from_contents",
    "from_json",
    "from_raw",
    "json_data",
    "metadata_shape",
    "raw_bytes",
    "tf_datatype",
]
