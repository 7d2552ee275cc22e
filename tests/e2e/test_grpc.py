"""The gRPC front end, end to end: a real server on real sockets, called with the official stubs.

One server (TCP on a free port plus a UNIX socket) serves the test models (``testdata``, the
equivalents of TF Serving's; its own exports are served in ``test_tfserving_models.py``) for
the whole module:

* ``half_plus_two``: ``saved_model_half_plus_two_cpu`` (TF1 export, version 123)
* ``half_plus_two_tf2``: ``saved_model_half_plus_two_tf2_cpu`` (TF2 export, version 123)
* ``half_plus_three``: ``saved_model_half_plus_three`` (TF1 export without signature shapes,
  version 123)
* ``two_versions``: ``saved_model_half_plus_two_2_versions`` with an ``all`` policy (123, 124)
  and labels ``stable`` -> 123, ``canary`` -> 124.

Tests that change the model set restore it before they end.
"""

from __future__ import annotations

import json
import pathlib
import resource
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from pyserving.core.manager import ManagerOptions
from pyserving.errors import DeadlineExceeded, InvalidArgument
from pyserving.platforms.tensorflow import read_saved_model
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.grpc import GrpcServerOptions, parse_channel_arguments, start_grpc_server
from pyserving.server.grpc.calls import Call, Inference, run_inference
from pyserving.server.grpc.service import PREDICT_PATH, GrpcService
from pyserving.server.loop_server import LoopServer
from pyserving.server.service import ModelServing

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
BIG_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


# ---------------------------------------------------------------------------- fixtures


def _model(
    config: model_server_config_pb2.ModelServerConfig,
    name: str,
    base_path: pathlib.Path,
    *,
    all_versions: bool = False,
    labels: dict[str, int] | None = None,
) -> None:
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = str(base_path)
    model.model_platform = "tensorflow"
    if all_versions:
        model.model_version_policy.all.SetInParent()
    for label, version in (labels or {}).items():
        model.version_labels[label] = version


def base_config(testdata: pathlib.Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    _model(config, "half_plus_two", testdata / "saved_model_half_plus_two_cpu")
    _model(config, "half_plus_two_tf2", testdata / "saved_model_half_plus_two_tf2_cpu")
    _model(config, "half_plus_three", testdata / "saved_model_half_plus_three")
    _model(
        config,
        "two_versions",
        testdata / "saved_model_half_plus_two_2_versions",
        all_versions=True,
        labels={"stable": 123, "canary": 124},
    )
    return config


@dataclass
class Env:
    core: ServerCore
    serving: ModelServing
    server: LoopServer
    testdata: pathlib.Path
    tmp: pathlib.Path
    channels: dict[str, grpc.Channel]

    def predict_stub(self, kind: str = "tcp") -> Any:
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channels[kind])

    def model_stub(self, kind: str = "tcp") -> Any:
        return model_service_pb2_grpc.ModelServiceStub(self.channels[kind])

    def health_stub(self, kind: str = "tcp") -> Any:
        return health_pb2_grpc.HealthStub(self.channels[kind])


@pytest.fixture(scope="module", params=["http2", "grpcio"])
def env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    testdata: pathlib.Path,
) -> Iterator[Env]:
    """The server under test: on pyserving's HTTP/2 server (the default) and on grpcio's
    grpc.aio."""
    tmp = tmp_path_factory.mktemp("grpc")
    core = ServerCore(
        ServerCoreOptions(
            manager=ManagerOptions(num_load_threads=2, num_unload_threads=1),
            file_system_poll_wait_seconds=0,
        )
    )
    try:
        core.reload_config(base_config(testdata))
        serving = ModelServing(core)
        server = start_grpc_server(
            serving,
            GrpcServerOptions(
                port=0,
                socket_path=str(tmp / "grpc.sock"),
                enable_health=True,
                grpcio=request.param != "http2",
            ),
        )
        channels = {
            "tcp": grpc.insecure_channel(f"localhost:{server.port}", options=BIG_CHANNEL_OPTIONS),
            "unix": grpc.insecure_channel(f"unix:{tmp / 'grpc.sock'}", options=BIG_CHANNEL_OPTIONS),
        }
        try:
            yield Env(core, serving, server, testdata, tmp, channels)
        finally:
            for channel in channels.values():
                channel.close()
            server.stop(None)
    finally:
        core.close()


