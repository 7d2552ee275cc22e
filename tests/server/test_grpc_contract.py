"""One contract, both gRPC transports: the same checks against pyserving's HTTP/2 server
(``grpc/h2.py``) and grpcio's ``grpc.aio`` (``grpc/aio.py``), each a real server on a real
socket called with the official ``tensorflow-serving-api`` stubs (V2's ModelInfer with the
service's own messages, health with ``grpcio-health-checking``'s stub).

Both transports serve one :class:`~pyserving.server.grpc.service.GrpcService`, so every
answer, code and message here must be the same whichever carries it.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator
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
    input_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from pyserving.core.clock import ManualClock
from pyserving.core.manager import ManagerOptions
from pyserving.server.call_costs import CallCosts
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.grpc import GrpcServerOptions, start_grpc_server
from pyserving.server.grpc.aio import AsyncGrpcServer, start_aio_grpc_server
from pyserving.server.grpc.h2 import H2GrpcServer, start_h2_grpc_server
from pyserving.server.loop_server import LOOP_THREAD_NAME, LoopServer
from pyserving.server.service import ModelServing
from pyserving.server.v2.protos import MESSAGES, SERVICE

TIMEOUT = 60.0
TRANSPORTS = {"h2": H2GrpcServer, "aio": AsyncGrpcServer}
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def model_config(testdata: pathlib.Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for name in ("half_plus_two", "gated"):
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = str(testdata / "saved_model_half_plus_two_cpu")
        model.model_platform = "tensorflow"
    return config


@pytest.fixture(scope="module")
def core(testdata: pathlib.Path) -> Iterator[ServerCore]:
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=2), file_system_poll_wait_seconds=0
    )
    with ServerCore(options) as c:
        c.reload_config(model_config(testdata))
        yield c


def serve(serving: ModelServing, transport: str, **options: Any) -> LoopServer:
    server = start_grpc_server(
        serving, GrpcServerOptions(port=0, grpcio=transport == "aio", **options)
    )
    assert isinstance(server, TRANSPORTS[transport])
    return server


@pytest.fixture(scope="module", params=sorted(TRANSPORTS))
def channel(request: pytest.FixtureRequest, core: ServerCore) -> Iterator[grpc.Channel]:
    with (
        serve(ModelServing(core), request.param, enable_health=True) as server,
        grpc.insecure_channel(f"localhost:{server.port}") as ch,
    ):
        yield ch


def predictions(channel: grpc.Channel) -> Any:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def models(channel: grpc.Channel) -> Any:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(
    name: str = "half_plus_two", values: tuple[float, ...] = (1.0, 4.0), alias: str = "x"
) -> predict_pb2.PredictRequest:
    array = np.asarray(values, np.float32).reshape(-1, 1)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=array.tobytes())
    tensor.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        )
    )
    request.inputs[alias].CopyFrom(tensor)
    return request


def examples(x: float) -> input_pb2.Input:
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    request_input = input_pb2.Input()
    request_input.example_list.examples.append(example)
    return request_input


def failure(method: Any, request: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    kwargs.setdefault("timeout", TIMEOUT)
    with pytest.raises(grpc.RpcError) as info:
        method(request, **kwargs)
    error: Any = info.value
    return error.code(), str(error.details())


# -- PredictionService ----------------------------------------------------------------------


def test_predict(channel: grpc.Channel) -> None:
    response = predictions(channel).Predict(predict_request(), timeout=TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_two", 123)
    assert response.model_spec.signature_name == "serving_default"
    y = response.outputs["y"]
    assert [d.size for d in y.tensor_shape.dim] == [2, 1]
    assert list(y.float_val) == [2.5, 4.0]


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            predict_request("nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        (predict_request(alias="nope"), grpc.StatusCode.INVALID_ARGUMENT, None),
    ],
    ids=["unknown-model", "no-model-spec", "unknown-input"],
)
def test_predict_errors(
    channel: grpc.Channel, request_: Any, code: grpc.StatusCode, message: str | None
) -> None:
    got, details = failure(predictions(channel).Predict, request_)
    assert got == code, details
    if message is not None:
        assert details == message


def test_predict_unknown_signature(channel: grpc.Channel) -> None:
    request = predict_request()
    request.model_spec.signature_name = "zzz"
    assert failure(predictions(channel).Predict, request) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "zzz" not found.',
    )


def test_classify_and_regress(channel: grpc.Channel) -> None:
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.CopyFrom(examples(2.0))
    answer = predictions(channel).Classify(classify, timeout=TIMEOUT)
    assert answer.model_spec.version.value == 123
    assert answer.result.classifications[0].classes[0].score == pytest.approx(3.0)

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half_plus_two"
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.CopyFrom(examples(2.0))
    result = predictions(channel).Regress(regress, timeout=TIMEOUT)
    assert result.model_spec.signature_name == "regress_x_to_y"
    assert [r.value for r in result.result.regressions] == [pytest.approx(3.0)]

    regress.input.Clear()
    assert failure(predictions(channel).Regress, regress) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Input is empty.",
    )


def classify_and_regress_request() -> inference_pb2.MultiInferenceRequest:
    """A MultiInference of half_plus_two's classify_x_to_y and regress_x_to_y (no input)."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
        task.method_name = method
    return request


