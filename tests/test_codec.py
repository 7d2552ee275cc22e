"""tensors.py: TF Serving's JSON <-> tensor rules and messages, and TensorProto conversions.

Expected messages are TF Serving's (json_tensor.cc, 2.18 and later); no model is loaded here.
TF Serving's own json_tensor_test.cc cases are in test_tf_json_cases.py.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from pyserving import codec
from pyserving.codec import (
    format_classify_response,
    format_predict_response,
    format_regress_response,
    loads,
    ndarray_to_tensor_proto,
    parse_examples_request,
    parse_predict_request,
    tensor_proto_to_ndarray,
    tf_float_text,
)
from pyserving.codec.tf_json import utf8_bytes
from pyserving.errors import InvalidArgument, ServingError, Unimplemented


def signature(**inputs: int) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for name, dtype in inputs.items():
        sig.inputs[name].name = f"{name}:0"
        sig.inputs[name].dtype = dtype
    return sig


FLOAT_X = signature(x=types_pb2.DT_FLOAT)
TWO = signature(a=types_pb2.DT_FLOAT, b=types_pb2.DT_INT32)


def error(body: Any, sig: meta_graph_pb2.SignatureDef = FLOAT_X) -> str:
    with pytest.raises(ServingError) as info:
        parse_predict_request(body, sig)
    return info.value.message


def one(body: Any, sig: meta_graph_pb2.SignatureDef = FLOAT_X) -> tuple[str, np.ndarray]:
    fmt, arrays = parse_predict_request(body, sig)
    assert list(arrays) == list(sig.inputs)[:1] or len(arrays) == 1
    (array,) = arrays.values()
    return fmt, array


# -------------------------------------------------------------------------- loads


def test_loads_standard_json() -> None:
    assert loads(b'{"instances": [1, 2.5, "s", true, null]}') == {
        "instances": [1, 2.5, "s", True, None]
    }


def test_loads_accepts_nan_and_infinity_tokens() -> None:
    body = loads(b'{"inputs": [NaN, Infinity, -Infinity, Inf, -Inf, 1.5], "s": "NaN Inf"}')
    values = body["inputs"]
    assert math.isnan(values[0])
    assert values[1:5] == [math.inf, -math.inf, math.inf, -math.inf]
    assert values[5] == 1.5
    assert body["s"] == "NaN Inf"  # tokens inside strings are untouched


def test_loads_errors() -> None:
    with pytest.raises(InvalidArgument) as info:
        loads(b"")
    assert info.value.message == "JSON Parse error: The document is empty"
    with pytest.raises(InvalidArgument) as info:
        loads(b'{"instances": [1,]}')
    assert info.value.message == "JSON Parse error: Invalid value. at offset: 17"
    assert loads(b'{"a": 1} extra') == {"a": 1}  # what follows the document is not read


def test_loads_big_integers_and_invalid_utf8() -> None:
    assert loads(b"[18446744073709551615]") == [2**64 - 1]
    assert loads(b'[NaN, "\xff"]')[1] == "\udcff"  # tolerant path keeps the raw byte


@pytest.mark.parametrize(
    ("document", "reason", "offset"),
    [
        (b'{"a": [1, 2,]}', "Invalid value.", 12),
        (b'{"a" 1}', "Missing a colon after a name of object member.", 5),
        (b'{"a": 1,}', "Missing a name for object member.", 8),
        (b'{"a": 1 "b"}', "Missing a comma or '}' after an object member.", 8),
        (b"[1 2]", "Missing a comma or ']' after an array element.", 3),
        (b'{"a": [1}', "Missing a comma or ']' after an array element.", 8),
        (b'{"a": 01}', "Missing a comma or '}' after an object member.", 7),
        (b"]", "The document is empty.", 0),
        (b" \t\r\n", "The document is empty.", 4),
        (b'{"a": tru}', "Invalid value.", 9),
        (b'{"a": -}', "Invalid value.", 7),
        (b'{"a": Infin}', "Invalid value.", 11),
        (b'{"a": 1.}', "Miss fraction part in number.", 8),
        (b'{"a": 1e+}', "Miss exponent in number.", 9),
        (b'{"a": "\\x"}', "Invalid escape character in string.", 7),
        (b'{"a": "\x01"}', "Invalid escape character in string.", 7),
        (b'{"a": "\\u12G4"}', "Incorrect hex digit after \\u escape in string.", 7),
        (b'{"a": "\\ud800"}', "The surrogate pair in string is invalid.", 7),
        (b'{"a": "\\ud800\\u0041"}', "The surrogate pair in string is invalid.", 7),
        (b'{"a": "ab', "Missing a closing quotation mark in string.", 9),
        (b'{"a": "a\x00b"}', "Missing a closing quotation mark in string.", 8),
        (b'{"a": \x00 1}', "Invalid value.", 6),
        (b'{"a": 1e400}', "Number too big to be stored in double.", 6),
        (b'{"a": 1' + b"0" * 400 + b"}", "Number too big to be stored in double.", 6),
        (
            b"[" * 500_000 + b"]" * 499_999,
            "Missing a comma or ']' after an array element.",
            999_999,
        ),
    ],
    ids=lambda v: v if isinstance(v, int) else None,
)
def test_loads_errors_are_rapidjsons(document: bytes, reason: str, offset: int) -> None:
    """RapidJSON's reason and byte offset, as TF Serving answers (its iterative parser)."""
    with pytest.raises(InvalidArgument) as info:
        loads(document)
    assert info.value.message == f"JSON Parse error: {reason} at offset: {offset}"