@pytest.fixture(params=["tcp", "unix"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which listening address a test talks to."""
    return str(request.param)


# ---------------------------------------------------------------------------- helpers


def float_tensor(values: Any, shape: tuple[int, ...] | None = None) -> tensor_pb2.TensorProto:
    """A DT_FLOAT TensorProto in ``tensor_content`` form (what tf.make_tensor_proto sends)."""
    array = np.asarray(values, dtype=np.float32)
    if shape is not None:
        array = array.reshape(shape)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=array.tobytes())
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        )
    )
    return proto


def predict_request(
    name: str,
    inputs: dict[str, tensor_pb2.TensorProto],
    *,
    version: int | None = None,
    label: str | None = None,
    signature_name: str = "",
    output_filter: tuple[str, ...] = (),
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature_name
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    return request


def example_input(x: float) -> Any:
    from tensorflow_serving.apis import input_pb2

    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    request_input = input_pb2.Input()
    request_input.example_list.examples.append(example)
    return request_input


def rpc_error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    kwargs.setdefault("timeout", TIMEOUT)
    with pytest.raises(grpc.RpcError) as info:
        call(request, **kwargs)
    return info.value


def assert_error(
    call: Any,
    request: Any,
    code: grpc.StatusCode,
    message: str | None = None,
    *,
    contains: tuple[str, ...] = (),
) -> str:
    error: Any = rpc_error(call, request)
    assert error.code() == code, error.details()
    details = str(error.details())
    if message is not None:
        assert details == message
    for part in contains:
        assert part in details, details
    return details


def tensor_values(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Values of a DT_FLOAT output, which must use the typed ``float_val`` field."""
    assert proto.dtype == types_pb2.DT_FLOAT
    assert proto.tensor_content == b""
    shape = [d.size for d in proto.tensor_shape.dim]
    return np.asarray(proto.float_val, dtype=np.float32).reshape(shape)


# ---------------------------------------------------------------------------- predict


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_predict_half_plus_two(env: Env, kind: str, model: str) -> None:
    request = predict_request(model, {"x": float_tensor([2.0, 3.0, 4.0], (3, 1))})
    response = env.predict_stub(kind).Predict(request, timeout=TIMEOUT)
    assert list(response.outputs) == ["y"]
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), [[3.0], [3.5], [4.0]])
    assert response.model_spec.name == model
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_predict_outputs_as_tensor_content_when_enabled(env: Env) -> None:
    """--enable_serialization_as_tensor_content: float outputs arrive as raw bytes."""
    request = predict_request("half_plus_two", {"x": float_tensor([2.0, 3.0], (2, 1))})
    plain = env.predict_stub().Predict(request, timeout=TIMEOUT).outputs["y"]
    assert list(plain.float_val) == [3.0, 3.5] and not plain.tensor_content
    server = start_grpc_server(env.serving, GrpcServerOptions(port=0, tensor_content=True))
    try:
        with grpc.insecure_channel(f"localhost:{server.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            y = stub.Predict(request, timeout=TIMEOUT).outputs["y"]
    finally:
        server.stop(None)
    assert not y.float_val
    assert [d.size for d in y.tensor_shape.dim] == [2, 1]
    np.testing.assert_array_equal(np.frombuffer(y.tensor_content, "<f4"), [3.0, 3.5])


def test_predict_half_plus_three(env: Env, kind: str) -> None:
    request = predict_request("half_plus_three", {"x": float_tensor([2.0, 3.0], (2, 1))})
    response = env.predict_stub(kind).Predict(request, timeout=TIMEOUT)
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), [[4.0], [4.5]])
    assert response.model_spec.version.value == 123


