"""inference.py on real SavedModels: predict, classify, regress, multi-inference, metadata,
and the JSON round trip the REST front end makes through pyserving.codec."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from google.protobuf.wrappers_pb2 import Int64Value
from tensorflow_serving.apis import inference_pb2, input_pb2, model_pb2

from pyserving import codec, inference
from pyserving.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unimplemented,
)
from pyserving.platforms.tensorflow import SavedModelLoader, SavedModelServable

CLASSIFY = inference.CLASSIFY_METHOD_NAME
REGRESS = inference.REGRESS_METHOD_NAME


def _serve(path: pathlib.Path) -> Iterator[SavedModelServable]:
    loader = SavedModelLoader(str(path))
    loader.load()
    yield loader.servable()
    loader.unload()


@pytest.fixture(scope="module")
def tf1(testdata: pathlib.Path) -> Iterator[SavedModelServable]:
    yield from _serve(testdata / "saved_model_half_plus_two_cpu" / "00000123")


@pytest.fixture(scope="module")
def tf2(testdata: pathlib.Path) -> Iterator[SavedModelServable]:
    yield from _serve(testdata / "saved_model_half_plus_two_tf2_cpu" / "00000123")


def _export_custom(path: pathlib.Path) -> None:
    """A small TF1 export with signatures the testdata models lack."""
    info = tf.compat.v1.saved_model.utils.build_tensor_info
    build = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        doubled = tf.identity(x * 2.0, name="doubled")
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        batch = tf.shape(examples)[:1]
        ones = tf.concat([batch, [1]], 0)
        classes = tf.tile(tf.constant([["cat", "dog"]]), ones, name="classes")
        scores = tf.tile(tf.constant([[0.25, 0.75]]), ones, name="scores")
        wide = tf.tile(tf.constant([[1.0, 2.0]]), ones, name="wide")
        double_scores = tf.cast(scores, tf.float64, name="double_scores")
        signatures = {
            "custom": build({"x": info(x)}, {"y": info(doubled)}, "custom/method"),
            "classes_and_scores": build(
                {"inputs": info(examples)},
                {"classes": info(classes), "scores": info(scores)},
                CLASSIFY,
            ),
            "wide_regression": build({"inputs": info(examples)}, {"outputs": info(wide)}, REGRESS),
            # A regression as the default signature, for tasks that name no signature.
            "serving_default": build(
                {"inputs": info(examples)}, {"outputs": info(wide[:, :1])}, REGRESS
            ),
            "double_scores": build(
                {"inputs": info(examples)}, {"scores": info(double_scores)}, CLASSIFY
            ),
        }
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SavedModelServable]:
    path = tmp_path_factory.mktemp("custom") / "1"
    _export_custom(path)
    yield from _serve(path)


def examples(*xs: float, context: dict[str, float] | None = None) -> input_pb2.Input:
    body: dict[str, object] = {"examples": [{"x": x} if x is not None else {} for x in xs]}
    if context is not None:
        body["context"] = context
    _name, request_input = codec.parse_examples_request(body)
    return request_input


# -------------------------------------------------------------------------- predict


@pytest.mark.parametrize("model", ["tf1", "tf2"])
def test_predict_default_signature(model: str, request: pytest.FixtureRequest) -> None:
    servable = request.getfixturevalue(model)
    x = np.array([[2.0], [3.0], [4.0]], np.float32)
    name, outputs = inference.predict(servable, "", {"x": x})
    assert name == "serving_default"
    np.testing.assert_array_equal(outputs["y"], [[3.0], [3.5], [4.0]])


def test_predict_errors(tf1: SavedModelServable) -> None:
    x = np.array([1.0], np.float32)
    with pytest.raises(FailedPrecondition) as info:
        inference.predict(tf1, "nope", {"x": x})
    assert info.value.message == 'Serving signature key "nope" not found.'
    with pytest.raises(InvalidArgument) as info:
        inference.predict(tf1, "", {"x": x}, ["y", "z"])
    assert info.value.message == (
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}."
    )
    with pytest.raises(InvalidArgument, match="input size does not match signature"):
        inference.predict(tf1, "", {})
    _name, outputs = inference.predict(tf1, "serving_default", {"x": x}, ["y"])
    assert list(outputs) == ["y"]


def test_method_name_check(custom: SavedModelServable, tf2: SavedModelServable) -> None:
    x = np.array([1.0, 2.0], np.float32)
    _name, outputs = inference.predict(custom, "custom", {"x": x})
    np.testing.assert_array_equal(outputs["y"], [2.0, 4.0])
    with pytest.raises(Internal) as info:
        inference.predict(custom, "custom", {"x": x}, check_method_name=True)
    assert info.value.message == (
        "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
        "tensorflow/serving/classify, tensorflow/serving/regress}. Was: custom/method"
    )
    # TF2 exports label classify/regress signatures "predict": served unless checked
    result = inference.regress(tf2, "regress_x_to_y", examples(2.0))
    assert [r.value for r in result.regressions] == [3.0]
    with pytest.raises(InvalidArgument) as info:
        inference.regress(tf2, "regress_x_to_y", examples(2.0), check_method_name=True)
    assert info.value.message == (
        "Expected regression signature method_name to be tensorflow/serving/regress. "
        "Was: tensorflow/serving/predict"
    )
    with pytest.raises(InvalidArgument, match=r"to be tensorflow/serving/classify\. Was: "):
        inference.classify(tf2, "classify_x_to_y", examples(2.0), check_method_name=True)


def test_find_signature(tf1: SavedModelServable) -> None:
    assert inference.find_signature(tf1, "") is tf1.signature_defs["serving_default"]
    with pytest.raises(FailedPrecondition, match=r'^Serving signature key "x" not found\.$'):
        inference.find_signature(tf1, "x")
    with pytest.raises(inference.SignatureNotFound) as info:
        inference.find_signature(tf1, "x")
    assert info.value.signature_name == "x"  # what the REST API rewords its error from


# -------------------------------------------------------------------------- classify / regress


@pytest.mark.parametrize("model", ["tf1", "tf2"])
def test_classify_and_regress_known_answers(model: str, request: pytest.FixtureRequest) -> None:
    servable = request.getfixturevalue(model)
    classified = inference.classify(servable, "classify_x_to_y", examples(2.0, 4.0))
    assert [[(c.label, c.score) for c in cs.classes] for cs in classified.classifications] == [
        [("", 3.0)],
        [("", 4.0)],
    ]
    regressed = inference.regress(servable, "regress_x_to_y", examples(2.0))
    assert [r.value for r in regressed.regressions] == [3.0]
    regressed = inference.regress(servable, "regress_x_to_y2", examples(2.0))
    assert [r.value for r in regressed.regressions] == [4.0]


def test_context_is_merged_into_each_example(tf1: SavedModelServable) -> None:
    result = inference.regress(tf1, "regress_x_to_y", examples(None, 4.0, context={"x": 2.0}))
    assert [r.value for r in result.regressions] == [3.0, 4.0]  # the example's x wins


def test_classes_and_scores(custom: SavedModelServable) -> None:
    result = inference.classify(custom, "classes_and_scores", examples(1.0, 2.0))
    assert [[(c.label, c.score) for c in cs.classes] for cs in result.classifications] == [
        [("cat", 0.25), ("dog", 0.75)]
    ] * 2
    assert codec.format_classify_response(result) == (
        b'{"results":[[["cat",0.25],["dog",0.75]],[["cat",0.25],["dog",0.75]]]}'
    )


def test_classify_regress_errors(tf1: SavedModelServable, custom: SavedModelServable) -> None:
    with pytest.raises(InvalidArgument) as info:
        inference.classify(tf1, "nope", examples(1.0))
    assert info.value.message == "No signature was found with the name: nope"
    with pytest.raises(InvalidArgument) as info:
        inference.classify(tf1, "", examples(1.0))
    assert info.value.message.startswith("No classification inputs found in SignatureDef: ")
    with pytest.raises(InvalidArgument) as info:
        inference.regress(tf1, "serving_default", examples(1.0))
    assert info.value.message.startswith("No regression inputs found in SignatureDef: ")
    with pytest.raises(InvalidArgument) as info:
        inference.regress(custom, "classes_and_scores", examples(1.0))
    assert info.value.message == "Expected one output Tensor."
    with pytest.raises(InvalidArgument) as info:
        inference.regress(tf1, "regress_x_to_y", input_pb2.Input())
    assert info.value.message == "Input is empty."
    with pytest.raises(InvalidArgument) as info:
        inference.regress(custom, "wide_regression", examples(1.0))
    assert info.value.message == (
        "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [1,2]"
    )
    with pytest.raises(InvalidArgument) as info:
        inference.classify(custom, "double_scores", examples(1.0))
    assert info.value.message == "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"
    # a classify signature whose input is not a string tensor fails in the runtime, as in TF
    with pytest.raises(InvalidArgument) as info:
        inference.regress(tf1, "regress_x2_to_y3", examples(1.0))
    assert info.value.message == "Expects arg[0] to be float but string is provided"


# -------------------------------------------------------------------------- multi-inference


def _task(request: inference_pb2.MultiInferenceRequest, signature: str, method: str) -> None:
    task = request.tasks.add()
    task.model_spec.name = "default"
    task.model_spec.signature_name = signature
    task.method_name = method


def test_multi_inference(tf1: SavedModelServable) -> None:
    request = inference_pb2.MultiInferenceRequest()
    request.input.CopyFrom(examples(2.0))
    _task(request, "classify_x_to_y", CLASSIFY)
    _task(request, "regress_x_to_y2", REGRESS)
    response = inference.multi_inference(tf1, request, version=123)
    first, second = response.results
    assert first.model_spec.signature_name == "classify_x_to_y"
    assert first.model_spec.version.value == 123
    assert first.classification_result.classifications[0].classes[0].score == 3.0
    assert second.regression_result.regressions[0].value == 4.0


def test_multi_inference_results_name_the_resolved_signature(custom: SavedModelServable) -> None:
    """A task naming no signature runs serving_default, and its result says so (TF Serving's
    MakeModelSpec), with the served version; only name, signature and version are set."""
    request = inference_pb2.MultiInferenceRequest()
    request.input.CopyFrom(examples(2.0))
    _task(request, "", REGRESS)
    _task(request, "classes_and_scores", CLASSIFY)
    request.tasks[0].model_spec.version_label = "stable"
    first, second = inference.multi_inference(custom, request, version=7).results
    assert str(first.model_spec) == str(
        model_pb2.ModelSpec(
            name="default", signature_name="serving_default", version=Int64Value(value=7)
        )
    )
    assert first.regression_result.regressions[0].value == 1.0
    assert second.model_spec.signature_name == "classes_and_scores"


def test_multi_inference_errors(tf1: SavedModelServable) -> None:
    def fails(*tasks: tuple[str, str], model: str = "default") -> str:
        request = inference_pb2.MultiInferenceRequest()
        request.input.CopyFrom(examples(2.0))
        for signature, method in tasks:
            _task(request, signature, method)
        request.tasks[-1].model_spec.name = model
        with pytest.raises((InvalidArgument, Unimplemented)) as info:
            inference.multi_inference(tf1, request)
        return info.value.message

    assert fails(("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS)) == (
        "Duplicate evaluation of signature: regress_x_to_y"
    )
    assert fails(("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS), model="other") == (
        "All ModelSpecs in a MultiInferenceRequest must access the same model name."
    )
    assert fails(("regress_x_to_y", REGRESS), model="") == (
        "Found ModelSpec with an empty model name."
    )
    assert fails(("serving_default", "tensorflow/serving/predict")) == (
        "Unsupported signature method_name: tensorflow/serving/predict"
    )
    assert fails(("nope", REGRESS)) == "Requested signature not found in model graph: nope"
    # regress_x2_to_y3's input is the float placeholder x2:0, which cannot take the examples:
    # TF Serving feeds them to tf_example:0 and x2:0 in one run, x2:0 being its arg[1]
    assert fails(("regress_x_to_y", REGRESS), ("regress_x2_to_y3", REGRESS)) == (
        "Expects arg[1] to be float but string is provided"
    )
    assert fails(("regress_x2_to_y3", REGRESS), ("classify_x_to_y", CLASSIFY)) == (
        "Expects arg[1] to be float but string is provided"
    )


def _multi_request(x: float, *tasks: tuple[str, str]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    request.input.CopyFrom(examples(x))
    for signature, method in tasks:
        _task(request, signature, method)
    return request


@pytest.mark.parametrize("model", ["tf1", "tf2"])
def test_multi_inference_classify_and_regress(model: str, request: pytest.FixtureRequest) -> None:
    """TF Serving's ``_TestMultiInference`` at the inference layer, on the TF1 export (one
    shared ``tf_example:0`` input) and the TF2 export (one input placeholder per signature)."""
    servable: SavedModelServable = request.getfixturevalue(model)
    tasks = [("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)]
    inputs = {servable.signature_defs[name].inputs["inputs"].name for name, _ in tasks}
    assert len(inputs) == (1 if model == "tf1" else 2)
    response = inference.multi_inference(servable, _multi_request(2.0, *tasks), version=123)
    regress, classify = response.results
    assert regress.model_spec.signature_name == "regress_x_to_y"
    assert regress.model_spec.version.value == 123
    assert [r.value for r in regress.regression_result.regressions] == [3.0]
    assert classify.model_spec.signature_name == "classify_x_to_y"
    assert [
        [(c.label, c.score) for c in cs.classes]
        for cs in classify.classification_result.classifications
    ] == [[("", 3.0)]]


def test_multi_inference_tf2_runs_every_signature(tf2: SavedModelServable) -> None:
    response = inference.multi_inference(
        tf2,
        _multi_request(2.0, ("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS)),
    )
    assert [r.regression_result.regressions[0].value for r in response.results] == [3.0, 4.0]


def test_multi_inference_tf2_keeps_the_checks(tf2: SavedModelServable) -> None:
    with pytest.raises(InvalidArgument) as info:
        inference.multi_inference(
            tf2, _multi_request(2.0, ("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS))
        )
    assert info.value.message == "Duplicate evaluation of signature: regress_x_to_y"
    with pytest.raises(InvalidArgument) as info:
        inference.multi_inference(
            tf2, _multi_request(2.0, ("regress_x_to_y", REGRESS)), check_method_name=True
        )
    assert info.value.message == (
        "Expected regression signature method_name to be tensorflow/serving/regress. "
        "Was: tensorflow/serving/predict"
    )
    empty = _multi_request(2.0, ("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY))
    empty.ClearField("input")
    with pytest.raises(InvalidArgument) as info:
        inference.multi_inference(tf2, empty)
    assert info.value.message == "Input is empty."


# -------------------------------------------------------------------------- metadata


def test_signature_def_map_matches_tf_serving(tfserving_testdata: pathlib.Path) -> None:
    """TF Serving's recorded metadata answer for its own half_plus_two export."""
    expected = json.loads((tfserving_testdata / "half_plus_two_model_metadata.json").read_text())
    loader = SavedModelLoader(
        str(tfserving_testdata / "saved_model_half_plus_two_cpu" / "00000123")
    )
    loader.load()
    try:
        actual = json_format.MessageToDict(
            inference.signature_def_map(loader.servable()),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    finally:
        loader.unload()
    assert actual == expected["metadata"]["signature_def"]


def test_signature_def_map_keeps_the_init_op(tf2: SavedModelServable) -> None:
    keys = set(inference.signature_def_map(tf2).signature_def)
    assert "__saved_model_init_op" in keys
    assert keys - {"__saved_model_init_op"} == set(tf2.signature_defs)


# -------------------------------------------------------------------------- JSON round trip


@pytest.mark.parametrize("model", ["tf1", "tf2"])
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"instances": [1.0, 2.0, 5.0]}', b'{"predictions":[2.5,3.0,4.5]}'),
        (b'{"instances": [[2.0], [3.0], [4.0]]}', b'{"predictions":[[3.0],[3.5],[4.0]]}'),
        (b'{"inputs": {"x": [[2.0]]}}', b'{"outputs":[[3.0]]}'),
        (b'{"inputs": [NaN, Infinity]}', b'{"outputs":[NaN,Infinity]}'),
        (b'{"signature_name": "serving_default", "inputs": [0.2]}', b'{"outputs":[2.1]}'),
    ],
)
def test_rest_predict_round_trip(
    model: str, body: bytes, expected: bytes, request: pytest.FixtureRequest
) -> None:
    servable = request.getfixturevalue(model)
    parsed = codec.loads(body)
    signature = inference.find_signature(servable, codec.get_signature_name(parsed))
    fmt, inputs = codec.parse_predict_request(parsed, signature)
    _name, outputs = inference.predict(servable, codec.get_signature_name(parsed), inputs)
    assert codec.format_predict_response(outputs, fmt) == expected


