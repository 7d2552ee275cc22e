"""Predict JSON: TF Serving's row (``instances``) and columnar (``inputs``) request bodies -> NumPy
arrays for a signature, and arrays -> ``predictions`` / ``outputs`` answers (``json_tensor.cc``)."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import orjson
from tensorflow.core.protobuf import meta_graph_pb2

from pyserving.codec.dtypes import (
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT32,
    DT_UINT64,
    datatype_for_numpy,
    dtype_name,
    numpy_dtype,
    status_string,
)
from pyserving.codec.tf_json import (
    debug_text,
    float_items,
    float_json,
    float_value,
    json_type,
    loads,
    utf8_bytes,
)
from pyserving.errors import InvalidArgument, ServingError, Unimplemented

JsonFormat = Literal["row", "columnar"]

DEFAULT_SIGNATURE_KEY = "serving_default"


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


def as_double(value: int | float) -> float:
    """A JSON number as the double RapidJSON holds (``GetDouble``); an integer too large for
    a double (only from a caller's Python objects: parsing refuses such numbers) is infinite."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


#: ASCII whitespace (``absl::ascii_isspace``), which base64 text may hold anywhere.
_B64_SPACE = str.maketrans("", "", " \t\n\v\f\r")
#: Pad characters to expect after 0, 2 or 3 characters of a last group (1 is never valid).
_B64_EXPECTED_PADS = {0: 0, 2: 2, 3: 1}


def b64decode(text: str) -> bytes:
    """``{"b64": text}`` decoded as TF Serving decodes it (``absl::Base64Unescape``): the
    standard alphabet; ASCII whitespace anywhere is skipped (line-wrapped base64 reads);
    ``=`` or ``.`` pads the last group, with either none or exactly the number it needs,
    and nothing but padding and whitespace after it. ``InvalidArgument`` (``Unable to
    base64 decode``) otherwise."""
    if len(text) % 4 == 0:
        try:  # the usual, strictly padded form
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    pad = min((i for i in (text.find("="), text.find(".")) if i >= 0), default=len(text))
    data = text[:pad].translate(_B64_SPACE)
    rest = text[pad:].translate(_B64_SPACE)
    expected = _B64_EXPECTED_PADS.get(len(data) % 4)
    if expected is None or rest.strip("=.") or len(rest) not in (0, expected):
        raise InvalidArgument("Unable to base64 decode")
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("Unable to base64 decode") from None


def _convert_leaf(value: Any, dtype: int) -> Any:
    """One JSON leaf -> Python value for ``dtype`` (``AddValueToTensor``), or TF's error."""
    kind = type(value)
    if dtype == DT_STRING:
        if kind is str:
            return utf8_bytes(value)
        if kind is dict:
            if not is_b64(value):
                raise InvalidArgument(
                    f"JSON Value: {debug_text(value)} not formatted correctly for base64 data"
                )
            return b64decode(value["b64"])
        raise _type_error(value, dtype)
    if kind is dict:
        raise _type_error(value, dtype)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        # Any number: GetFloat() / GetDouble() round it (past float32's range to infinity).
        if kind is not int and kind is not float:
            raise _type_error(value, dtype)
        return as_double(value)
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


def format_error(body: Any, *parts: str) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {debug_text(body)} " + "".join(parts))


def parse_json_object(payload: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """``ParseJson``: a request body, which must be a JSON object.

    Raises:
        InvalidArgument: RapidJSON's parse error (see :func:`pyserving.codec.tf_json.loads`), or
            ``JSON Value: <the value> Is not object``.
    """
    body = loads(payload)
    if not isinstance(body, dict):
        raise format_error(body, "Is not object")
    return body


def get_signature_name(body: Any) -> str:
    """The request's ``signature_name`` (``""`` when absent).

    Raises:
        InvalidArgument: the body is not a JSON object, or ``signature_name`` is not a string.
    """
    if not isinstance(body, dict):
        raise format_error(body, "Is not object")
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise format_error(
            body, "not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def shape_text(shape: Sequence[int]) -> str:
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
                f"Expecting shape {shape_text(self.shape)} but got: {shape_text(shape)}"
            )
        self.values.extend(values)


def _is_element_object(value: Any) -> bool:
    return type(value) is dict and not is_b64(value)


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
                        f"list. Error: {status_string(exc)}"
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
                    f"{status_string(exc)}"
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


_DT_INVALID = 0
_DT_FLOAT = 1


def _dtypes_from_values(body: Any, dtypes: dict[str, int]) -> dict[str, int]:
    """``dtypes`` with each ``DT_INVALID`` replaced by the dtype of the body's values for that
    input (DT_FLOAT when the body gives none)."""
    from pyserving.platforms.generic import request_signature

    found = request_signature(body).inputs
    if len(dtypes) == 1 and "inputs" in found and len(found) == 1:
        found = {next(iter(dtypes)): found["inputs"]}
    return {
        alias: (found[alias].dtype if alias in found else _DT_FLOAT)
        if dtype == _DT_INVALID
        else dtype
        for alias, dtype in dtypes.items()
    }


def parse_predict_request(
    body: Any, signature_def: meta_graph_pb2.SignatureDef
) -> tuple[JsonFormat, dict[str, np.ndarray]]:
    """REST predict body -> input arrays for ``signature_def`` (``FillPredictRequestFromJson``).

    ``{"instances": [...]}`` is the row format: one entry per batch item (each an object
    naming every input when the signature has several inputs); the arrays get a leading batch
    dimension. ``{"inputs": value | {name: value}}`` is the columnar format: each value is the
    whole tensor. Dtypes come from the signature's TensorInfo; an input of dtype
    ``DT_INVALID`` (a model that declares none) takes the dtype its JSON values read as
    (strings and ``b64`` DT_STRING, any float DT_FLOAT, only booleans DT_BOOL, integers
    DT_INT64).

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
    if _DT_INVALID in dtypes.values():
        dtypes = _dtypes_from_values(body, dtypes)
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise format_error(
            body,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        )
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise format_error(body, "Excepting 'instances' to be an list/array")
        if not instances:
            raise format_error(body, "No values in 'instances' array")
        fast = _instances_fast(instances, dtypes)
        return "row", fast if fast is not None else _instances_exact(instances, dtypes)
    if has_inputs:
        value = body["inputs"]
        if not isinstance(value, dict) or is_b64(value):
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


ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
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
    return orjson.dumps(document, option=ORJSON_OPTIONS)