def test_loads_reads_what_tf_serving_reads() -> None:
    # NaN and infinities, in every spelling RapidJSON accepts.
    values = loads(b"[NaN, -NaN, Inf, -Inf, Infinity, -Infinity, 1]")
    assert math.isnan(values[0]) and math.isnan(values[1])
    assert values[2:] == [math.inf, -math.inf, math.inf, -math.inf, 1]
    # Past the double range only by rounding: infinite; integers beyond 64 bits: doubles.
    assert loads(b"[2e308, -2e308, 0.1e309]") == [math.inf, -math.inf, 1e308]
    assert loads(b"[18446744073709551616, -9223372036854775809, -9223372036854775808]") == [
        2.0**64,
        -(2.0**63),
        -(2**63),
    ]
    # Strings: bytes as sent; a lone low surrogate escape as RapidJSON encodes it.
    strings = loads(b'["\xc3\xa9", "\\u00e9", "\\ud83d\\ude00", "\xff\xfe", NaN]')
    assert strings[:4] == ["\u00e9", "\u00e9", "\U0001f600", "\udcff\udcfe"]
    assert [utf8_bytes(text) for text in strings[:4]] == [
        b"\xc3\xa9",
        b"\xc3\xa9",
        b"\xf0\x9f\x98\x80",
        b"\xff\xfe",
    ]
    assert utf8_bytes(loads(b'["\\udc8d", NaN]')[0]) == b"\xed\xb2\x8d"
    # What follows the first value, or a NUL byte, is not read; a byte order mark is skipped.
    assert loads(b'{"a": 1} {') == {"a": 1}
    assert loads(b'{"a": 1}\x00garbage') == {"a": 1}
    assert loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    # Any nesting parses (TF Serving's DeeplyNestedWellFormed).
    deep = loads(b'{"instances": [1], "nested": ' + b"[" * 500_000 + b"]" * 500_000 + b"}")
    assert deep["instances"] == [1]
    with pytest.raises(InvalidArgument) as info:
        codec.get_signature_name({"signature_name": deep["nested"]})
    assert info.value.message.startswith('JSON Value: {\n    "signature_name": [[[[')
    assert info.value.message.endswith(
        "[[ not formatted correctly. 'signature_name' key must be a string value."
    )


# -------------------------------------------------------------------------- predict: row


def test_row_single_input() -> None:
    fmt, x = one({"instances": [[2.0], [3.0], [4.0]]})
    assert fmt == "row"
    assert x.dtype == np.float32 and x.shape == (3, 1)
    np.testing.assert_array_equal(x, [[2.0], [3.0], [4.0]])


def test_row_scalars_and_ints_for_float() -> None:
    fmt, x = one({"instances": [1, 2.5, 5]})
    assert (fmt, x.shape, x.tolist()) == ("row", (3,), [1.0, 2.5, 5.0])


def test_row_named_inputs() -> None:
    fmt, arrays = parse_predict_request(
        {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [4.0, 5.0], "b": 6}]}, TWO
    )
    assert fmt == "row"
    assert arrays["a"].dtype == np.float32 and arrays["a"].shape == (2, 2)
    assert arrays["b"].dtype == np.int32 and arrays["b"].tolist() == [3, 6]


def test_row_single_input_as_objects() -> None:
    _, x = one({"instances": [{"x": [1.0]}, {"x": [2.0]}]})
    assert x.tolist() == [[1.0], [2.0]]


def test_row_b64_strings() -> None:
    sig = signature(s=types_pb2.DT_STRING)
    raw = b"\x00\x01\xfe"
    body = {"instances": [{"b64": base64.b64encode(raw).decode()}, "text", "é"]}
    _, s = one(body, sig)
    assert s.dtype == object and s.tolist() == [raw, b"text", "é".encode()]


def test_row_errors() -> None:
    assert error({"instances": [[1.0, 2.0], [3.0]]}) == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting tensor size: 2 but got: 1"
    )
    assert error({"instances": [[[1.0, 2.0]], [[3.0], [4.0]]]}) == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting shape [1,2] but got: [2,1]"
    )
    assert error({"instances": [[[1.0, 2.0], [3.0]]]}) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2"
    )
    assert error({"instances": [[1.0, [2.0]]]}) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Encountered list at unexpected level: 1 expected < 1"
    )
    assert error({"instances": [[[1.0], 2.0]]}) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: 2.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"
    )
    assert error({"instances": [1.0, {"x": 1.0}]}) == (
        "Expecting value/list but got object at item 1 of input list"
    )
    assert error({"instances": [{"x": 1.0}, 2.0]}) == (
        "Expecting object but got list at item 1 of input list"
    )
    assert error({"instances": [1.0, "a"]}) == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "a" Type: String is not of expected type: float'
    )


def test_row_named_errors() -> None:
    assert error({"instances": [1.0, 2.0]}, TWO) == (
        "instances is a plain list, but expecting list of objects as multiple input tensors "
        "required as per tensorinfo_map"
    )
    assert error({"instances": [{"a": 1.0, "b": 1, "c": 2}]}, TWO) == (
        "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: c"
    )
    assert error({"instances": [{"a": 1.0}]}, TWO) == (
        "Failed to process element: 0 of 'instances' list. JSON object: {\n"
        '    "a": 1.0\n'
        "} keys must be equal to: a,b"
    )
    assert error({"instances": [{"a": 1.0, "b": 1.5}]}, TWO) == (
        "Failed to process element: 0 key: b of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: 1.5 Type: Number is not of expected type: int32"
    )


def test_instances_must_be_a_non_empty_list() -> None:
    assert error({"instances": 5}) == (
        "JSON Value: {\n    \"instances\": 5\n} Excepting 'instances' to be an list/array"
    )
    assert error({"instances": []}) == (
        "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"
    )


# -------------------------------------------------------------------------- predict: columnar


def test_columnar_single_value() -> None:
    fmt, x = one({"inputs": [[2.0], [3.0]]})
    assert fmt == "columnar" and x.shape == (2, 1)
    fmt, x = one({"inputs": 7})
    assert fmt == "columnar" and x.shape == () and x.item() == 7.0
    fmt, x = one({"inputs": {"x": [1.0, 2.0]}})
    assert x.tolist() == [1.0, 2.0]


def test_columnar_named_ignores_unknown_keys() -> None:
    fmt, arrays = parse_predict_request({"inputs": {"a": [1.0], "b": [[1, 2]], "zz": 0}}, TWO)
    assert fmt == "columnar" and set(arrays) == {"a", "b"}
    assert arrays["b"].dtype == np.int32 and arrays["b"].shape == (1, 2)


