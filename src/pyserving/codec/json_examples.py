"""Classify and regress JSON: ``examples`` (and ``context``) -> a ``tensorflow.serving.Input`` of
``tf.Example`` protos, and ``ClassificationResult`` / ``RegressionResult`` -> JSON."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from pyserving.codec.json_predict import (
    ORJSON_OPTIONS,
    as_double,
    b64decode,
    format_error,
    get_signature_name,
    is_b64,
)
from pyserving.codec.tf_json import float_texts, float_value, json_type, utf8_bytes
from pyserving.errors import InvalidArgument

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
    if value is None or kind is list or (kind is dict and not is_b64(value)):
        raise InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
        )
    if kind is bool:
        _check_kind(name, feature, "int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif kind is dict:
        _check_kind(name, feature, "bytes_list")
        feature.bytes_list.value.append(b64decode(value["b64"]))
    elif kind is str:
        _check_kind(name, feature, "bytes_list")
        feature.bytes_list.value.append(utf8_bytes(value))
    elif kind is float or (kind is int and not -(2**63) <= value < 2**64):
        # A double (integers beyond 64 bits are doubles to RapidJSON): GetFloat() rounds it,
        # past float32's range to infinity.
        _check_kind(name, feature, "float_list")
        feature.float_list.value.append(as_double(value))
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
        raise format_error(
            body, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = body["examples"]
    if not isinstance(examples, list):
        raise format_error(body, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(body, "'examples' value is an empty array")
    target = (
        request_input.example_list_with_context.examples
        if has_context
        else request_input.example_list.examples
    )
    for value in examples:
        _make_example(value, target.add())
    return signature_name, request_input


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
    return orjson.dumps({"results": float_value(values)}, option=ORJSON_OPTIONS)