def test_multi_inference(channel: grpc.Channel) -> None:
    request = classify_and_regress_request()
    request.input.CopyFrom(examples(2.0))
    classify, regress = predictions(channel).MultiInference(request, timeout=TIMEOUT).results
    assert classify.model_spec.version.value == 123
    assert classify.classification_result.classifications[0].classes[0].score == 3.0
    assert regress.regression_result.regressions[0].value == pytest.approx(3.0)
    assert regress.model_spec.signature_name == "regress_x_to_y"


def test_multi_inference_checks_as_tf_serving(channel: grpc.Channel) -> None:
    """TF Serving serves every task with the version the first task names (the others'
    versions and labels are not read) and checks the tasks' model names after resolving
    that version; each result's model_spec has the resolved version and signature name."""
    request = classify_and_regress_request()
    request.tasks[0].model_spec.version.value = 123
    request.tasks[1].model_spec.version_label = "no-such-label"
    request.input.CopyFrom(examples(2.0))
    results = predictions(channel).MultiInference(request, timeout=TIMEOUT).results
    assert [(r.model_spec.name, r.model_spec.version.value) for r in results] == [
        ("half_plus_two", 123),
        ("half_plus_two", 123),
    ]
    assert [r.model_spec.signature_name for r in results] == ["classify_x_to_y", "regress_x_to_y"]
    assert not results[0].model_spec.HasField("version_label")

    def refused(edit: Any) -> tuple[grpc.StatusCode, str]:
        broken = inference_pb2.MultiInferenceRequest()
        broken.CopyFrom(request)
        edit(broken)
        return failure(predictions(channel).MultiInference, broken)

    assert refused(lambda r: setattr(r.tasks[1].model_spec, "name", "gated")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    )
    assert refused(lambda r: setattr(r.tasks[1].model_spec, "name", "")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Found ModelSpec with an empty model name.",
    )
    assert refused(lambda r: setattr(r.tasks[0].model_spec, "name", "")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec has no name specified.",
    )
    assert refused(lambda r: r.ClearField("tasks")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec has no name specified.",
    )
    code, message = refused(lambda r: setattr(r.tasks[0].model_spec, "name", "zzz"))
    assert code == grpc.StatusCode.NOT_FOUND and "zzz" in message, message


def test_get_model_metadata(channel: grpc.Channel) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "half_plus_two"
    request.metadata_field.append("signature_def")
    response = predictions(channel).GetModelMetadata(request, timeout=TIMEOUT)
    assert response.model_spec.version.value == 123
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "classify_x_to_y"} <= set(signatures.signature_def)
    request.metadata_field[0] = "nope"
    assert failure(predictions(channel).GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Metadata field nope is not supported",
    )


# -- ModelService ---------------------------------------------------------------------------


def test_get_model_status(channel: grpc.Channel) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    [status] = models(channel).GetModelStatus(request, timeout=TIMEOUT).model_version_status
    assert (status.version, status.state, status.status.error_code) == (123, AVAILABLE, 0)
    request.model_spec.name = "nope"
    code, _ = failure(models(channel).GetModelStatus, request)
    assert code == grpc.StatusCode.NOT_FOUND


def test_reload_config(channel: grpc.Channel, testdata: pathlib.Path) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(model_config(testdata))
    response = models(channel).HandleReloadConfigRequest(request, timeout=TIMEOUT)
    assert (response.status.error_code, response.status.error_message) == (0, "")
    assert failure(
        models(channel).HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest()
    ) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ServerModelConfig type not supported by HandleReloadConfigRequest. "
        "Only ModelConfigList is currently supported",
    )


# -- health, V2, unknown methods ------------------------------------------------------------