def test_columnar_errors() -> None:
    assert error({"inputs": [1.0]}, TWO) == (
        "inputs is a plain value/list, but expecting an object as multiple input tensors "
        "required as per tensorinfo_map"
    )
    assert error({"inputs": {"a": [1.0]}}, TWO) == "Missing named input: b in 'inputs' object."
    assert error({"inputs": [[1.0, 2.0], [3.0]]}) == (
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2"
    )


def test_both_or_neither_key() -> None:
    assert error({"instances": [1.0], "inputs": [1.0]}) == (
        "JSON Value: {\n"
        '    "instances": [1.0],\n'
        '    "inputs": [1.0]\n'
        "} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
    )
    assert error({"signature_name": "x"}) == "Missing 'inputs' or 'instances' key"


def test_body_and_signature_name_checks() -> None:
    assert error([1, 2]) == "JSON Value: [1, 2] Is not object"
    assert error({"signature_name": 5, "inputs": [1.0]}) == (
        'JSON Value: {\n    "signature_name": 5,\n    "inputs": [1.0]\n} '
        "not formatted correctly. 'signature_name' key must be a string value."
    )
    # RapidJSON's writer refuses non-finite numbers: the quoted value stops there.
    assert error({"signature_name": 5, "inputs": [1.5, math.nan, 2.0]}) == (
        'JSON Value: {\n    "signature_name": 5,\n    "inputs": [1.5,  '
        "not formatted correctly. 'signature_name' key must be a string value."
    )
    assert codec.get_signature_name({"inputs": 1}) == ""
    assert codec.get_signature_name({"signature_name": "s"}) == "s"
    empty = meta_graph_pb2.SignatureDef()
    assert error({"inputs": []}, empty) == "Failed to get input map for signature: DEFAULT"
    assert error({"signature_name": "get", "inputs": []}, empty) == (
        "Failed to get input map for signature: get"
    )


# -------------------------------------------------------------------------- predict: dtypes


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        (types_pb2.DT_INT32, 1.5, "JSON Value: 1.5 Type: Number is not of expected type: int32"),
        (types_pb2.DT_INT32, 2.0, "JSON Value: 2.0 Type: Number is not of expected type: int32"),
        (
            types_pb2.DT_INT32,
            2**31,
            "JSON Value: 2147483648 Type: Number is not of expected type: int32",
        ),
        (types_pb2.DT_INT64, 1.0, "JSON Value: 1.0 Type: Number is not of expected type: int64"),
        (types_pb2.DT_INT64, True, "JSON Value: true Type: True is not of expected type: int64"),
        (types_pb2.DT_BOOL, 1, "JSON Value: 1 Type: Number is not of expected type: bool"),
        (
            types_pb2.DT_BOOL,
            "true",
            'JSON Value: "true" Type: String is not of expected type: bool',
        ),
        (types_pb2.DT_FLOAT, None, "JSON Value: null Type: Null is not of expected type: float"),
        (types_pb2.DT_FLOAT, False, "JSON Value: false Type: False is not of expected type: float"),
        (
            types_pb2.DT_FLOAT,
            {"a": 1},
            'JSON Value: {\n    "a": 1\n} Type: Object is not of expected type: float',
        ),
        (types_pb2.DT_INT32, 1e39, "JSON Value: 1e39 Type: Number is not of expected type: int32"),
        (
            types_pb2.DT_INT64,
            2**64 - 1,
            "JSON Value: 18446744073709551615 Type: Number is not of expected type: int64",
        ),
        (
            types_pb2.DT_INT64,
            2**64,  # beyond 64 bits RapidJSON holds a double
            "JSON Value: 18446744073709552000.0 Type: Number is not of expected type: int64",
        ),
        (types_pb2.DT_UINT32, -1, "JSON Value: -1 Type: Number is not of expected type: uint32"),
        (types_pb2.DT_STRING, 1, "JSON Value: 1 Type: Number is not of expected type: string"),
        (
            types_pb2.DT_STRING,
            {"b64": 1},
            'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data',
        ),
        (types_pb2.DT_STRING, {"b64": "!!"}, "Unable to base64 decode"),
    ],
)
def test_columnar_type_errors(dtype: int, value: Any, message: str) -> None:
    sig = signature(x=dtype)
    assert error({"inputs": [value]}, sig) == message
    if isinstance(value, dict) and not isinstance(value.get("b64"), str):
        return  # in "instances" an object (other than {"b64": "..."}) names inputs
    assert error({"instances": [value]}, sig) == (
        f"Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: {message}"
    )


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("aGVsbG8=", b"hello"),
        ("aGVs\nbG8=", b"hello"),  # line-wrapped, as base64 and MIME encoders write
        ("aGVs\r\nbG8=\r\n", b"hello"),
        (" a G V s b G 8 = ", b"hello"),
        ("aGVsbG8", b"hello"),  # padding may be left out
        ("aGVsbG8.", b"hello"),  # '.' pads as '='
        ("YQ==", b"a"),
        ("YQ=.", b"a"),
        ("YQ", b"a"),
        ("", b""),
    ],
)
def test_b64_is_read_as_tf_serving_reads_it(text: str, decoded: bytes) -> None:
    """absl::Base64Unescape: whitespace anywhere, optional padding of '=' or '.'."""
    sig = signature(x=types_pb2.DT_STRING)
    _, inputs = parse_predict_request({"instances": [{"b64": text}]}, sig)
    assert inputs["x"].tolist() == [decoded]


@pytest.mark.parametrize(
    "text",
    ["YQ=", "YQ===", "Y", "YWJj=", "YQ==YQ==", "YQ==x", "YW-j", "YW_j", "\x00YQ==", "é", "="],
)
def test_b64_that_tf_serving_refuses_is_refused(text: str) -> None:
    """Padding of the wrong length, a lone character in the last group, data after the
    padding, characters outside the standard alphabet."""
    sig = signature(x=types_pb2.DT_STRING)
    assert error({"inputs": [{"b64": text}]}, sig) == "Unable to base64 decode"


def test_unsupported_json_dtype() -> None:
    sig = signature(x=types_pb2.DT_HALF)
    with pytest.raises(Unimplemented) as info:
        parse_predict_request({"inputs": [1.0]}, sig)
    assert info.value.message == "Conversion of JSON Value: 1.0 to type: half"
    assert error({"instances": [1.0]}, sig) == (
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: "
        "Conversion of JSON Value: 1.0 to type: half"
    )