def test_predict_typed_fields_from_typed_input(env: Env) -> None:
    """Inputs in the typed ``float_val`` form work too (the python client's other form)."""
    x = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.0, 3.0])
    x.tensor_shape.dim.add(size=2)
    x.tensor_shape.dim.add(size=1)
    response = env.predict_stub().Predict(
        predict_request("half_plus_two", {"x": x}), timeout=TIMEOUT
    )
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), [[3.0], [3.5]])


@pytest.mark.parametrize(
    ("version", "label", "expected"),
    [
        (None, None, 124),
        (123, None, 123),
        (124, None, 124),
        (None, "stable", 123),
        (None, "canary", 124),
    ],
)
def test_predict_version_and_label_echoed(
    env: Env, version: int | None, label: str | None, expected: int
) -> None:
    request = predict_request(
        "two_versions", {"x": float_tensor([2.0], (1, 1))}, version=version, label=label
    )
    response = env.predict_stub().Predict(request, timeout=TIMEOUT)
    assert response.model_spec.name == "two_versions"
    assert response.model_spec.version.value == expected
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), [[3.0]])


def test_predict_explicit_signature_and_output_filter(env: Env) -> None:
    request = predict_request(
        "half_plus_two",
        {"x": float_tensor([4.0], (1, 1))},
        signature_name="serving_default",
        output_filter=("y",),
    )
    response = env.predict_stub().Predict(request, timeout=TIMEOUT)
    assert list(response.outputs) == ["y"]
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), [[4.0]])


def test_predict_non_default_signature(env: Env) -> None:
    """``regress_x2_to_y3`` takes a float tensor: y3 = 0.5 * x2 + 3."""
    request = predict_request(
        "half_plus_two", {"inputs": float_tensor([2.0], (1, 1))}, signature_name="regress_x2_to_y3"
    )
    response = env.predict_stub().Predict(request, timeout=TIMEOUT)
    np.testing.assert_array_equal(tensor_values(response.outputs["outputs"]), [[4.0]])
    assert response.model_spec.signature_name == "regress_x2_to_y3"


# ---------------------------------------------------------------------------- classify / regress


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_classify(env: Env, kind: str, model: str) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.CopyFrom(example_input(2.0))
    response = env.predict_stub(kind).Classify(request, timeout=TIMEOUT)
    assert response.model_spec.name == model
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "classify_x_to_y"
    [classifications] = response.result.classifications
    [cls] = classifications.classes
    assert cls.score == pytest.approx(3.0)


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
@pytest.mark.parametrize(
    ("signature", "expected"), [("regress_x_to_y", 3.0), ("regress_x_to_y2", 4.0)]
)
def test_regress(env: Env, kind: str, model: str, signature: str, expected: float) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.input.CopyFrom(example_input(2.0))
    response = env.predict_stub(kind).Regress(request, timeout=TIMEOUT)
    assert response.model_spec.name == model
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == signature
    [regression] = response.result.regressions
    assert regression.value == pytest.approx(expected)


def test_multi_inference(env: Env, kind: str) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.CopyFrom(example_input(2.0))
    response = env.predict_stub(kind).MultiInference(request, timeout=TIMEOUT)
    classify, regress = response.results
    assert classify.model_spec.name == "half_plus_two"
    assert classify.model_spec.version.value == 123
    assert classify.model_spec.signature_name == "classify_x_to_y"
    assert classify.classification_result.classifications[0].classes[0].score == pytest.approx(3.0)
    assert regress.model_spec.signature_name == "regress_x_to_y"
    assert regress.regression_result.regressions[0].value == pytest.approx(3.0)


# ---------------------------------------------------------------------------- metadata / status