@pytest.mark.parametrize("model", ["tf1", "tf2"])
def test_rest_classify_and_regress_round_trip(model: str, request: pytest.FixtureRequest) -> None:
    servable = request.getfixturevalue(model)
    body = codec.loads(b'{"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}')
    name, request_input = codec.parse_examples_request(body)
    result = inference.classify(servable, name, request_input)
    assert codec.format_classify_response(result) == b'{"results":[[["",3.0]]]}'
    body = codec.loads(b'{"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}')
    name, request_input = codec.parse_examples_request(body)
    result = inference.regress(servable, name, request_input)
    assert codec.format_regress_response(result) == b'{"results":[3.0]}'


def test_grpc_style_round_trip(tf1: SavedModelServable) -> None:
    proto = tf.make_tensor_proto(np.array([[2.0], [4.0]], np.float32))
    inputs = {"x": codec.tensor_proto_to_ndarray(proto, name="x")}
    _name, outputs = inference.predict(tf1, "", inputs)
    response = codec.ndarray_to_tensor_proto(outputs["y"])
    assert list(response.float_val) == [3.0, 4.0]
    assert [d.size for d in response.tensor_shape.dim] == [2, 1]
    wrong = tf.make_tensor_proto(np.array([[2.0]], np.float64))
    with pytest.raises(InvalidArgument) as info:
        inference.predict(tf1, "", {"x": codec.tensor_proto_to_ndarray(wrong)})
    assert info.value.message == "Expects arg[0] to be float but double is provided"
