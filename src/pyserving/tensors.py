"""Tensor conversions at the wire boundary, independent of HTTP and gRPC transports.

- JSON request bodies -> ``numpy`` arrays for a signature (TF Serving's row ``instances`` and
  columnar ``inputs`` forms), and arrays -> JSON response bytes (``predictions`` / ``outputs``).
- JSON classify/regress bodies -> a ``tensorflow.serving.Input`` of ``tf.Example`` protos, and
  ``ClassificationResult`` / ``RegressionResult`` -> JSON.
- ``TensorProto`` <-> ``numpy``.

Every rule and error message follows TF Serving's ``tensorflow_serving/util/json_tensor.cc``
(2.18 and later) and TensorFlow's ``Tensor::FromProto`` / ``Tensor::AsProtoField``. Errors are
raised as :class:`~pyserving.errors.ServingError` subclasses (almost always
``InvalidArgument``). How documents are parsed, how numbers are printed and how values are
quoted in error messages is TF Serving's JSON dialect, in :mod:`pyserving.tfjson`.

Numbers in requests: a float input takes any JSON number, rounded to float32 (``1435774380``
becomes ``1435774336``; beyond float32's range, ``+/-Infinity``), a double input any number;
integer inputs take integers within their range.

Hot paths use orjson and vectorized numpy; per-element Python work is limited to strings,
error reporting and rare numeric edge cases.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from pyserving.errors import InvalidArgument, ServingError, Unimplemented
from pyserving.tfjson import (
    debug_text,
    float_items,
    float_json,
    float_texts,
    float_value,
    json_type,
    loads,
    tf_float_text,
    utf8_bytes,
)

try:  # ml_dtypes ships with TensorFlow; bfloat16 is unavailable without it.
    import ml_dtypes

    _BFLOAT16: np.dtype[Any] | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BFLOAT16 = None

__all__ = [
    "DEFAULT_SIGNATURE_KEY",
    "JsonFormat",
    "datatype_for_numpy",
    "dtype_name",
    "format_classify_response",
    "format_predict_response",
    "format_regress_response",
    "get_signature_name",
    "json_to_ndarray",
    "loads",
    "ndarray_to_tensor_proto",
    "numpy_dtype",
    "parse_examples_request",
    "parse_json_object",
    "parse_predict_request",
    "tensor_proto_to_ndarray",
    "tf_float_text",
]

JsonFormat = Literal["row", "columnar"]

DEFAULT_SIGNATURE_KEY = "serving_default"

# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------

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

_REF_OFFSET = 100  # DT_FLOAT_REF == DT_FLOAT + 100, etc.

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
    base = dtype - _REF_OFFSET if dtype > _REF_OFFSET else dtype
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


def _status_string(error: ServingError) -> str:
    """``absl::Status::ToString()``: ``INVALID_ARGUMENT: message``."""
    return f"{error.code.name}: {error.message}"


# --------------------------------------------------------------------------------------------
# JSON -> ndarray
# --------------------------------------------------------------------------------------------

_INT_RANGES: dict[int, tuple[int, int]] = {
    DT_INT32: (-(2**31), 2**31 - 1),
    DT_INT16: (-(2**31), 2**31 - 1),  # TF checks IsInt() only; the cast then wraps
    DT_INT8: (-(2**31), 2**31 - 1),
    DT_UINT8: (-(2**31), 2**31 - 1),
    DT_INT64: (-(2**63), 2**63 - 1),
    DT_UINT32: (0, 2**32 - 1),
    DT_UINT64: (0, 2**64 - 1),
}
_JSON_DTYPES = frozenset({DT_FLOAT, DT_DOUBLE, DT_STRING, DT_BOOL, *_INT_RANGES})
#: NumPy's limit on dimensions: a JSON value nested deeper cannot be a tensor here.
MAX_RANK = 64


def _type_error(value: Any, dtype: int) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {debug_text(value)} Type: {json_type(value)} is not of expected type: "
        f"{dtype_name(dtype)}"
    )


def _as_double(value: int | float) -> float:
    """A JSON number as the double RapidJSON holds (``GetDouble``); an integer too large for
    a double (only from a caller's Python objects: parsing refuses such numbers) is infinite."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("Unable to base64 decode") from None


def _convert_leaf(value: Any, dtype: int) -> Any:
    """One JSON leaf -> Python value for ``dtype`` (``AddValueToTensor``), or TF's error."""
    kind = type(value)
    if dtype == DT_STRING:
        if kind is str:
            return utf8_bytes(value)
        if kind is dict:
            if not _is_b64(value):
                raise InvalidArgument(
                    f"JSON Value: {debug_text(value)} not formatted correctly for base64 data"
                )
            return _b64decode(value["b64"])
        raise _type_error(value, dtype)
    if kind is dict:
        raise _type_error(value, dtype)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        # Any number: GetFloat() / GetDouble() round it (past float32's range to infinity).
        if kind is not int and kind is not float:
            raise _type_error(value, dtype)
        return _as_double(value)
    if dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        if kind is not int or not lo <= value <= hi:
            raise _type_error(value, dtype)
        return value
    if dtype == DT_BOOL:
        if kind is not bool:
            raise _type_error(value, dtype)
        return value
    raise Unimplemented(
        f"Conversion of JSON Value: {debug_text(value)} to type: {dtype_name(dtype)}"
    )


def _dense_shape(value: Any, max_rank: int = MAX_RANK) -> list[int]:
    """``GetDenseTensorShape``: the shape implied by following element 0 at each level.

    Raises:
        InvalidArgument: more than ``max_rank`` levels of lists (TF Serving would go on; no
            NumPy array can have that many dimensions).
    """
    shape: list[int] = []
    while type(value) is list:
        if len(shape) == max_rank:
            depth = len(shape)
            while type(value) is list and value:
                value = value[0]
                depth += 1
            raise InvalidArgument(
                f"JSON value nested {depth} lists deep: at most {max_rank} allowed (a tensor "
                f"has at most {MAX_RANK} dimensions)"
            )
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill_exact(value: Any, level: int, shape: Sequence[int], dtype: int, out: list[Any]) -> None:
    """``FillTensorProto``: validate layout and convert leaves in document order."""
    rank = len(shape)
    if type(value) is not list:
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {debug_text(value)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {rank}"
            )
        out.append(_convert_leaf(value, dtype))
        return
    if level >= rank:
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill_exact(item, level + 1, shape, dtype, out)


def _from_values(values: list[Any], shape: Sequence[int], dtype: int) -> np.ndarray:
    np_dtype = numpy_dtype(dtype)
    if dtype == DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif dtype in (DT_INT16, DT_INT8, DT_UINT8):  # int_val cast to the narrow type wraps
        array = np.array(values, dtype=np.int64).astype(np_dtype)
    else:
        array = np.array(values, dtype=np_dtype)
    return array.reshape(shape)


def _leaf_types(value: Any, shape: Sequence[int]) -> set[type] | None:
    """Types of the leaves if ``value`` is dense with ``shape`` (else ``None``)."""
    rank = len(shape)
    if rank == 0:
        return {type(value)}
    types: set[type] = set()
    level_lists = [value]
    for level in range(rank):
        size = shape[level]
        if level == rank - 1:
            for lst in level_lists:
                if len(lst) != size:
                    return None
                types.update(map(type, lst))
            return types
        nxt = []
        for lst in level_lists:
            if len(lst) != size:
                return None
            for item in lst:
                if type(item) is not list:
                    return None
            nxt.extend(lst)
        level_lists = nxt
    return types  # pragma: no cover


def _fast_array(value: Any, shape: Sequence[int], dtype: int) -> np.ndarray | None:
    """Vectorized conversion of a dense, well-typed numeric value; ``None`` when any check
    fails (the caller then runs the exact path, which produces TF's error)."""
    types = _leaf_types(value, shape)
    if types is None or list in types:
        return None
    try:
        if dtype in (DT_FLOAT, DT_DOUBLE):
            if not types <= {int, float}:
                return None
            with np.errstate(over="ignore", invalid="ignore"):
                wide = np.array(value, dtype=np.float64)
                return wide if dtype == DT_DOUBLE else wide.astype(np.float32)
        if dtype in _INT_RANGES:
            if types and types != {int}:
                return None
            lo, hi = _INT_RANGES[dtype]
            wide = np.array(value, dtype=np.uint64 if dtype == DT_UINT64 else np.int64)
            if wide.size and (wide.min() < lo or wide.max() > hi):
                return None
            return wide.astype(numpy_dtype(dtype))
        if dtype == DT_BOOL:
            if types and types != {bool}:
                return None
            return np.array(value, dtype=np.bool_)
    except (OverflowError, ValueError, TypeError):
        return None
    return None


def json_to_ndarray(value: Any, dtype: int) -> np.ndarray:
    """Convert one JSON value (scalar or nested lists) to an array of TF type ``dtype``.

    Follows ``FillTensorProto``: the shape is read from element 0 at each level and every
    other element must match it; leaves must have the JSON type the dtype requires. Raises
    TF Serving's ``InvalidArgument`` (or ``Unimplemented`` for dtypes JSON cannot carry).
    """
    shape = _dense_shape(value)
    if dtype != DT_STRING and dtype in _JSON_DTYPES:
        fast = _fast_array(value, shape, dtype)
        if fast is not None:
            return fast
    values: list[Any] = []
    _fill_exact(value, 0, shape, dtype, values)
    return _from_values(values, shape, dtype)


def _format_error(body: Any, *parts: str) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {debug_text(body)} " + "".join(parts))


def parse_json_object(payload: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """``ParseJson``: a request body, which must be a JSON object.

    Raises:
        InvalidArgument: RapidJSON's parse error (see :func:`pyserving.tfjson.loads`), or
            ``JSON Value: <the value> Is not object``.
    """
    body = loads(payload)
    if not isinstance(body, dict):
        raise _format_error(body, "Is not object")
    return body


def get_signature_name(body: Any) -> str:
    """The request's ``signature_name`` (``""`` when absent).

    Raises:
        InvalidArgument: the body is not a JSON object, or ``signature_name`` is not a string.
    """
    if not isinstance(body, dict):
        raise _format_error(body, "Is not object")
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise _format_error(
            body, "not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class _InstanceColumn:
    """Accumulates one named input across ``instances`` (``AddInstanceItem``)."""

    def __init__(self, dtype: int) -> None:
        self.dtype = dtype
        self.values: list[Any] = []
        self.size = -1
        self.shape: list[int] = []

    def add(self, item: Any) -> None:
        shape = _dense_shape(item, MAX_RANK - 1)  # the batch adds a dimension
        values: list[Any] = []
        _fill_exact(item, 0, shape, self.dtype, values)
        if self.size < 0:
            self.size, self.shape = len(values), shape
        elif self.size != len(values):
            raise InvalidArgument(f"Expecting tensor size: {self.size} but got: {len(values)}")
        elif self.shape != shape:
            raise InvalidArgument(
                f"Expecting shape {_shape_text(self.shape)} but got: {_shape_text(shape)}"
            )
        self.values.extend(values)


def _is_element_object(value: Any) -> bool:
    return type(value) is dict and not _is_b64(value)


def _instances_exact(instances: list[Any], dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInstancesList``, element by element, with TF's messages."""
    names = sorted(dtypes)
    if type(instances[0]) is not dict and len(dtypes) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = _is_element_object(instances[0])
    columns: dict[str, _InstanceColumn] = {}
    for index, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise InvalidArgument(
                    f"Expecting object but got list at item {index} of input list"
                )
            for name, item in element.items():
                try:
                    if name not in dtypes:
                        raise InvalidArgument(f"JSON object: does not have named input: {name}")
                    columns.setdefault(name, _InstanceColumn(dtypes[name])).add(item)
                except ServingError as exc:
                    raise InvalidArgument(
                        f"Failed to process element: {index} key: {name} of 'instances' "
                        f"list. Error: {_status_string(exc)}"
                    ) from None
            if set(element) != set(names):
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_text(element)} keys must be equal to: {','.join(names)}"
                )
        else:
            if _is_element_object(element):
                raise InvalidArgument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            name = names[0]
            try:
                columns.setdefault(name, _InstanceColumn(dtypes[name])).add(element)
            except ServingError as exc:
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. Error: "
                    f"{_status_string(exc)}"
                ) from None
    count = len(instances)
    return {
        name: _from_values(col.values, [count, *col.shape], col.dtype)
        for name, col in columns.items()
    }


def _instances_fast(
    instances: list[Any], dtypes: Mapping[str, int]
) -> dict[str, np.ndarray] | None:
    """The whole ``instances`` list as one batch per input; ``None`` if anything is off."""
    if _is_element_object(instances[0]):
        keys = dtypes.keys()
        for element in instances:
            if type(element) is not dict or element.keys() != keys:
                return None
        columns = {name: [element[name] for element in instances] for name in dtypes}
    elif len(dtypes) == 1:
        columns = {next(iter(dtypes)): instances}
    else:
        return None
    result = {}
    for name, column in columns.items():
        dtype = dtypes[name]
        try:
            shape = _dense_shape(column)
        except InvalidArgument:
            return None  # the exact path names the instance
        if dtype == DT_STRING or dtype not in _JSON_DTYPES:
            if _leaf_types(column, shape) is None:
                return None
            values: list[Any] = []
            try:
                _fill_exact(column, 0, shape, dtype, values)
            except ServingError:
                return None
            array = _from_values(values, shape, dtype)
        else:
            fast = _fast_array(column, shape, dtype)
            if fast is None:
                return None
            array = fast
        result[name] = array
    return result


def parse_predict_request(
    body: Any, signature_def: meta_graph_pb2.SignatureDef
) -> tuple[JsonFormat, dict[str, np.ndarray]]:
    """REST predict body -> input arrays for ``signature_def`` (``FillPredictRequestFromJson``).

    ``{"instances": [...]}`` is the row format: one entry per batch item (each an object
    naming every input when the signature has several inputs); the arrays get a leading batch
    dimension. ``{"inputs": value | {name: value}}`` is the columnar format: each value is the
    whole tensor. Dtypes come from the signature's TensorInfo.

    Returns:
        ``("row" | "columnar", {input alias: array})``.

    Raises:
        InvalidArgument: TF Serving's message for every malformed request.
        Unimplemented: an input dtype JSON cannot express (e.g. half).
    """
    signature_name = get_signature_name(body)
    dtypes = {alias: info.dtype for alias, info in signature_def.inputs.items()}
    if not dtypes:
        raise InvalidArgument(
            f"Failed to get input map for signature: {signature_name or 'DEFAULT'}"
        )
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise _format_error(
            body,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        )
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise _format_error(body, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(body, "No values in 'instances' array")
        fast = _instances_fast(instances, dtypes)
        return "row", fast if fast is not None else _instances_exact(instances, dtypes)
    if has_inputs:
        value = body["inputs"]
        if not isinstance(value, dict) or _is_b64(value):
            if len(dtypes) > 1:
                raise InvalidArgument(
                    "inputs is a plain value/list, but expecting an object as multiple input "
                    "tensors required as per tensorinfo_map"
                )
            name = sorted(dtypes)[0]
            return "columnar", {name: json_to_ndarray(value, dtypes[name])}
        arrays = {}
        for name in sorted(dtypes):
            if name not in value:
                raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
            arrays[name] = json_to_ndarray(value[name], dtypes[name])
        return "columnar", arrays
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# --------------------------------------------------------------------------------------------
# ndarray -> JSON
# --------------------------------------------------------------------------------------------

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_JSON_INT_KINDS = frozenset(
    np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64)
)
#: Printed by ``WriteDecimal`` (half as float32, which TF Serving's REST API refuses).
_FLOAT_KINDS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def _string_values(name: str, array: np.ndarray) -> Any:
    """String elements as JSON values, nested like ``array``: text (invalid UTF-8 replaced by
    U+FFFD), or ``{"b64": ...}`` when the output's name ends in ``_bytes``."""
    as_bytes = name.endswith("_bytes")
    converted: list[Any] = []
    for item in array.ravel().tolist():
        if isinstance(item, str):
            item = utf8_bytes(item)
        if as_bytes:
            converted.append({"b64": base64.b64encode(item).decode("ascii")})
        else:
            converted.append(item.decode("utf-8", errors="replace"))
    if array.ndim == 0:
        return converted[0]
    holder = np.empty(len(converted), dtype=object)
    holder[:] = converted
    return holder.reshape(array.shape).tolist()


def _json_value(name: str, array: np.ndarray) -> Any:
    """The tensor as an orjson-serializable value that prints as TF Serving writes it
    (``AddTensorValues``): numbers in TF's text, strings as :func:`_string_values`.

    Raises:
        InvalidArgument: a dtype TF Serving cannot write, unless the tensor is empty.
    """
    dtype = array.dtype
    if dtype in _FLOAT_KINDS:
        return float_value(array)
    if dtype == np.bool_ or dtype in _JSON_INT_KINDS:
        if array.ndim == 0:
            return array.item()
        return array if array.flags.c_contiguous else np.ascontiguousarray(array)
    if dtype.kind in "OSU":
        return _string_values(name, array)
    if array.size == 0:  # nothing to write, so TF Serving never meets the type
        return orjson.Fragment(float_json(np.zeros(array.shape, np.float32)))
    try:
        type_name = dtype_name(datatype_for_numpy(dtype))
    except ServingError:
        type_name = str(dtype)
    raise InvalidArgument(f"Failed to write JSON value for tensor type: {type_name}")


def _json_items(name: str, array: np.ndarray) -> Sequence[Any]:
    """:func:`_json_value` of ``array[0]``, ``array[1]``, ... (``array.ndim >= 1``)."""
    if array.dtype in _FLOAT_KINDS:
        items: Sequence[Any] = float_items(array)
        return items
    if array.shape[0] == 0:
        return []
    value: Sequence[Any] = _json_value(name, array)
    return value


def format_predict_response(outputs: Mapping[str, np.ndarray], format: str) -> bytes:
    """Serialize predict outputs as TF Serving does (``MakeJsonFromTensors``).

    Row (``"row"``): ``{"predictions": [...]}`` with one entry per batch item; with a single
    output the entry is that output's value, with several it is ``{name: value}``. Every
    output needs a batch dimension and all must agree on it. Columnar (``"columnar"``):
    ``{"outputs": value}`` for one output, ``{"outputs": {name: value}}`` for several.

    Numbers are TF Serving's text (``WriteDecimal``: float32 with 6 significant digits, or 9
    when 6 do not read back as the same float32, e.g. ``9e+06``, ``0.1``, ``3.14159274``;
    doubles with 6 or 17; NaN and infinities as bare tokens). String tensors are written as
    UTF-8 text, or as ``{"b64": ...}`` when the output name ends in ``_bytes``. The text has no
    whitespace.

    Raises:
        InvalidArgument: empty ``outputs``, a row-format tensor without batch dimension or
            with an inconsistent batch size, or a dtype JSON cannot carry.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {n: np.asarray(outputs[n]) for n in names}
    if format == "row":
        batch = -1
        for name in names:
            array = arrays[name]
            if array.ndim == 0:
                raise InvalidArgument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and array.shape[0] != batch:
                raise InvalidArgument(
                    f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                    f"expecting: {batch}"
                )
            batch = array.shape[0]
    elif format != "columnar":
        raise InvalidArgument("Invalid request format")

    document: dict[str, Any]
    if format == "columnar":
        values = {n: _json_value(n, arrays[n]) for n in names}
        document = {"outputs": values[names[0]] if len(names) == 1 else values}
    elif len(names) == 1:
        document = {"predictions": _json_value(names[0], arrays[names[0]])}
    else:
        columns = [_json_items(n, arrays[n]) for n in names]
        document = {
            "predictions": [
                dict(zip(names, items, strict=True)) for items in zip(*columns, strict=True)
            ]
        }
    return orjson.dumps(document, option=_ORJSON_OPTIONS)


def format_classify_response(result: classification_pb2.ClassificationResult) -> bytes:
    """``{"results": [[[label, score], ...], ...]}`` (``MakeJsonFromClassificationResult``),
    scores in TF's float32 text.

    Raises:
        InvalidArgument: the result has no classifications.
    """
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    labels = [[c.label for c in cls.classes] for cls in result.classifications]
    scores = np.array(
        [c.score for cls in result.classifications for c in cls.classes], dtype=np.float32
    )
    texts = float_texts(scores)
    position = 0
    results = []
    for row in labels:
        results.append(
            [[label, orjson.Fragment(texts[position + i])] for i, label in enumerate(row)]
        )
        position += len(row)
    return orjson.dumps({"results": results})


def format_regress_response(result: regression_pb2.RegressionResult) -> bytes:
    """``{"results": [value, ...]}`` (``MakeJsonFromRegressionResult``), values in TF's
    float32 text.

    Raises:
        InvalidArgument: the result has no regressions.
    """
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    values = np.array([r.value for r in result.regressions], dtype=np.float32)
    return orjson.dumps({"results": float_value(values)}, option=_ORJSON_OPTIONS)


# --------------------------------------------------------------------------------------------
# classify / regress JSON -> tf.Example
# --------------------------------------------------------------------------------------------

_FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _kind_error(name: str, feature: feature_pb2.Feature) -> InvalidArgument:
    kind = feature.WhichOneof("kind")
    kind_name = _FEATURE_KIND_NAMES.get(kind or "", "UNKNOWN")
    return InvalidArgument(
        f"Unexpected element type in feature: {name} expecting type: {kind_name}"
    )


def _check_kind(name: str, feature: feature_pb2.Feature, wanted: str) -> None:
    kind = feature.WhichOneof("kind")
    if kind is not None and kind != wanted:
        raise _kind_error(name, feature)


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """``AddValueToFeature``: one JSON element into a Feature, with TF Serving's errors."""
    kind = type(value)
    if value is None or kind is list or (kind is dict and not _is_b64(value)):
        raise InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
        )
    if kind is bool:
        _check_kind(name, feature, "int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif kind is dict:
        _check_kind(name, feature, "bytes_list")
        feature.bytes_list.value.append(_b64decode(value["b64"]))
    elif kind is str:
        _check_kind(name, feature, "bytes_list")
        feature.bytes_list.value.append(utf8_bytes(value))
    elif kind is float or (kind is int and not -(2**63) <= value < 2**64):
        # A double (integers beyond 64 bits are doubles to RapidJSON): GetFloat() rounds it,
        # past float32's range to infinity.
        _check_kind(name, feature, "float_list")
        feature.float_list.value.append(_as_double(value))
    else:
        _check_kind(name, feature, "int64_list")
        if value > 2**63 - 1:
            raise InvalidArgument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        feature.int64_list.value.append(value)


def _add_feature_values(values: list[Any], name: str, feature: feature_pb2.Feature) -> None:
    types = set(map(type, values))
    if types == {float}:
        feature.float_list.value.extend(values)  # rounded to float32, as GetFloat()
        return
    if types == {int}:
        if min(values) >= -(2**63) and max(values) <= 2**63 - 1:
            feature.int64_list.value.extend(values)
            return
    elif types == {str}:
        feature.bytes_list.value.extend(utf8_bytes(v) for v in values)
        return
    for value in values:
        _add_feature_value(value, name, feature)


def _check_feature_name(name: str) -> None:
    """A feature name must be valid UTF-8: tf.Example's feature map has string keys.

    TF Serving does not check (RapidJSON keeps the raw bytes and C++ protobuf stores them);
    Python's protobuf cannot hold such a key, so the request is refused.
    """
    if name.isascii():
        return
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = utf8_bytes(name).decode("utf-8", "backslashreplace")
        raise InvalidArgument(
            f"Feature: {shown} has a name that is not valid UTF-8 (invalid encoding in string)"
        ) from None


def _make_example(value: Any, example: example_pb2.Example) -> None:
    """``MakeExampleFromJsonObject``.

    Raises:
        InvalidArgument: TF Serving's message for a malformed example, or a feature name
            that is not valid UTF-8 (:func:`_check_feature_name`).
    """
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {json_type(value)}")
    features = example.features.feature
    for name, content in value.items():
        feature = feature_pb2.Feature()
        if isinstance(content, list):
            _add_feature_values(content, name, feature)
        else:
            _add_feature_value(content, name, feature)
        _check_feature_name(name)
        features[name].CopyFrom(feature)


def parse_examples_request(body: Any) -> tuple[str, input_pb2.Input]:
    """Turn a REST classify/regress body into ``(signature_name, Input)``.

    ``{"signature_name"?, "context"?: {feature: v | [v]}, "examples": [{feature: v | [v]}]}``:
    integers become ``int64_list``, decimals ``float_list``, strings and ``{"b64": ...}``
    ``bytes_list``, booleans ``int64_list`` (1/0). With ``context`` the Input is an
    ``ExampleListWithContext``, otherwise an ``ExampleList``.

    Raises:
        InvalidArgument: TF Serving's message for every malformed request.
    """
    signature_name = get_signature_name(body)
    request_input = input_pb2.Input()
    has_context = "context" in body
    if has_context:
        _make_example(body["context"], request_input.example_list_with_context.context)
    if "examples" not in body:
        raise _format_error(
            body, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = body["examples"]
    if not isinstance(examples, list):
        raise _format_error(body, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(body, "'examples' value is an empty array")
    target = (
        request_input.example_list_with_context.examples
        if has_context
        else request_input.example_list.examples
    )
    for value in examples:
        _make_example(value, target.add())
    return signature_name, request_input


# --------------------------------------------------------------------------------------------
# TensorProto <-> ndarray
# --------------------------------------------------------------------------------------------

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


def _shape_proto(shape: Iterable[int]) -> tensor_shape_pb2.TensorShapeProto:
    proto = tensor_shape_pb2.TensorShapeProto()
    for size in shape:
        proto.dim.add(size=size)
    return proto


def ndarray_to_tensor_proto(
    array: Any, *, use_tensor_content: bool = False
) -> tensor_pb2.TensorProto:
    """A TensorProto holding ``array``.

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
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.CopyFrom(_shape_proto(array.shape))
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


def _typed_values(proto: tensor_pb2.TensorProto, dtype: int, np_dtype: np.dtype[Any]) -> np.ndarray:
    if dtype == DT_FLOAT:
        return np.array(proto.float_val, dtype=np.float32)
    if dtype == DT_DOUBLE:
        return np.array(proto.double_val, dtype=np.float64)
    if dtype in _INT_VAL_TYPES:
        return np.array(proto.int_val, dtype=np.int64).astype(np_dtype)
    if dtype == DT_INT64:
        return np.array(proto.int64_val, dtype=np.int64)
    if dtype == DT_BOOL:
        return np.array(proto.bool_val, dtype=np.bool_)
    if dtype == DT_UINT32:
        return np.array(proto.uint32_val, dtype=np.uint32)
    if dtype == DT_UINT64:
        return np.array(proto.uint64_val, dtype=np.uint64)
    if dtype in (DT_HALF, DT_BFLOAT16):
        return np.array(proto.half_val, dtype=np.int64).astype(np.uint16).view(np_dtype)
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


#: The largest size NumPy can describe (``npy_intp``): a shape past it is refused.
_MAX_ARRAY_BYTES = 2**63 - 1


def tensor_proto_to_ndarray(
    proto: tensor_pb2.TensorProto, *, name: str | None = None
) -> np.ndarray:
    """The array a TensorProto describes (``Tensor::FromProto`` semantics).

    ``tensor_content`` must hold exactly the tensor's bytes. Typed ``*_val`` fields may hold
    fewer values than the shape needs: none means all zeros (empty strings), otherwise the
    last value is repeated to fill the tensor (a single value broadcasts). More values than
    the shape holds is an error.

    Args:
        name: the input alias, if any; errors then read ``tensor parsing error: <name>``
            exactly as TF Serving's Predict says.

    Raises:
        InvalidArgument: invalid shape or dtype, or values that do not fit the shape.
    """
    dtype = proto.dtype
    try:
        np_dtype = numpy_dtype(dtype)
    except ServingError:
        raise _parse_error(name, f"unsupported dtype {dtype_name(dtype)}") from None
    if dtype > _REF_OFFSET:
        raise _parse_error(name, f"reference dtype {dtype_name(dtype)}")
    shape_proto = proto.tensor_shape
    if shape_proto.unknown_rank:
        raise _parse_error(name, "unknown rank")
    shape = [d.size for d in shape_proto.dim]
    if any(d < 0 for d in shape):
        raise _parse_error(name, f"invalid shape {_shape_text(shape)}")
    if math.prod(d for d in shape if d) * max(np_dtype.itemsize, 1) > _MAX_ARRAY_BYTES:
        # No array can have this shape, even with no elements (a zero dimension beside
        # dimensions whose product overflows): NumPy refuses it.
        raise _parse_error(name, f"shape {_shape_text(shape)} is too large")
    count = math.prod(shape)
    if proto.tensor_content and dtype != DT_STRING:
        content = proto.tensor_content
        little = np_dtype.newbyteorder("<") if np_dtype.byteorder not in "|" else np_dtype
        if len(content) != count * np_dtype.itemsize:
            raise _parse_error(
                name,
                f"tensor_content holds {len(content)} bytes, the shape "
                f"{_shape_text(shape)} of {dtype_name(dtype)} needs {count * np_dtype.itemsize}",
            )
        return np.frombuffer(content, dtype=little).astype(np_dtype).reshape(shape)
    values = _typed_values(proto, dtype, np_dtype)
    given = len(values)
    if given == count:
        return values.reshape(shape)
    if given > count:
        raise _parse_error(name, f"{given} values do not fit the shape {_shape_text(shape)}")
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
