"""TF Serving's own JSON conversion cases (``tensorflow_serving/util/json_tensor_test.cc``)
whose result is a proto or a piece of JSON that no HTTP answer shows: the tf.Example protos
parsed from classify/regress bodies, the JSON of classification and regression results, and
error bodies. The predict cases run end to end in ``tests/e2e/test_rest_tf_json_cases.py``.

Each case reproduces TF Serving's input and its expected output (protos as text format,
JSON as the exact text pyserving writes: TF Serving's, without whitespace).
"""

from __future__ import annotations

import math

import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from pyserving.codec import (
    format_classify_response,
    format_predict_response,
    format_regress_response,
    loads,
    parse_examples_request,
)
from pyserving.errors import InvalidArgument
from pyserving.server.rest import error_response


def parsed(body: str) -> tuple[str, input_pb2.Input]:
    """What FillClassificationRequestFromJson / FillRegressionRequestFromJson fill in (both
    share one implementation, as in TF Serving)."""
    return parse_examples_request(loads(body))


def same(actual: input_pb2.Input, expected_text: str) -> bool:
    expected = text_format.Parse(expected_text, input_pb2.Input())
    return actual.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize("request_type", ["Classification", "Regression"])
def test_request_no_context(request_type: str) -> None:
    """ClassifyRegressRequestTest.RequestNoContext."""
    signature, request_input = parsed(
        """{
          "examples": [
            {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},
            {"names": [ "baz" ], "ratings": 6.0}
          ]
        }"""
    )
    assert signature == ""
    assert same(
        request_input,
        """
        example_list {
          examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings" value { float_list { value: 8.0 value: 9.0 } } }
            feature { key: "age" value { int64_list { value: 20 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
          } }
        }""",
    )


@pytest.mark.parametrize("request_type", ["Classification", "Regression"])
def test_request_with_context_and_signature(request_type: str) -> None:
    """ClassifyRegressRequestTest.RequestWithContextAndSignature."""
    signature, request_input = parsed(
        """{
          "signature_name": "custom_signture",
          "context": {"query": "pizza", "location": [ "sfo" ]},
          "examples": [
            {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20},
            {"names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0,
             "intboolmix": [ 1, true, false ]},
            {"names": "bar", "ratings": -Infinity}
          ]
        }"""
    )
    assert signature == "custom_signture"
    assert same(
        request_input,
        """
        example_list_with_context {
          context { features {
            feature { key: "query" value { bytes_list { value: "pizza" } } }
            feature { key: "location" value { bytes_list { value: "sfo" } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings"
                      value { float_list { value: 8.0 value: 9.0 value: NaN value: Infinity } } }
            feature { key: "age" value { int64_list { value: 20 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" value: "hello" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
            feature { key: "intboolmix" value { int64_list { value: 1 value: 1 value: 0 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "bar" } } }
            feature { key: "ratings" value { float_list { value: -Infinity } } }
          } }
        }""",
    )


def test_json_from_classification_result() -> None:
    """ClassifyRegressnResultTest.JsonFromClassificationResult."""
    result = text_format.Parse(
        """
        classifications {
          classes { label: "car" score: 0.2 }
          classes { label: "bike" score: 0.7 }
          classes { label: "bus" score: 0.1 }
        }
        classifications {
          classes { label: "car" score: 0.7 }
          classes { label: "bike" score: 0.1 }
          classes { label: "bus" score: 0.2 }
        }""",
        classification_pb2.ClassificationResult(),
    )
    assert format_classify_response(result) == (
        b'{"results":[[["car",0.2],["bike",0.7],["bus",0.1]],'
        b'[["car",0.7],["bike",0.1],["bus",0.2]]]}'
    )


def test_json_from_regression_result() -> None:
    """ClassifyRegressnResultTest.JsonFromRegressionResult and ...WithNonFinite."""
    result = regression_pb2.RegressionResult()
    for value in (0.2, 0.9, 1.0):
        result.regressions.add(value=value)
    assert format_regress_response(result) == b'{"results":[0.2,0.9,1.0]}'
    result = regression_pb2.RegressionResult()
    for value in (0.2, math.inf, 1.0, -math.inf, math.nan):
        result.regressions.add(value=value)
    assert format_regress_response(result) == b'{"results":[0.2,Infinity,1.0,-Infinity,NaN]}'


def test_json_from_result_errors() -> None:
    """ClassifyRegressnResultTest.JsonFromResultErrors (HasSubstr "empty ...Results")."""
    with pytest.raises(InvalidArgument) as info:
        format_classify_response(classification_pb2.ClassificationResult())
    assert info.value.message == "Cannot convert empty ClassificationResults to JSON"
    with pytest.raises(InvalidArgument) as info:
        format_regress_response(regression_pb2.RegressionResult())
    assert info.value.message == "Cannot convert empty RegressionResults to JSON"


def test_from_json_empty_tensor_map() -> None:
    """JsontensorTest.FromJsonSingleTensorErrors, first case (HasSubstr "empty tensor map"):
    no model answers without outputs, so only the codec can be asked."""
    with pytest.raises(InvalidArgument) as info:
        format_predict_response({}, "row")
    assert info.value.message == "Cannot convert empty tensor map to JSON"


@pytest.mark.parametrize(
    ("message", "body"),
    [
        ('Bad key: "key"', b'{"error":"Bad key: \\"key\\""}'),
        ("Bad key: 'key'", b'{"error":"Bad key: \'key\'"}'),
    ],
)
def test_make_json_from_status(message: str, body: bytes) -> None:
    """MakeJsonFromTensors.StatusError (StatusOK writes nothing: a success has no error
    body)."""
    response = error_response(InvalidArgument(message))
    assert (response.status, response.body) == (400, body)