@pytest.mark.parametrize(
    ("dtype", "values", "np_dtype", "expected"),
    [
        (types_pb2.DT_DOUBLE, [0.1, 2**53 - 1], np.float64, [0.1, 2**53 - 1]),
        (types_pb2.DT_INT64, [2**62, -(2**63)], np.int64, [2**62, -(2**63)]),
        (types_pb2.DT_UINT64, [2**64 - 1], np.uint64, [2**64 - 1]),
        (types_pb2.DT_UINT8, [255, 300, -1], np.uint8, [255, 44, 255]),  # int_val cast wraps
        (types_pb2.DT_INT8, [-128, 127], np.int8, [-128, 127]),
        (types_pb2.DT_UINT32, [2**32 - 1], np.uint32, [2**32 - 1]),
        (types_pb2.DT_BOOL, [True, False], np.bool_, [True, False]),
        (types_pb2.DT_FLOAT, [2**24 - 1, -3], np.float32, [2**24 - 1, -3]),
    ],
)
def test_dtypes(dtype: int, values: list[Any], np_dtype: type, expected: list[Any]) -> None:
    sig = signature(x=dtype)
    for body in ({"inputs": values}, {"instances": values}):
        _, array = one(body, sig)
        assert array.dtype == np_dtype
        assert array.tolist() == expected


def test_nan_and_infinity_inputs() -> None:
    _, x = one(loads(b'{"instances": [NaN, Infinity, -Infinity]}'))
    assert np.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf


def test_float_rounding_matches_a_cast() -> None:
    _, x = one({"inputs": [0.1, 1.0000001, 3.4028234663852886e38]})
    np.testing.assert_array_equal(x, np.array([0.1, 1.0000001, 3.4028234663852886e38], np.float32))


def test_empty_lists_and_large_batches() -> None:
    _, x = one({"inputs": [[], []]})
    assert x.shape == (2, 0) and x.dtype == np.float32
    data = np.random.default_rng(0).random((500, 20)).tolist()
    _, x = one({"instances": data})
    np.testing.assert_array_equal(x, np.array(data, np.float32))


# -------------------------------------------------------------------------- responses


def test_row_response_single_output() -> None:
    y = np.array([[3.0], [3.5], [4.0]], np.float32)
    assert format_predict_response({"y": y}, "row") == b'{"predictions":[[3.0],[3.5],[4.0]]}'
    flat = np.array([2.5, 3.0, 4.5], np.float32)
    assert format_predict_response({"y": flat}, "row") == b'{"predictions":[2.5,3.0,4.5]}'


def test_row_response_several_outputs() -> None:
    out = {
        "b": np.array([[1, 2], [3, 4]], np.int64),
        "a": np.array([0.5, 1.0], np.float32),
    }
    assert json.loads(format_predict_response(out, "row")) == {
        "predictions": [{"a": 0.5, "b": [1, 2]}, {"a": 1.0, "b": [3, 4]}]
    }


def test_columnar_response() -> None:
    y = np.array([[3.0], [3.5]], np.float32)
    assert format_predict_response({"y": y}, "columnar") == b'{"outputs":[[3.0],[3.5]]}'
    scalar = np.array(2.0, np.float32)
    assert format_predict_response({"y": scalar}, "columnar") == b'{"outputs":2.0}'
    both = {"y": y, "n": np.array(7, np.int64)}
    assert json.loads(format_predict_response(both, "columnar")) == {
        "outputs": {"n": 7, "y": [[3.0], [3.5]]}
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (3.0, "3.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (3.1415927, "3.14159274"),
        (1e-5, "1e-05"),
        (0.00003, "3e-05"),
        (0.0001, "0.0001"),
        (0.00012345, "0.00012345"),
        (1e7, "1e+07"),
        (9000000.0, "9e+06"),
        (999999.0, "999999.0"),
        (999999.5, "999999.5"),  # "1e+06" does not read back as 999999.5
        (999999.6, "999999.625"),
        (123456.0, "123456.0"),
        (1234567.0, "1234567.0"),
        (1234567.125, "1234567.12"),
        (0.3, "0.3"),
        (16777217.0, "16777216.0"),
        (1435774380.0, "1.43577434e+09"),
        (3.4028234663852886e38, "3.40282347e+38"),
        (1e-45, "1.4013e-45"),
        (1.1754942e-38, "1.17549421e-38"),
        (-2.5e-38, "-2.5e-38"),
    ],
)
def test_float32_text(value: float, text: str) -> None:
    v = float(np.float32(value))
    assert tf_float_text(v) == text
    for size in (1, 100):  # a per-element path for small tensors, vectorized for larger ones
        printed = format_predict_response({"y": np.full(size, v, np.float32)}, "columnar")
        assert printed == ('{"outputs":[' + ",".join([text] * size) + "]}").encode()


def test_double_text() -> None:
    assert tf_float_text(0.1, single=False) == "0.1"
    assert tf_float_text(1 / 3, single=False) == "0.33333333333333331"
    out = format_predict_response(
        {"y": np.array([1 / 3, 2.0, 1e300, 1e6, 123456789.0])}, "columnar"
    )
    assert out == b'{"outputs":[0.33333333333333331,2.0,1e+300,1e+06,123456789.0]}'
    rng = np.random.default_rng(3)
    special = [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e23, 1e-300, 0.5]
    values = np.concatenate(
        [
            rng.standard_normal(500) * 10.0 ** rng.integers(-300, 300, 500),
            [  # short decimals: written with six digits
                round(v, int(d))
                for v, d in zip(
                    rng.standard_normal(200) * 1e4, rng.integers(0, 6, 200), strict=True
                )
            ],
            rng.integers(-(10**17), 10**17, 100).astype(np.float64),
            [*special, -0.0, 0.0, np.nan, np.inf, -np.inf],
        ]
    )
    texts = ",".join(tf_float_text(v, single=False) for v in values.tolist())
    out = format_predict_response({"y": values}, "columnar")
    assert out == f'{{"outputs":[{texts}]}}'.encode()


