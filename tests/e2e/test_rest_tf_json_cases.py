"""TF Serving's own JSON conversion cases (``tensorflow_serving/util/json_tensor_test.cc``),
sent end to end to identity models served by pyserving.

TF Serving's tests call ``FillPredictRequestFromJson`` and compare the parsed TensorProtos,
or call ``MakeJsonFromTensors`` on given TensorProtos and compare the JSON. Here each request
goes over HTTP to a signature that returns its inputs unchanged (or, for the output cases, a
signature producing the tensor the case writes), so the answer shows both halves: the tensor
TF Serving would have parsed, written as TF Serving writes it. Answers are compared byte for
byte (pyserving writes no whitespace; TF Serving's pretty-printer adds some, which JSON
ignores). Errors are compared in full: TF Serving's cases check a fragment
(``HasSubstr``), given in each case's comment.

The cases that only use the codec (classify/regress request protos, result and status JSON)
are in ``tests/test_tf_json_cases.py``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

MODEL = "json_cases"


def _export(path: pathlib.Path) -> None:
    """One SavedModel whose signatures stand in for the TensorInfo maps and TensorProto maps
    of TF Serving's cases."""
    import tensorflow as tf

    def spec(dtype: Any, name: str) -> Any:
        return tf.TensorSpec(shape=None, dtype=dtype, name=name)

    def identity(**inputs: Any) -> Any:
        names = sorted(inputs)

        @tf.function(input_signature=[spec(inputs[n], n) for n in names])
        def run(*args: Any) -> dict[str, Any]:
            return {n: tf.identity(a) for n, a in zip(names, args, strict=True)}

        return run

    def renamed(dtype: Any, output: str) -> Any:
        @tf.function(input_signature=[spec(dtype, "default")])
        def run(x: Any) -> dict[str, Any]:
            return {output: tf.identity(x)}

        return run

    @tf.function(input_signature=[spec(tf.float32, "default")])
    def complex_output(x: Any) -> dict[str, Any]:
        return {"tensor": tf.cast(x, tf.complex64)}

    @tf.function(input_signature=[spec(tf.int32, "default")])
    def scalar_output(x: Any) -> dict[str, Any]:
        return {"tensor": tf.reduce_sum(x)}

    @tf.function(input_signature=[spec(tf.int32, "default")])
    def zero_batch(x: Any) -> dict[str, Any]:
        return {"int_tensor": tf.zeros([0, 2], tf.int32) + tf.reduce_sum(x) * 0}

    @tf.function(input_signature=[spec(tf.int32, "default")])
    def zero_batches(x: Any) -> dict[str, Any]:
        return {
            "str_tensor": tf.fill([0, 1, 2], tf.as_string(tf.reduce_sum(x))),
            "float_tensor": tf.zeros([0, 3, 4], tf.float32),
        }

    @tf.function(input_signature=[spec(tf.int32, "default")])
    def zero_and_one_batch(x: Any) -> dict[str, Any]:
        return {
            "int_tensor": tf.zeros([0, 2], tf.int32) + tf.reduce_sum(x) * 0,
            "str_tensor": tf.constant([["foo", "bar"]]),
        }

    @tf.function(input_signature=[spec(tf.int32, "default")])
    def inconsistent_batch(x: Any) -> dict[str, Any]:
        return {
            "int_tensor": tf.reshape(tf.range(1, 7), [2, 3]) + tf.reduce_sum(x) * 0,
            "str_tensor": tf.constant([["foo", "bar", "baz"]]),
        }

    module = tf.Module()
    signatures = {
        "serving_default": identity(default=tf.int32),
        "predict_images": identity(default=tf.int32),
        "float": identity(default=tf.float32),
        "double": identity(default=tf.float64),
        "string": identity(default=tf.string),
        "int_tensor": identity(int_tensor=tf.int32),
        "four": identity(
            int_tensor=tf.int32,
            str_tensor=tf.string,
            float_tensor=tf.float32,
            dbl_tensor=tf.float64,
        ),
        "three": identity(int_tensor=tf.int32, str_tensor=tf.string, bin_tensor=tf.string),
        "two": identity(int_tensor=tf.int32, str_tensor=tf.string),
        "str_tensor": identity(str_tensor=tf.string),
        "out_int": renamed(tf.int32, "int_tensor"),
        "out_bytes": renamed(tf.string, "str_tensor_bytes"),
        "out_float": renamed(tf.float32, "float_tensor"),
        "out_five": identity(
            int_tensor=tf.int32,
            str_tensor=tf.string,
            float_tensor=tf.float32,
            double_scalar_tensor=tf.float64,
            str_tensor_bytes=tf.string,
        ),
        "out_complex": complex_output,
        "out_scalar": scalar_output,
        "zero_batch": zero_batch,
        "zero_batches": zero_batches,
        "zero_and_one_batch": zero_and_one_batch,
        "inconsistent_batch": inconsistent_batch,
    }
    tf.saved_model.save(module, str(path), signatures=signatures)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tf_json_cases")
    _export(tmp / MODEL / "1")
    srv = RunningServer(
        [f"--model_name={MODEL}", f"--model_base_path={tmp / MODEL}"], tmp / "server.log"
    )
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log(), srv.log()