def test_health_check(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    code, _ = failure(stub.Check, health_pb2.HealthCheckRequest(service="nope"))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_health_watch(core: ServerCore, transport: str) -> None:
    """Watch streams each change of readiness; a graceful stop reports NOT_SERVING and ends
    the stream with OK."""
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    server = serve(ModelServing(core), transport, enable_health=True)
    try:
        with grpc.insecure_channel(f"localhost:{server.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
            assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            unknown.cancel()
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
            assert next(watch).status == serving
            server.set_serving_status(False)
            assert next(watch).status == not_serving
            check = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert check.status == not_serving  # in force when set_serving_status returned
            server.set_serving_status(True)
            assert next(watch).status == serving
            server.stop(TIMEOUT)  # returns once the calls in flight (the watch) have ended
            assert next(watch).status == not_serving
            with pytest.raises(StopIteration):
                next(watch)
            assert watch.code() == grpc.StatusCode.OK
    finally:
        server.stop(None)


def _v2(channel: grpc.Channel, method: str) -> Any:
    return channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=MESSAGES[f"{method}Response"].FromString,
    )


def test_v2_model_infer(channel: grpc.Channel) -> None:
    request = MESSAGES["ModelInferRequest"](model_name="half_plus_two", id="r1")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1])
    request.raw_input_contents.append(np.float32([1, 4]).tobytes())
    response = _v2(channel, "ModelInfer")(request, timeout=TIMEOUT)
    assert (response.model_name, response.model_version, response.id) == (
        "half_plus_two",
        "123",
        "r1",
    )
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", "FP32", [2, 1])
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.5, 4.0]
    request.model_name = "nope"
    code, _ = failure(_v2(channel, "ModelInfer"), request)
    assert code == grpc.StatusCode.NOT_FOUND
    ready = _v2(channel, "ModelReady")(MESSAGES["ModelReadyRequest"](name="half_plus_two"))
    assert ready.ready is True


def test_unknown_method(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Nope")
    code, _ = failure(call, b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED


# -- deadlines ------------------------------------------------------------------------------


class _GatedServing(ModelServing):
    """Requests for model ``gated`` wait for ``gate`` before they reach the model;
    ``reached`` counts those that did."""

    def __init__(self, core: ServerCore) -> None:
        super().__init__(core)
        self.gate = threading.Event()
        self.waiting = threading.Event()
        self.reached = 0

    def bind(self, spec: Any, **kwargs: Any) -> Any:
        if spec.name == "gated":
            self.waiting.set()
            assert self.gate.wait(TIMEOUT), "test gate never opened"
            self.reached += 1
        return super().bind(spec, **kwargs)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_deadline_exceeded(core: ServerCore, transport: str) -> None:
    """A call whose deadline passes while it waits for the server is DEADLINE_EXCEEDED and
    never reaches its model; the server keeps serving. One worker thread, held by a first
    call, makes the second wait (a model's first calls run on workers on both transports)."""
    serving = _GatedServing(core)
    with (
        serve(serving, transport, max_threads=1) as server,
        grpc.insecure_channel(f"localhost:{server.port}") as ch,
    ):
        stub = predictions(ch)
        first = stub.Predict.future(predict_request("gated"), timeout=TIMEOUT)
        assert serving.waiting.wait(TIMEOUT)
        code, _ = failure(stub.Predict, predict_request("gated"), timeout=0.5)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        serving.gate.set()
        assert list(first.result().outputs["y"].float_val) == [2.5, 4.0]
        again = stub.Predict(predict_request("gated"), timeout=TIMEOUT)
        assert list(again.outputs["y"].float_val) == [2.5, 4.0]
    assert serving.reached == 2  # the first call and the last: the expired one never ran


# -- where Predict runs ---------------------------------------------------------------------


class _CostedServing(ModelServing):
    """Records the thread each Predict reaches its model on; each advances ``clock`` by
    ``cost`` seconds, so the transport's measure of the model's cost is exactly ``cost``."""

    def __init__(self, core: ServerCore, cost: float) -> None:
        super().__init__(core)
        self.cost = cost
        self.clock = ManualClock()
        self.threads: list[str] = []

    def bind(self, spec: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        model = super().bind(spec, **kwargs)
        self.clock.advance(self.cost)
        return model


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize(("cost", "on_loop"), [(0.0, True), (1e-3, False)], ids=["fast", "slow"])
def test_fast_models_run_on_the_event_loop_slow_ones_on_workers(
    core: ServerCore, transport: str, cost: float, on_loop: bool
) -> None:
    """Both transports decide alike: a model's first Predict runs on a worker (its cost is
    not known yet); later ones run on the event loop when the model is fast, else on
    workers, so a slow model never holds the loop."""
    serving = _CostedServing(core, cost)
    costs = CallCosts(timer=serving.clock.monotonic)
    start = start_h2_grpc_server if transport == "h2" else start_aio_grpc_server
    with (
        start(serving, GrpcServerOptions(port=0), costs=costs) as server,
        grpc.insecure_channel(f"localhost:{server.port}") as ch,
    ):
        for _ in range(6):
            answer = predictions(ch).Predict(predict_request(), timeout=TIMEOUT)
            assert list(answer.outputs["y"].float_val) == [2.5, 4.0]
    first, *later = serving.threads
    assert first.startswith("pyserving-grpc_"), serving.threads
    if on_loop:
        assert later == [LOOP_THREAD_NAME] * 5, serving.threads
    else:
        assert all(t.startswith("pyserving-grpc_") for t in later), serving.threads