def test_float32_values_match_the_reference_formatter() -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, size=3000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.concatenate(
        [
            bits[np.isfinite(bits)],
            rng.random(3000).astype(np.float32),
            (rng.standard_normal(3000) * 1e4).astype(np.float32),
            np.array([1e-4, 9.99999e-5, 999999.9, 1e6, 5e-324, 1e-45], np.float32),
        ]
    )
    texts = [tf_float_text(v) for v in values.tolist()]
    printed = format_predict_response({"y": values}, "columnar")
    assert printed == ('{"outputs":[' + ",".join(texts) + "]}").encode()
    for start in range(0, 600, 6):  # small tensors take a per-element path
        printed = format_predict_response({"y": values[start : start + 6]}, "columnar")
        assert printed == ('{"outputs":[' + ",".join(texts[start : start + 6]) + "]}").encode()


def test_float32_text_near_powers_of_ten_and_in_every_range() -> None:
    """Around each power of ten (where the decimal exponent and the rounding change) and
    across the whole float32 range, including subnormals, the vectorized writer gives the
    reference text."""
    powers = np.array([10.0**k for k in range(-45, 39)]).astype(np.float32)
    up, down = np.float32(np.inf), np.float32(0)
    near = [powers, np.nextafter(powers, up), np.nextafter(powers, down)]
    for _ in range(3):
        near.append(np.nextafter(near[-2], up))
        near.append(np.nextafter(near[-2], down))
    rng = np.random.default_rng(7)
    spread = (rng.random(20000) * 10.0 ** rng.integers(-46, 39, 20000)).astype(np.float32)
    values = np.concatenate([*near, spread, -spread[:500]])
    values = values[np.isfinite(values)]
    texts = [tf_float_text(v) for v in values.tolist()]
    printed = format_predict_response({"y": values}, "columnar")
    assert printed == ('{"outputs":[' + ",".join(texts) + "]}").encode()