def post(server: RunningServer, body: bytes | str, verb: str = "predict") -> tuple[int, bytes]:
    payload = body.encode() if isinstance(body, str) else body
    r = server.client.post(f"/v1/models/{MODEL}:{verb}", content=payload)
    return r.status_code, r.content


def error(message: str) -> bytes:
    """pyserving's error answer (TF Serving's ``{"error": message}``, without whitespace)."""
    return orjson.dumps({"error": message})


# The cases: (TF Serving's test name, request body, HTTP status, answer). Signatures named in
# the bodies: serving_default / predict_images (DT_INT32 "default"), float, double, string,
# int_tensor, four / three / two / str_tensor (named inputs), out_* (the tensors of the
# MakeJsonFromTensors cases).
SIGNATURE_IS_NOT_A_STRING = (
    "JSON Value: {\n"
    '    "signature_name": 5,\n'
    '    "instances": [[1, 2], [3, 4], [5, 6, 7]]\n'
    "} not formatted correctly. 'signature_name' key must be a string value."
)
ELEMENT = "Failed to process element: {} of 'instances' list. Error: INVALID_ARGUMENT: {}"
KEYED = "Failed to process element: {} key: {} of 'instances' list. Error: INVALID_ARGUMENT: {}"
REQUEST_CASES = [
    (
        "SingleUnnamedTensor",
        '{"instances": [[1,2],[3,4],[5,6]]}',
        200,
        b'{"predictions":[[1,2],[3,4],[5,6]]}',
    ),
    (
        "DeeplyNestedWellFormed",
        b'{"instances":[1], "nested":' + b"[" * 500_000 + b"]" * 500_000 + b"}",
        200,
        b'{"predictions":[1]}',
    ),
    (
        "DeeplyNestedMalformed",  # HasSubstr("key must be a string value")
        b'{"signature_name":' + b"[" * 500_000 + b"]" * 500_000 + b"}",
        400,
        error(
            # The quoted value stops once 256 bytes are written: 24 for the key, then "[".
            'JSON Value: {\n    "signature_name": '
            + "[" * 232
            + " not formatted correctly. 'signature_name' key must be a string value."
        ),
    ),
    (
        "MixedInputForFloatTensor",
        '{"signature_name": "float", "instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}',
        200,
        b'{"predictions":[1.0,2.0,3.0,4.0,5.003,0.007,0.0]}',
    ),
    (
        "MixedInputForDoubleTensor",
        '{"signature_name": "double", "instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}',
        200,
        b'{"predictions":[1.0,2.0,3.0,4.0,0.662,0.0,0.0]}',
    ),
    (
        "FloatTensorWithPrecisionLoss",  # float_val: 1435774380 (1435774336 as float32)
        '{"signature_name": "float", "instances": [1435774380]}',
        200,
        b'{"predictions":[1.43577434e+09]}',
    ),
    (
        "FloatTensorWithPrecisionLoss (decimal point)",
        '{"signature_name": "float", "instances": [1435774380.0]}',
        200,
        b'{"predictions":[1.43577434e+09]}',
    ),
    (
        "FloatTensorThatExceedsMaxReturnsInf",  # absl::Substitute of DBL_MAX
        '{"signature_name": "float", "instances": [1.79769e+308]}',
        200,
        b'{"predictions":[Infinity]}',
    ),
    (
        "FloatTensorThatExceedsMaxReturnsInf (minimum)",
        '{"signature_name": "float", "instances": [-1.79769e+308]}',
        200,
        b'{"predictions":[-Infinity]}',
    ),
    (
        "FloatTensorThatExceedsMinReturnsZero",  # absl::Substitute of DBL_MIN
        '{"signature_name": "float", "instances": [2.22507e-308]}',
        200,
        b'{"predictions":[0.0]}',
    ),
    (
        "FloatTensorThatExceedsMinReturnsZero (negative)",
        '{"signature_name": "float", "instances": [-2.22507e-308]}',
        200,
        b'{"predictions":[-0.0]}',
    ),
    (
        "SingleUnnamedTensorWithSignature",
        '{"signature_name": "predict_images", "instances": [[1,2]]}',
        200,
        b'{"predictions":[[1,2]]}',
    ),
    (
        "TensorFromNonNullTerminatedBuffer",  # here the X is sent: what follows is not read
        '{"instances": [[1,2],[3,4],[5,6]]}X',
        200,
        b'{"predictions":[[1,2],[3,4],[5,6]]}',
    ),
    (
        "SingleUnnamedTensorBase64Scalars",
        '{"signature_name": "string", "instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}',
        200,
        b'{"predictions":["hello","world"]}',
    ),
    (
        "SingleUnnamedTensorBase64Lists",
        '{"signature_name": "string", "instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}',
        200,
        b'{"predictions":[["hello"],["world"]]}',
    ),
    (
        "SingleNamedTensorBase64",
        '{"signature_name": "string", '
        '"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}',
        200,
        b'{"predictions":[[["hello"],["world"]]]}',
    ),
    (
        "MultipleNamedTensor",
        """{"signature_name": "four", "instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
             "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
            {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
             "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}""",
        200,
        b'{"predictions":['
        b'{"dbl_tensor":[NaN],"float_tensor":[1.0,NaN],"int_tensor":[[1,2],[3,4],[5,6]],'
        b'"str_tensor":["foo","bar"]},'
        b'{"dbl_tensor":[2.0],"float_tensor":[2.0,Infinity],"int_tensor":[[7,8],[9,0],[1,2]],'
        b'"str_tensor":["baz","bat"]}]}',
    ),
    (
        "SingleUnnamedTensorColumnarFormat",
        '{"signature_name": "int_tensor", "inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
        200,
        b'{"outputs":[[[1,2],[3,4],[5,6]]]}',
    ),
    (
        "SingleUnnamedTensorColumnarFormat (unnamed)",
        '{"signature_name": "int_tensor", "inputs": [[[1,2],[3,4],[5,6]]]}',
        200,
        b'{"outputs":[[[1,2],[3,4],[5,6]]]}',
    ),
    (
        "MultipleNamedTensorColumnarFormat",
        '{"signature_name": "three", "inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], '
        '"str_tensor": ["foo", "bar"], "bin_tensor": { "b64" : "aGVsbG8=" }}}',
        200,
        b'{"outputs":{"bin_tensor":"hello","int_tensor":[[[1,2],[3,4],[5,6]]],'
        b'"str_tensor":["foo","bar"]}}',
    ),
    (
        "SingleUnnamedTensorErrors: empty",  # HasSubstr("document is empty")
        "",
        400,
        error("JSON Parse error: The document is empty"),
    ),
    (
        "SingleUnnamedTensorErrors: signature_name",  # HasSubstr("must be a string value")
        '{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}',
        400,
        error(SIGNATURE_IS_NOT_A_STRING),
    ),
    (
        "SingleUnnamedTensorErrors: both keys",  # HasSubstr("Not formatted correctly")
        '{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}',
        400,
        error(
            "JSON Value: {\n"
            '    "instances": [[1, 2], [3, 4], [5, 6, 7]],\n'
            '    "inputs": [[1, 2], [3, 4], [5, 6, 7]]\n'
            "} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to "
            "exist "
        ),
    ),
    (
        "SingleUnnamedTensorErrors: size",  # HasSubstr("Expecting tensor size")
        '{"instances": [[1,2],[3,4],[5,6,7]]}',
        400,
        error(ELEMENT.format(2, "Expecting tensor size: 2 but got: 3")),
    ),
    (
        "SingleUnnamedTensorErrors: shape",  # HasSubstr("Expecting shape")
        '{"instances": [[1,2],[3,4],[[5,6]]]}',
        400,
        error(ELEMENT.format(2, "Expecting shape [2] but got: [1,2]")),
    ),
    (
        "SingleUnnamedTensorErrors: scalar then list",  # HasSubstr("Expecting shape")
        '{"instances": [1, [1]]}',
        400,
        error(ELEMENT.format(1, "Expecting shape [] but got: [1]")),
    ),
    (
        "SingleUnnamedTensorErrors: type",  # HasSubstr("not of expected type")
        '{"instances": [[1,2],["a", "b"]]}',
        400,
        error(ELEMENT.format(1, 'JSON Value: "a" Type: String is not of expected type: int32')),
    ),
    (
        "MultipleNamedTensorErrors: shape",  # HasSubstr("Expecting shape")
        """{"signature_name": "two", "instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
            {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
        400,
        error(KEYED.format(1, "int_tensor", "Expecting shape [3,2] but got: [1,3,2]")),
    ),
    (
        "MultipleNamedTensorErrors: size",  # HasSubstr("Expecting tensor size")
        """{"signature_name": "two", "instances": [
            {"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},
            {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}""",
        400,
        error(KEYED.format(1, "int_tensor", "Expecting tensor size: 8 but got: 6")),
    ),
    (
        "MultipleNamedTensorErrors: object then list",  # HasSubstr("Expecting object but ...")
        """{"signature_name": "two", "instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
            [1, 20, 30],
            {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
        400,
        error("Expecting object but got list at item 1 of input list"),
    ),
    (
        "MultipleNamedTensorErrors: list then object",  # HasSubstr("Expecting value/list ...")
        """{"signature_name": "str_tensor", "instances": [
            ["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}""",
        400,
        error("Expecting value/list but got object at item 1 of input list"),
    ),
]

INT_TENSOR = "[[[1,2],[3,4],[5,6]],[[7,8],[9,0],[1,2]]]"
BYTES = '[[{"b64":"aGVsbG8="},{"b64":"d29ybGQ="}],[{"b64":"dGY="},{"b64":"c2VydmluZw=="}]]'
RESPONSE_CASES = [
    (
        "FromJsonSingleTensor",
        f'{{"signature_name": "out_int", "instances": {INT_TENSOR}}}',
        200,
        f'{{"predictions":{INT_TENSOR}}}'.encode(),
    ),
    (
        "FromJsonSingleTensor (columnar)",
        f'{{"signature_name": "out_int", "inputs": {INT_TENSOR}}}',
        200,
        f'{{"outputs":{INT_TENSOR}}}'.encode(),
    ),
    (
        "FromJsonSingleScalarTensor",
        '{"signature_name": "out_int", "instances": [1, 2, 3, 4, 5]}',
        200,
        b'{"predictions":[1,2,3,4,5]}',
    ),
    (
        "FromJsonSingleScalarTensor (columnar)",
        '{"signature_name": "out_int", "inputs": [1, 2, 3, 4, 5]}',
        200,
        b'{"outputs":[1,2,3,4,5]}',
    ),
    (
        "FromJsonSingleBytesTensor",
        '{"signature_name": "out_bytes", "instances": [["hello", "world"], ["tf", "serving"]]}',
        200,
        f'{{"predictions":{BYTES}}}'.encode(),
    ),
    (
        "FromJsonSingleFloatTensorSixDigitPrecision",
        '{"signature_name": "out_float", '
        '"instances": [[9000000, 999999, 0.50000], [0.0003, 0.00003, 555557.5]]}',
        200,
        b'{"predictions":[[9e+06,999999.0,0.5],[0.0003,3e-05,555557.5]]}',
    ),
    (
        "FromJsonSingleFloatTensorNonFinite",
        '{"signature_name": "out_float", "instances": [[NaN, Infinity], [3, -Infinity]]}',
        200,
        b'{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}',
    ),
    (
        "FromJsonSingleTensorErrors: complex64",  # HasSubstr("tensor type: complex64")
        '{"signature_name": "out_complex", "instances": [1.0, 2.0]}',
        400,
        error("Failed to write JSON value for tensor type: complex64"),
    ),
    (
        "FromJsonSingleTensorErrors: no shape",  # HasSubstr("no shape information")
        '{"signature_name": "out_scalar", "instances": [1]}',
        400,
        error("Tensor name: tensor has no shape information "),
    ),
    (
        "FromJsonMultipleNamedTensors",
        """{"signature_name": "out_five", "instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
             "float_tensor": [1.0], "double_scalar_tensor": 8.0,
             "str_tensor_bytes": ["hello", "world"]},
            {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
             "float_tensor": [2.0], "double_scalar_tensor": 9.0,
             "str_tensor_bytes": ["tf", "serving"]}]}""",
        200,
        b'{"predictions":['
        b'{"double_scalar_tensor":8.0,"float_tensor":[1.0],"int_tensor":[[1,2],[3,4],[5,6]],'
        b'"str_tensor":["foo","bar"],"str_tensor_bytes":[{"b64":"aGVsbG8="},{"b64":"d29ybGQ="}]},'
        b'{"double_scalar_tensor":9.0,"float_tensor":[2.0],"int_tensor":[[7,8],[9,0],[1,2]],'
        b'"str_tensor":["baz","bat"],"str_tensor_bytes":[{"b64":"dGY="},{"b64":"c2VydmluZw=="}]}'
        b"]}",
    ),
    (
        "FromJsonMultipleNamedTensors (columnar)",
        """{"signature_name": "out_five", "inputs": {
            "int_tensor": [[[1,2],[3,4],[5,6]], [[7,8],[9,0],[1,2]]],
            "str_tensor": [["foo", "bar"], ["baz", "bat"]], "float_tensor": [[1.0], [2.0]],
            "double_scalar_tensor": [8.0, 9.0],
            "str_tensor_bytes": [["hello", "world"], ["tf", "serving"]]}}""",
        200,
        b'{"outputs":{"double_scalar_tensor":[8.0,9.0],"float_tensor":[[1.0],[2.0]],'
        b'"int_tensor":[[[1,2],[3,4],[5,6]],[[7,8],[9,0],[1,2]]],'
        b'"str_tensor":[["foo","bar"],["baz","bat"]],'
        b'"str_tensor_bytes":' + BYTES.encode() + b"}}",
    ),
    (
        "FromJsonMultipleNamedTensorsErrors",  # HasSubstr("inconsistent batch size")
        '{"signature_name": "inconsistent_batch", "instances": [1]}',
        400,
        error("Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"),
    ),
    (
        "FromJsonSingleZeroBatchTensor",
        '{"signature_name": "zero_batch", "instances": [1]}',
        200,
        b'{"predictions":[]}',
    ),
    (
        "FromJsonMultipleZeroBatchTensors",
        '{"signature_name": "zero_batches", "instances": [1]}',
        200,
        b'{"predictions":[]}',
    ),
    (
        "FromJsonMultipleZeroBatchTensorsErrors",  # HasSubstr("inconsistent batch size")
        '{"signature_name": "zero_and_one_batch", "instances": [1]}',
        400,
        error("Tensor name: str_tensor has inconsistent batch size: 1 expecting: 0"),
    ),
]

# ClassifyRegressRequestTest.JsonErrors, for :classify and for :regress (the other typed
# cases check the parsed request protos: tests/test_tf_json_cases.py).
EXAMPLE_ERRORS = [
    (
        '{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}',
        # HasSubstr("'signature_name' key must be a string")
        'JSON Value: {\n    "signature_name": ["hello"],\n    "examples": [{\n'
        '            "names": ["foo", "bar"]\n        }]\n} not formatted correctly. '
        "'signature_name' key must be a string value.",
    ),
    (
        '{"context": [ { "names": [ "foo", "bar" ] } ]}',
        "Example must be JSON object but got JSON Array",  # HasSubstr(the same)
    ),
    (
        '{"examples": { "names": [ "foo", "bar" ] }}',
        # HasSubstr("list/array")
        'JSON Value: {\n    "examples": {\n        "names": ["foo", "bar"]\n    }\n} '
        "Expecting 'examples' value to be an list/array",
    ),
    (
        '{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}',
        "Example must be JSON object but got JSON Array",  # HasSubstr(the same)
    ),
    (
        '{"examples": [ { "names": [ 10, null ] } ]}',
        "Feature: names has element with unexpected JSON type: Null",  # HasSubstr(the same)
    ),
    (
        '{"examples": [ { "names": [ 10, 10.0 ] } ]}',
        # HasSubstr("feature: names expecting type: int64")
        "Unexpected element type in feature: names expecting type: int64",
    ),
    (
        '{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
        "Feature: names has element with unexpected JSON type: Object",  # HasSubstr(the same)
    ),
    (
        '{"examples": [ { "names": [ [10], 20 ] } ]}',
        "Feature: names has element with unexpected JSON type: Array",  # HasSubstr(the same)
    ),
    (
        '{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}',
        # HasSubstr("Only int64_t is supported")
        "Feature: names has uint64_t element. Only int64_t is supported.",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "answer"),
    REQUEST_CASES + RESPONSE_CASES,
    ids=[case[0] for case in REQUEST_CASES + RESPONSE_CASES],
)
def test_predict_case(
    server: RunningServer, case: str, body: bytes | str, status: int, answer: bytes
) -> None:
    got_status, got = post(server, body)
    assert (got_status, got) == (status, answer), case


@pytest.mark.parametrize("verb", ["classify", "regress"])
@pytest.mark.parametrize(
    ("body", "message"), EXAMPLE_ERRORS, ids=[f"JsonErrors-{i}" for i in range(9)]
)
def test_classify_regress_json_errors(
    server: RunningServer, verb: str, body: str, message: str
) -> None:
    assert post(server, body, verb) == (400, error(message))