def _saved_signatures(version_dir: pathlib.Path) -> get_model_metadata_pb2.SignatureDefMap:
    """The SignatureDefs of a SavedModel's (only) MetaGraphDef, as a metadata answer holds them
    (TF Serving's recorded answers are compared in test_tfserving_models.py)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in read_saved_model(str(version_dir)).meta_graphs[0].signature_def.items():
        signatures.signature_def[key].CopyFrom(signature)
    return signatures


def _metadata_request(
    name: str, version: int | None = None
) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def _metadata(env: Env, kind: str, name: str, version: int | None = None) -> Any:
    request = _metadata_request(name, version)
    return env.predict_stub(kind).GetModelMetadata(request, timeout=TIMEOUT)


def test_metadata_holds_the_saved_signatures(env: Env, kind: str) -> None:
    response = _metadata(env, kind, "half_plus_two")
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == ""
    assert list(response.metadata) == ["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    version_dir = env.testdata / "saved_model_half_plus_two_cpu" / "00000123"
    assert signatures == _saved_signatures(version_dir)


def test_metadata_of_a_specific_version(env: Env) -> None:
    response = _metadata(env, "tcp", "two_versions", 124)
    assert response.model_spec.version.value == 124
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    version_dir = env.testdata / "saved_model_half_plus_two_2_versions" / "00000124"
    assert signatures == _saved_signatures(version_dir)


def test_metadata_tf2(env: Env) -> None:
    response = _metadata(env, "tcp", "half_plus_two_tf2")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y"} <= set(signatures.signature_def)
    serving = signatures.signature_def["serving_default"]
    assert serving.method_name == "tensorflow/serving/predict"
    assert serving.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert serving.outputs["y"].dtype == types_pb2.DT_FLOAT


def test_model_status(env: Env, kind: str) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    response = env.model_stub(kind).GetModelStatus(request, timeout=TIMEOUT)
    [status] = response.model_version_status
    assert status.version == 123
    assert status.state == AVAILABLE
    assert status.status.error_code == 0
    assert status.status.error_message == ""


def test_model_status_all_versions_and_one_version(env: Env) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "two_versions"
    response = env.model_stub().GetModelStatus(request, timeout=TIMEOUT)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (123, AVAILABLE),
        (124, AVAILABLE),
    ]
    request.model_spec.version.value = 124
    response = env.model_stub().GetModelStatus(request, timeout=TIMEOUT)
    assert [(s.version, s.state) for s in response.model_version_status] == [(124, AVAILABLE)]


# ---------------------------------------------------------------------------- errors


def test_unknown_model_is_not_found(env: Env, kind: str) -> None:
    request = predict_request("nope", {"x": float_tensor([2.0], (1, 1))})
    assert_error(
        env.predict_stub(kind).Predict,
        request,
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )


def test_unknown_version_is_not_found(env: Env) -> None:
    request = predict_request("half_plus_two", {"x": float_tensor([2.0], (1, 1))}, version=5)
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(half_plus_two, 5)",
    )


def test_unknown_model_for_classify_regress_metadata(env: Env) -> None:
    stub = env.predict_stub()
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "nope"
    classify.input.CopyFrom(example_input(2.0))
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "nope"
    regress.input.CopyFrom(example_input(2.0))
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "nope"
    message = "Servable not found for request: Latest(nope)"
    assert_error(stub.Classify, classify, grpc.StatusCode.NOT_FOUND, message)
    assert_error(stub.Regress, regress, grpc.StatusCode.NOT_FOUND, message)
    assert_error(stub.GetModelMetadata, metadata, grpc.StatusCode.NOT_FOUND, message)


def test_unknown_label_is_invalid_argument(env: Env) -> None:
    request = predict_request("two_versions", {"x": float_tensor([2.0], (1, 1))}, label="nope")
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        contains=("nope",),
    )


def test_empty_model_name_is_invalid_argument(env: Env) -> None:
    request = predict_request("", {"x": float_tensor([2.0], (1, 1))})
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec has no name specified.",  # TF Serving's words
    )


def test_missing_model_spec_is_invalid_argument(env: Env) -> None:
    stub = env.predict_stub()
    predict = predict_pb2.PredictRequest()
    predict.inputs["x"].CopyFrom(float_tensor([2.0], (1, 1)))
    message = "Missing ModelSpec"
    assert_error(stub.Predict, predict, grpc.StatusCode.INVALID_ARGUMENT, message)
    classify = classification_pb2.ClassificationRequest(input=example_input(2.0))
    assert_error(stub.Classify, classify, grpc.StatusCode.INVALID_ARGUMENT, message)
    regress = regression_pb2.RegressionRequest(input=example_input(2.0))
    assert_error(stub.Regress, regress, grpc.StatusCode.INVALID_ARGUMENT, message)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert_error(stub.GetModelMetadata, metadata, grpc.StatusCode.INVALID_ARGUMENT, message)
    status = get_model_status_pb2.GetModelStatusRequest()
    assert_error(env.model_stub().GetModelStatus, status, grpc.StatusCode.INVALID_ARGUMENT, message)


def test_unknown_signature_is_failed_precondition(env: Env) -> None:
    request = predict_request(
        "half_plus_two", {"x": float_tensor([2.0], (1, 1))}, signature_name="nope"
    )
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    )


@pytest.mark.parametrize(
    ("inputs", "parts"),
    [
        # Same count, other name: TF's GetInputValues names the missing alias and the sent ones.
        ({"z": [2.0]}, ("Signature input alias: x(feed name: x:0) not found in request", "{z}")),
        (
            {},
            ("input size does not match signature: 0!=1", "Missing but required: {x}."),
        ),
        (
            {"x": [2.0], "z": [2.0]},
            ("input size does not match signature: 2!=1", "Sent extra: {z}."),
        ),
    ],
    ids=["wrong", "missing", "extra"],
)
def test_wrong_inputs_are_invalid_argument(
    env: Env, inputs: dict[str, list[float]], parts: tuple[str, ...]
) -> None:
    request = predict_request(
        "half_plus_two", {k: float_tensor(v, (1, 1)) for k, v in inputs.items()}
    )
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        contains=parts,
    )


def test_wrong_input_dtype_is_invalid_argument(env: Env) -> None:
    x = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a"])
    x.tensor_shape.dim.add(size=1)
    x.tensor_shape.dim.add(size=1)
    request = predict_request("half_plus_two", {"x": x})
    assert_error(env.predict_stub().Predict, request, grpc.StatusCode.INVALID_ARGUMENT)


def test_malformed_tensor_is_invalid_argument(env: Env) -> None:
    x = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"abc")
    x.tensor_shape.dim.add(size=1)
    x.tensor_shape.dim.add(size=1)
    request = predict_request("half_plus_two", {"x": x})
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: x",
    )


@pytest.mark.parametrize(
    "names",
    [("x", "extra"), ("nope",)],
    ids=["extra-input", "unknown-alias"],
)
def test_alias_errors_come_before_tensor_parsing_errors(env: Env, names: tuple[str, ...]) -> None:
    """TF Serving checks a Predict's input aliases before it parses their tensors: a request
    with wrong aliases and an unparsable tensor gets the same alias error as one whose
    tensors parse."""
    good = float_tensor([2.0], (1, 1))
    bad = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"abc")
    bad.tensor_shape.dim.add(size=1)
    bad.tensor_shape.dim.add(size=1)
    messages = []
    for tensor in (good, bad):
        request = predict_request("half_plus_two", dict.fromkeys(names, tensor))
        with pytest.raises(grpc.RpcError) as info:
            env.predict_stub().Predict(request, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        messages.append(info.value.details())
    assert messages[0] == messages[1]
    assert "tensor parsing error" not in messages[1]
    assert (
        "input size does not match signature" if len(names) > 1 else "not found in request"
    ) in (messages[1])


def _serialized_examples(*xs: float) -> list[bytes]:
    examples = []
    for x in xs:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(x)
        examples.append(example.SerializeToString())
    return examples


def test_string_inputs_in_tensor_content_are_read(env: Env) -> None:
    """A string tensor in ``tensor_content`` (TensorFlow's encoding: the lengths as varints,
    then the strings) is the same input as in ``string_val``: here serialized Examples fed
    to ``classify_x_to_y`` through Predict (y = 0.5 x + 2)."""
    examples = _serialized_examples(2.0, 4.0)
    lengths = b"".join(bytes([len(e)]) for e in examples)  # each under 128 bytes
    content = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    content.tensor_shape.dim.add(size=2)
    content.tensor_content = lengths + b"".join(examples)
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=examples)
    typed.tensor_shape.dim.add(size=2)
    answers = []
    for proto in (content, typed):
        request = predict_request(
            "half_plus_two", {"inputs": proto}, signature_name="classify_x_to_y"
        )
        response = env.predict_stub().Predict(request, timeout=TIMEOUT)
        answers.append(tensor_values(response.outputs["scores"]).ravel().tolist())
    assert answers[0] == answers[1] == [3.0, 4.0]
    content.tensor_content = lengths + b"".join(examples)[:-1]  # one byte short
    request = predict_request(
        "half_plus_two", {"inputs": content}, signature_name="classify_x_to_y"
    )
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: inputs",
    )


@pytest.mark.parametrize(
    ("dtype", "rank", "message"),
    [
        # NumPy holds at most 64 dimensions.
        (types_pb2.DT_FLOAT, 65, "tensor parsing error: x"),
        # TensorFlow converts string arrays of at most 32 dimensions from NumPy (more
        # would crash the process); numbers of any rank NumPy holds.
        (
            types_pb2.DT_STRING,
            33,
            "Input 'inputs' is a string tensor of 33 dimensions; at most 32 are supported",
        ),
    ],
)
def test_tensors_of_too_many_dimensions_are_invalid_argument(
    env: Env, dtype: int, rank: int, message: str
) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    if dtype == types_pb2.DT_FLOAT:
        proto.float_val.append(1.0)
        name, signature = "x", ""
    else:
        proto.string_val.extend(_serialized_examples(2.0))
        name, signature = "inputs", "classify_x_to_y"
    for _ in range(rank):
        proto.tensor_shape.dim.add(size=1)
    request = predict_request("half_plus_two", {name: proto}, signature_name=signature)
    assert_error(env.predict_stub().Predict, request, grpc.StatusCode.INVALID_ARGUMENT, message)
    # The server keeps serving.
    request = predict_request("half_plus_two", {"x": float_tensor([2.0], (1, 1))})
    response = env.predict_stub().Predict(request, timeout=TIMEOUT)
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), [[3.0]])


def test_unknown_output_filter_is_invalid_argument(env: Env) -> None:
    request = predict_request(
        "half_plus_two", {"x": float_tensor([2.0], (1, 1))}, output_filter=("z",)
    )
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        contains=("output tensor alias not found in signature: z",),
    )


def test_status_of_unknown_model_is_not_found(env: Env) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    assert_error(
        env.model_stub().GetModelStatus,
        request,
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )
    request.model_spec.name = "half_plus_two"
    request.model_spec.version.value = 5
    assert_error(
        env.model_stub().GetModelStatus,
        request,
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 5 of model half_plus_two",
    )


def test_metadata_without_field_is_invalid_argument(env: Env) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "half_plus_two"
    assert_error(
        env.predict_stub().GetModelMetadata,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    request.metadata_field.append("nope")
    assert_error(
        env.predict_stub().GetModelMetadata,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        contains=("nope", "not supported"),
    )


def test_long_error_message_is_truncated(env: Env) -> None:
    """TF Serving cuts status messages at 1024 characters and appends ``...TRUNCATED``."""
    name = "m" * 2000
    request = predict_request(name, {"x": float_tensor([2.0], (1, 1))})
    details = assert_error(env.predict_stub().Predict, request, grpc.StatusCode.NOT_FOUND)
    expected = f"Servable not found for request: Latest({name})"[:1024] + "...TRUNCATED"
    assert details == expected


# ---------------------------------------------------------------------------- deadlines, size


def test_expired_deadline_is_deadline_exceeded(env: Env) -> None:
    values = np.ones((1_000_000, 1), dtype=np.float32)
    request = predict_request("half_plus_two", {"x": float_tensor(values)})
    error: Any = rpc_error(env.predict_stub().Predict, request, timeout=1e-6)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server keeps serving.
    small = predict_request("half_plus_two", {"x": float_tensor([2.0], (1, 1))})
    response = env.predict_stub().Predict(small, timeout=TIMEOUT)
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), [[3.0]])


class _ScriptedClock:
    """A clock whose readings follow a script (the last one repeats)."""

    def __init__(self, readings: list[float]) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


class _CountingServing(ModelServing):
    def __init__(self, inner: ModelServing) -> None:
        super().__init__(inner.core)
        self.calls = 0

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().bind(*args, **kwargs)


@pytest.mark.parametrize(
    ("remaining", "runs"),
    [([0.0], 0), ([10.0, 0.0], 1)],
    ids=["expired-before", "expired-while-running"],
)
def test_handler_checks_the_deadline_before_and_after_running(
    env: Env, remaining: list[float], runs: int
) -> None:
    serving = _CountingServing(env.serving)
    # The deadline is at 10 on the clock; it reads 10 - remaining at each check.
    call = Call(10.0, _ScriptedClock([10.0 - r for r in remaining]))
    request = predict_request("half_plus_two", {"x": float_tensor([2.0], (1, 1))})
    predict = GrpcService(serving).methods[PREDICT_PATH]
    assert isinstance(predict, Inference)
    with pytest.raises(DeadlineExceeded) as info:
        run_inference(predict, request, call)
    assert info.value.grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert serving.calls == runs


def test_request_of_100_mb(env: Env) -> None:
    n = 25_000_000
    values = np.arange(n, dtype=np.float32).reshape(n, 1)
    request = predict_request("half_plus_two", {"x": float_tensor(values)})
    del values
    assert request.ByteSize() > 100_000_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # Seconds of work, more on a busy machine: a generous deadline, and no assertion on the
    # time taken (speed is the benchmarks' business).
    response = env.predict_stub().Predict(request, timeout=4 * TIMEOUT)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    y = response.outputs["y"]
    assert [d.size for d in y.tensor_shape.dim] == [n, 1]
    assert len(y.float_val) == n
    assert y.float_val[0] == 2.0
    assert y.float_val[1] == 2.5
    assert y.float_val[n - 1] == np.float32(0.5 * (n - 1) + 2)
    # Client and server share this process, so request and response are each held several
    # times (client message, wire bytes, server message, arrays); about 0.7 GB is typical.
    assert rss_after - rss_before < 1_500_000_000, (rss_before, rss_after)


# ---------------------------------------------------------------------------- reload


def _reload(env: Env, config: model_server_config_pb2.ModelServerConfig) -> Any:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    return env.model_stub().HandleReloadConfigRequest(request, timeout=120)


def test_reload_config_adds_and_removes_a_model(env: Env) -> None:
    added = env.tmp / "added"
    shutil.copytree(env.testdata / "saved_model_half_plus_three", added)
    config = base_config(env.testdata)
    _model(config, "added", added)
    response = _reload(env, config)
    assert response.status.error_code == 0
    assert response.status.error_message == ""
    # Answered only once settled: the new model serves at once.
    request = predict_request("added", {"x": float_tensor([2.0], (1, 1))})
    answer = env.predict_stub().Predict(request, timeout=TIMEOUT)
    np.testing.assert_array_equal(tensor_values(answer.outputs["y"]), [[4.0]])

    response = _reload(env, base_config(env.testdata))
    assert response.status.error_code == 0
    assert_error(
        env.predict_stub().Predict,
        request,
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(added)",
    )
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "added"
    status = env.model_stub().GetModelStatus(status_request, timeout=TIMEOUT)
    assert [(s.version, s.state) for s in status.model_version_status] == [(123, END)]
    # The models that stayed listed kept serving.
    still = predict_request("half_plus_two", {"x": float_tensor([2.0], (1, 1))})
    env.predict_stub().Predict(still, timeout=TIMEOUT)


def test_reload_config_errors(env: Env) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    assert_error(
        env.model_stub().HandleReloadConfigRequest,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "ServerModelConfig type not supported by HandleReloadConfigRequest. "
        "Only ModelConfigList is currently supported",
    )
    config = base_config(env.testdata)
    _model(config, "relative", pathlib.Path("relative/path"))
    request.config.CopyFrom(config)
    assert_error(
        env.model_stub().HandleReloadConfigRequest,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        contains=("relative",),
    )
    # Nothing changed.
    assert sorted(env.core.model_names()) == sorted(
        m.name for m in base_config(env.testdata).model_config_list.config
    )
    still = predict_request("half_plus_two", {"x": float_tensor([2.0], (1, 1))})
    env.predict_stub().Predict(still, timeout=TIMEOUT)


# ---------------------------------------------------------------------------- health


def test_health(env: Env, kind: str) -> None:
    # A status change is in force when set_serving_status returns.
    stub = env.health_stub(kind)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        request = health_pb2.HealthCheckRequest(service=service)
        assert stub.Check(request, timeout=TIMEOUT).status == serving
    env.server.set_serving_status(False)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        env.server.set_serving_status(True)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == serving
    error: Any = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------- server options


def test_parse_channel_arguments() -> None:
    assert parse_channel_arguments("") == []
    assert parse_channel_arguments(
        "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb"
    ) == [
        ("grpc.max_connection_age_ms", 2000),
        ("grpc.lb_policy_name", "grpclb"),
    ]
    assert parse_channel_arguments("a=-5, b=x=y,,c=") == [("a", -5), ("b", "x=y"), ("c", "")]
    # Beyond int32 stays a string, as TF Serving's safe_strto32.
    assert parse_channel_arguments("a=2147483647,b=2147483648") == [
        ("a", 2147483647),
        ("b", "2147483648"),
    ]
    with pytest.raises(InvalidArgument, match="key=value"):
        parse_channel_arguments("novalue")
    with pytest.raises(InvalidArgument):
        parse_channel_arguments("=1")


class _ExplodingServing(ModelServing):
    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")


def test_second_server_channel_arguments_internal_error_and_stop(env: Env) -> None:
    """A server built with TF Serving's example channel arguments serves; a bug in the request
    path is INTERNAL and the server keeps serving; stop is idempotent and frees the socket."""
    socket_path = env.tmp / "second.sock"
    server = start_grpc_server(
        _ExplodingServing(env.core),
        GrpcServerOptions(
            port=0,
            socket_path=str(socket_path),
            channel_arguments="grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
            max_threads=2,
        ),
    )
    try:
        assert server.port not in (0, env.server.port)
        with grpc.insecure_channel(f"localhost:{server.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_request("half_plus_two", {"x": float_tensor([2.0], (1, 1))})
            for _ in range(2):
                details = assert_error(stub.Predict, request, grpc.StatusCode.INTERNAL)
                assert "boom" in details
            metadata = _metadata_request("half_plus_two")
            assert stub.GetModelMetadata(metadata, timeout=TIMEOUT).model_spec.version.value == 123
            # No health service unless asked for.
            health = health_pb2_grpc.HealthStub(channel)
            error: Any = rpc_error(health.Check, health_pb2.HealthCheckRequest())
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            server.set_serving_status(False)  # a no-op without the health service
        assert socket_path.exists()
    finally:
        server.stop(0.5)
        server.stop(None)
    assert not socket_path.exists()
    assert server.wait_for_termination(0)


# ---------------------------------------------------------------------------- REST agreement


def test_grpc_and_rest_agree(env: Env) -> None:
    rest = pytest.importorskip("pyserving.server.rest")
    handler = rest.RestHandler(env.serving)
    for model in ("half_plus_two", "half_plus_two_tf2", "half_plus_three"):
        body = json.dumps({"instances": [[2.0], [3.0], [4.0]]}).encode()
        answer = handler.handle("POST", f"/v1/models/{model}:predict", {}, body)
        assert answer.status == 200, answer.body
        rest_values = np.asarray(json.loads(answer.body)["predictions"], dtype=np.float32)
        request = predict_request(model, {"x": float_tensor([2.0, 3.0, 4.0], (3, 1))})
        response = env.predict_stub().Predict(request, timeout=TIMEOUT)
        np.testing.assert_array_equal(tensor_values(response.outputs["y"]), rest_values)