@pytest.mark.parametrize("tiny", [0, 3, 40, 400], ids=lambda n: f"{n}-tiny")
@pytest.mark.parametrize("shape", [(1000,), (8, 125), (2, 5, 100)], ids=str)
def test_float32_writer_paths(tiny: int, shape: tuple[int, ...]) -> None:
    """orjson writes the elements TF writes in fixed notation; the others (values printed
    with an exponent, NaN, infinities) are spliced in, or, when many, everything is written
    by the vectorized writer. Every mix gives the reference text, whole and per batch item."""
    rng = np.random.default_rng(tiny)
    values = (rng.standard_normal(1000) * 10).astype(np.float32)
    values[rng.choice(1000, tiny, replace=False)] = (rng.random(tiny) * 1e-6).astype(np.float32)
    values[::97] = 0.0
    if tiny:
        values[1] = np.nan
        values[2] = -np.inf
        values[3] = 2e9
    texts = [tf_float_text(v) for v in values.tolist()]
    array = values.reshape(shape)

    def nested(items: list[str], dims: tuple[int, ...]) -> str:
        if not dims:
            return items[0]
        step = len(items) // dims[0]
        parts = [nested(items[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]
        return "[" + ",".join(parts) + "]"

    whole = nested(texts, shape)
    assert format_predict_response({"y": array}, "columnar") == f'{{"outputs":{whole}}}'.encode()
    assert format_predict_response({"y": array}, "row") == f'{{"predictions":{whole}}}'.encode()
    step = 1000 // shape[0]
    items = [nested(texts[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
    marker = np.arange(shape[0])
    expected = ",".join(f'{{"m":{m},"y":{item}}}' for m, item in zip(marker, items, strict=True))
    assert format_predict_response({"y": array, "m": marker}, "row") == (
        f'{{"predictions":[{expected}]}}'.encode()
    )


def test_float_outputs_nest_like_the_tensor() -> None:
    """Row format with several outputs splits each float tensor per batch item; every shape
    (scalars per item, empty dimensions, half precision) prints as TF Serving would."""
    rng = np.random.default_rng(5)
    big = (rng.standard_normal((3, 4, 5)) * 1e5).astype(np.float32)
    big[1, 2, 3] = np.nan
    big[2, 0, 0] = -np.inf
    texts = [tf_float_text(v) for v in big.ravel().tolist()]

    def nested(items: list[str], shape: tuple[int, ...]) -> str:
        if not shape:
            return items[0]
        step = len(items) // shape[0]
        parts = [nested(items[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
        return "[" + ",".join(parts) + "]"

    out = {"big": big, "scalar": np.array([0.5, 1e-5, 2e6], np.float32)}
    expected = ",".join(
        f'{{"big":{nested(texts[i * 20 : (i + 1) * 20], (4, 5))},"scalar":{s}}}'
        for i, s in enumerate(["0.5", "1e-05", "2e+06"])
    )
    assert format_predict_response(out, "row") == ('{"predictions":[' + expected + "]}").encode()
    assert (
        format_predict_response({"big": big}, "row")
        == ('{"predictions":' + nested(texts, (3, 4, 5)) + "}").encode()
    )
    empty = {"e": np.zeros((3, 0, 2), np.float32), "n": np.array([1, 2, 3])}
    assert format_predict_response(empty, "row") == (
        b'{"predictions":[{"e":[],"n":1},{"e":[],"n":2},{"e":[],"n":3}]}'
    )
    assert format_predict_response({"e": np.zeros((2, 0), np.float64)}, "columnar") == (
        b'{"outputs":[[],[]]}'
    )
    half = np.array([[0.1, 2.0, 65504.0]] * 10, np.float16)
    assert format_predict_response({"h": half}, "columnar") == (
        b'{"outputs":[' + b",".join([b"[0.0999755859,2.0,65504.0]"] * 10) + b"]}"
    )


def test_non_finite_outputs_are_bare_tokens() -> None:
    y = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    assert format_predict_response({"y": y}, "row") == (
        b'{"predictions":[NaN,Infinity,-Infinity,1.5]}'
    )
    both = {"a": y[:2], "b": np.array(["x", "y"], dtype=object)}
    assert format_predict_response(both, "row") == (
        b'{"predictions":[{"a":NaN,"b":"x"},{"a":Infinity,"b":"y"}]}'
    )
    assert format_predict_response({"d": np.array([np.nan])}, "columnar") == b'{"outputs":[NaN]}'
    several = {
        "null": np.array([[np.nan, 1.0]], np.float32),
        "nullity": np.array([-np.inf], np.float64),
        "n": np.array([7], np.int64),
    }
    assert format_predict_response(several, "row") == (
        b'{"predictions":[{"n":7,"null":[NaN,1.0],"nullity":-Infinity}]}'
    )
    top = np.finfo(np.float64).max
    assert format_predict_response({"d": np.array([top, -np.inf])}, "columnar") == (
        b'{"outputs":[1.7976931348623157e+308,-Infinity]}'
    )
    assert format_predict_response({"d": np.array(np.inf, np.float32)}, "columnar") == (
        b'{"outputs":Infinity}'
    )
    big = np.random.default_rng(2).random((300, 300)).astype(np.float32)
    big[::7, ::3] = np.nan
    parsed = json.loads(format_predict_response({"y": big}, "columnar"))  # json reads NaN
    np.testing.assert_array_equal(np.array(parsed["outputs"], np.float32), big)


def test_integer_bool_and_half_outputs() -> None:
    out = {"y": np.array([2**62, -1], np.int64)}
    assert format_predict_response(out, "columnar") == b'{"outputs":[4611686018427387904,-1]}'
    out = {"y": np.array([True, False])}
    assert format_predict_response(out, "columnar") == b'{"outputs":[true,false]}'
    out = {"y": np.array([0.1, 2], np.float16)}
    assert format_predict_response(out, "columnar") == b'{"outputs":[0.0999755859,2.0]}'
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.uint32, np.uint64):
        out = {"y": np.array([1, 2], dtype)}
        assert format_predict_response(out, "columnar") == b'{"outputs":[1,2]}'


def test_string_outputs() -> None:
    out = {
        "text": np.array([b"caf\xc3\xa9", b"x"], dtype=object),
        "raw_bytes": np.array([b"\x00\xff", b""], dtype=object),
    }
    assert json.loads(format_predict_response(out, "row")) == {
        "predictions": [
            {"raw_bytes": {"b64": "AP8="}, "text": "café"},
            {"raw_bytes": {"b64": ""}, "text": "x"},
        ]
    }


def test_response_errors() -> None:
    with pytest.raises(InvalidArgument) as info:
        format_predict_response({}, "row")
    assert info.value.message == "Cannot convert empty tensor map to JSON"
    with pytest.raises(InvalidArgument) as info:
        format_predict_response({"y": np.array(1.0, np.float32)}, "row")
    assert info.value.message == "Tensor name: y has no shape information "
    with pytest.raises(InvalidArgument) as info:
        format_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, "row")
    assert info.value.message == "Tensor name: b has inconsistent batch size: 3 expecting: 2"
    with pytest.raises(InvalidArgument) as info:
        format_predict_response({"y": np.zeros(2, np.uint16)}, "columnar")
    assert info.value.message == "Failed to write JSON value for tensor type: uint16"


def test_classify_and_regress_responses() -> None:
    result = classification_pb2.ClassificationResult()
    first = result.classifications.add()
    first.classes.add(label="a", score=0.1)
    first.classes.add(label="b", score=3.0)
    result.classifications.add().classes.add(score=2.0)
    assert format_classify_response(result) == (b'{"results":[[["a",0.1],["b",3.0]],[["",2.0]]]}')
    regression = regression_pb2.RegressionResult()
    regression.regressions.add(value=3.0)
    regression.regressions.add(value=float(np.float32(np.pi)))
    assert format_regress_response(regression) == b'{"results":[3.0,3.14159274]}'
    regression.regressions.add(value=math.nan)
    assert format_regress_response(regression) == b'{"results":[3.0,3.14159274,NaN]}'
    with pytest.raises(InvalidArgument, match="Cannot convert empty ClassificationResults"):
        format_classify_response(classification_pb2.ClassificationResult())
    with pytest.raises(InvalidArgument, match="Cannot convert empty RegressionResults"):
        format_regress_response(regression_pb2.RegressionResult())


# -------------------------------------------------------------------------- examples


def feature_values(feature: Any) -> tuple[str | None, list[Any]]:
    kind = feature.WhichOneof("kind")
    return kind, list(getattr(feature, kind).value) if kind else []


def test_examples_request() -> None:
    name, request_input = parse_examples_request(
        {
            "signature_name": "regress_x_to_y",
            "examples": [
                {"x": 2.0, "n": 3, "s": "abc", "b": {"b64": "AP8="}, "t": True},
                {"x": [1.5, 2.5], "n": [1, -2], "s": ["a", "b"], "e": []},
            ],
        }
    )
    assert name == "regress_x_to_y"
    assert request_input.WhichOneof("kind") == "example_list"
    first, second = request_input.example_list.examples
    f = first.features.feature
    assert feature_values(f["x"]) == ("float_list", [2.0])
    assert feature_values(f["n"]) == ("int64_list", [3])
    assert feature_values(f["s"]) == ("bytes_list", [b"abc"])
    assert feature_values(f["b"]) == ("bytes_list", [b"\x00\xff"])
    assert feature_values(f["t"]) == ("int64_list", [1])
    g = second.features.feature
    assert feature_values(g["x"]) == ("float_list", [1.5, 2.5])
    assert feature_values(g["n"]) == ("int64_list", [1, -2])
    assert feature_values(g["s"]) == ("bytes_list", [b"a", b"b"])
    assert feature_values(g["e"]) == (None, [])


def test_examples_with_context() -> None:
    name, request_input = parse_examples_request(
        {"context": {"c": 1}, "examples": [{"x": 2.0}, {"x": 3.0}]}
    )
    assert name == ""
    with_context = request_input.example_list_with_context
    assert feature_values(with_context.context.features.feature["c"]) == ("int64_list", [1])
    assert [feature_values(e.features.feature["x"]) for e in with_context.examples] == [
        ("float_list", [2.0]),
        ("float_list", [3.0]),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"instances": []},
            "JSON Value: {\n    \"instances\": []\n} When method is classify, key 'examples' "
            "is expected and was not found",
        ),
        (
            {"examples": {}},
            "JSON Value: {\n    \"examples\": {}\n} Expecting 'examples' value to be an list/array",
        ),
        (
            {"examples": []},
            "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array",
        ),
        ({"examples": [1]}, "Example must be JSON object but got JSON Number"),
        ({"context": [], "examples": [{}]}, "Example must be JSON object but got JSON Array"),
        (
            {"examples": [{"x": None}]},
            "Feature: x has element with unexpected JSON type: Null",
        ),
        (
            {"examples": [{"x": [[1]]}]},
            "Feature: x has element with unexpected JSON type: Array",
        ),
        (
            {"examples": [{"x": {"a": 1}}]},
            "Feature: x has element with unexpected JSON type: Object",
        ),
        (
            {"examples": [{"x": [1, 2.5]}]},
            "Unexpected element type in feature: x expecting type: int64",
        ),
        (
            {"examples": [{"x": [2.5, "a"]}]},
            "Unexpected element type in feature: x expecting type: float",
        ),
        (
            {"examples": [{"x": 2**63}]},
            "Feature: x has uint64_t element. Only int64_t is supported.",
        ),
        (
            {"examples": [{"\udc8d": 2.0}]},  # the raw byte 0x8d, kept by loads()
            "Feature: \\x8d has a name that is not valid UTF-8 (invalid encoding in string)",
        ),
        (
            {"examples": [{"\ud800x": [1]}]},  # a lone surrogate
            "Feature: \\xed\\xa0\\x80x has a name that is not valid UTF-8 (invalid encoding in "
            "string)",
        ),
        (
            {"examples": [{"\udc8d": None}]},  # the value's error comes first, as in TF Serving
            "Feature: \udc8d has element with unexpected JSON type: Null",
        ),
    ],
)
def test_examples_errors(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_examples_request(body)
    assert info.value.message == message


# -------------------------------------------------------------------------- TensorProto


def _bf16() -> Any:
    return tf.bfloat16.as_numpy_dtype


ROUND_TRIP = [
    np.array([[1.5, -2.25], [0.1, 3e38]], np.float32),
    np.array([0.1, -1e300, np.inf], np.float64),
    np.array([[1, -2, 2**31 - 1]], np.int32),
    np.array([-128, 127], np.int8),
    np.array([-(2**15), 2**15 - 1], np.int16),
    np.array([0, 255], np.uint8),
    np.array([0, 65535], np.uint16),
    np.array([2**63 - 1, -(2**63), 0], np.int64),
    np.array([2**32 - 1], np.uint32),
    np.array([2**64 - 1], np.uint64),
    np.array([True, False, True]),
    np.array([1.5, -0.0, 65504], np.float16),
    np.array([1 + 2j, -3.5j], np.complex64),
    np.array([1 + 2j], np.complex128),
    np.array([b"a", b"\x00\xff", b""], dtype=object),
    np.array([1.0, -2.5, 3e38], tf.bfloat16.as_numpy_dtype),
    np.array(3.5, np.float32),
    np.zeros((2, 0, 3), np.float32),
]


@pytest.mark.parametrize("array", ROUND_TRIP, ids=lambda a: f"{a.dtype}{list(a.shape)}")
@pytest.mark.parametrize("content", [False, True], ids=["typed", "tensor_content"])
def test_tensor_proto_round_trip(array: np.ndarray, content: bool) -> None:
    proto = ndarray_to_tensor_proto(array, use_tensor_content=content)
    assert list(d.size for d in proto.tensor_shape.dim) == list(array.shape)
    if array.size and array.dtype != object:
        assert bool(proto.tensor_content) == content
    back = tensor_proto_to_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    # TensorFlow reads our protos the same way
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)


@pytest.mark.parametrize("size", [1, 31, 32, 33, 512])
@pytest.mark.parametrize(
    "np_dtype", [np.float32, np.float64, np.int32, np.int64, np.uint32, np.uint64, np.bool_]
)
def test_typed_fields_of_every_length_read_as_tensorflow_reads_them(
    size: int, np_dtype: type
) -> None:
    # Short fields are read through a list, long ones directly: the same values either way.
    array: np.ndarray = (np.arange(size) % 7).astype(np_dtype).reshape(1, size)
    proto = ndarray_to_tensor_proto(array)
    parsed = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    back = tensor_proto_to_ndarray(parsed)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(back, tf.make_ndarray(parsed))


def test_a_tensor_proto_is_filled_in_place_into_a_response() -> None:
    array = np.array([[0.25, -1.0, 3e38]], np.float32)
    response = predict_pb2.PredictResponse()
    filled = ndarray_to_tensor_proto(array, into=response.outputs["y"])
    assert filled is response.outputs["y"]
    assert filled == ndarray_to_tensor_proto(array)
    np.testing.assert_array_equal(tensor_proto_to_ndarray(response.outputs["y"]), array)


def test_typed_fields_are_tf_servings() -> None:
    proto = ndarray_to_tensor_proto(np.array([[3.0], [3.5]], np.float32))
    assert proto.dtype == types_pb2.DT_FLOAT
    assert list(proto.float_val) == [3.0, 3.5]
    assert ndarray_to_tensor_proto(np.array([1], np.int8)).int_val == [1]
    assert list(ndarray_to_tensor_proto(np.array([0.5], np.float16)).half_val) == [0x3800]
    assert list(ndarray_to_tensor_proto(np.array(["é"])).string_val) == ["é".encode()]
    bf16 = np.array([1.0], _bf16())
    proto = ndarray_to_tensor_proto(bf16)
    assert proto.dtype == types_pb2.DT_BFLOAT16 and list(proto.half_val) == [0x3F80]
    np.testing.assert_array_equal(tensor_proto_to_ndarray(proto), bf16)


def test_reads_tf_make_tensor_proto() -> None:
    for value in ([[1.0, 2.0]], [1, 2, 3], [b"x", b"yz"], [True]):
        proto = tf.make_tensor_proto(value)
        np.testing.assert_array_equal(tensor_proto_to_ndarray(proto), tf.make_ndarray(proto))


def test_value_broadcast_rules() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[7.0])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(tensor_proto_to_ndarray(proto), [[7.0, 7.0], [7.0, 7.0]])
    proto.ClearField("float_val")
    proto.float_val.extend([1.0, 2.0])  # fewer values: the last one repeats
    np.testing.assert_array_equal(tensor_proto_to_ndarray(proto), [[1.0, 2.0], [2.0, 2.0]])
    proto.ClearField("float_val")  # none: zeros
    np.testing.assert_array_equal(tensor_proto_to_ndarray(proto), np.zeros((2, 2)))
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"s"])
    strings.tensor_shape.dim.add(size=3)
    assert tensor_proto_to_ndarray(strings).tolist() == [b"s"] * 3
    assert tf.make_ndarray(strings).tolist() == [b"s"] * 3


def test_tensor_proto_errors() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0, 3.0])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidArgument) as info:
        tensor_proto_to_ndarray(proto, name="x")
    assert info.value.message == "tensor parsing error: x"
    with pytest.raises(InvalidArgument, match="3 values do not fit the shape"):
        tensor_proto_to_ndarray(proto)
    content = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 12)
    content.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidArgument, match="tensor_content holds 12 bytes"):
        tensor_proto_to_ndarray(content)
    negative = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    negative.tensor_shape.dim.add(size=-1)
    with pytest.raises(InvalidArgument, match="invalid shape"):
        tensor_proto_to_ndarray(negative)
    for fill in ("none", "content"):
        # No elements (a zero dimension), but no array can have the other dimensions.
        huge = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
        for size in (2**62, 0, 2**62):
            huge.tensor_shape.dim.add(size=size)
        if fill == "content":
            huge.tensor_content = b""
        with pytest.raises(InvalidArgument, match="is too large"):
            tensor_proto_to_ndarray(huge)
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (2**40, 0, 2**20):
        empty.tensor_shape.dim.add(size=size)
    assert tensor_proto_to_ndarray(empty).shape == (2**40, 0, 2**20)
    unknown = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(InvalidArgument, match="unknown rank"):
        tensor_proto_to_ndarray(unknown)
    for dtype in (types_pb2.DT_INVALID, types_pb2.DT_RESOURCE, types_pb2.DT_FLOAT_REF):
        with pytest.raises(InvalidArgument):
            tensor_proto_to_ndarray(tensor_pb2.TensorProto(dtype=dtype))
    with pytest.raises(InvalidArgument, match="Unsupported numpy dtype"):
        ndarray_to_tensor_proto(np.array(["2020-01-01"], dtype="datetime64[D]"))


def test_dtype_helpers() -> None:
    assert codec.dtype_name(types_pb2.DT_FLOAT) == "float"
    assert codec.dtype_name(types_pb2.DT_FLOAT_REF) == "float_ref"
    assert codec.dtype_name(types_pb2.DT_INVALID) == "INVALID"
    assert codec.numpy_dtype(types_pb2.DT_FLOAT_REF) == np.float32
    assert codec.datatype_for_numpy(np.dtype(">f4")) == types_pb2.DT_FLOAT
    assert codec.datatype_for_numpy(np.dtype("S3")) == types_pb2.DT_STRING


def _string_content(values: list[bytes]) -> bytes:
    """TensorFlow's encoding of a string tensor's ``tensor_content``: every length as a
    varint, then the strings."""
    lengths = b""
    for value in values:
        n = len(value)
        while n >= 0x80:
            lengths += bytes([n & 0x7F | 0x80])
            n >>= 7
        lengths += bytes([n])
    return lengths + b"".join(values)


@pytest.mark.parametrize(
    "values",
    [[b"abc", b"de"], [b"", b"x" * 300, "é".encode(), b"\x00\xff"], [b"a"] * 6, []],
)
def test_string_tensor_content_is_decoded_as_tensorflow_decodes_it(values: list[bytes]) -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    proto.tensor_shape.dim.add(size=len(values))
    proto.tensor_content = _string_content(values)
    got = tensor_proto_to_ndarray(proto, name="s")
    want = tf.raw_ops.ParseTensor(serialized=proto.SerializeToString(), out_type=tf.string)
    assert got.dtype == object
    assert got.tolist() == want.numpy().tolist() == values


@pytest.mark.parametrize(
    "content",
    [
        b"\x03\x02abcd",  # one byte short
        b"\x03\x02abcdef",  # one byte over
        b"\x80",  # a length cut short
        b"\x03",  # one length for two strings
        b"\xff\xff\xff\xff\xff\x01ab",  # a length past 32 bits
    ],
)
def test_malformed_string_tensor_content_is_refused_as_tensorflow_refuses_it(
    content: bytes,
) -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_content=content)
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidArgument) as info:
        tensor_proto_to_ndarray(proto, name="s")
    assert info.value.message == "tensor parsing error: s"
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.raw_ops.ParseTensor(serialized=proto.SerializeToString(), out_type=tf.string)


def test_tensors_of_more_dimensions_than_numpy_holds_are_refused() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    for _ in range(64):
        proto.tensor_shape.dim.add(size=1)
    assert tensor_proto_to_ndarray(proto).shape == (1,) * 64
    proto.tensor_shape.dim.add(size=1)
    with pytest.raises(InvalidArgument) as info:
        tensor_proto_to_ndarray(proto, name="x")
    assert info.value.message == "tensor parsing error: x"
    with pytest.raises(InvalidArgument, match="65 dimensions"):
        tensor_proto_to_ndarray(proto)


def test_tensors_of_no_elements_ignore_their_content_as_tensorflow_does() -> None:
    for dtype, content in ((types_pb2.DT_STRING, b"\x01a"), (types_pb2.DT_FLOAT, b"\x00" * 4)):
        proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content)
        proto.tensor_shape.dim.add(size=0)
        proto.tensor_shape.dim.add(size=2)
        got = tensor_proto_to_ndarray(proto, name="x")
        want = tf.io.parse_tensor(proto.SerializeToString(), tf.dtypes.as_dtype(dtype))
        assert got.shape == tuple(want.shape) == (0, 2)
