"""PredictionService.MultiInference end to end: the real command, the official gRPC stub.

TF Serving's ``testMultiInference`` and ``testMultiInferenceTf2``: one regress and one
classify task over one example, on the TF1 export of half_plus_two (both signatures read
``tf_example:0``) and on the TF2 export (each signature has its own input placeholder).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import inference_pb2, prediction_service_pb2_grpc

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
VERSION = 123


@pytest.fixture(scope="module")
def server(
    testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("multi_inference")
    config = tmp / "models.config"
    config.write_text(
        f"""
model_config_list {{
  config {{ name: "default" base_path: "{testdata / "saved_model_half_plus_two_cpu"}"
           model_platform: "tensorflow" }}
  config {{ name: "tf2" base_path: "{testdata / "saved_model_half_plus_two_tf2_cpu"}"
           model_platform: "tensorflow" }}
}}
"""
    )
    srv = RunningServer([f"--model_config_file={config}"], tmp / "server.log", rest=False)
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _request(model: str, *tasks: tuple[str, str], **features: float) -> Any:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    example = request.input.example_list.examples.add()
    for name, value in features.items():
        example.features.feature[name].float_list.value.append(value)
    return request


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_regress_and_classify(stub: Any, model: str) -> None:
    """TF Serving's ``_TestMultiInference``."""
    request = _request(model, ("regress_x_to_y", "regress"), ("classify_x_to_y", "classify"), x=2.0)
    result = stub.MultiInference(request, timeout=TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for answer, task in zip(result.results, request.tasks, strict=True):
        assert answer.model_spec.name == task.model_spec.name
        assert answer.model_spec.signature_name == task.model_spec.signature_name
        assert answer.model_spec.version.value == VERSION


def test_tf2_regressions_on_two_inputs(stub: Any) -> None:
    request = _request("tf2", ("regress_x_to_y", "regress"), ("regress_x_to_y2", "regress"), x=2.0)
    result = stub.MultiInference(request, timeout=TIMEOUT)
    assert [r.regression_result.regressions[0].value for r in result.results] == [3.0, 4.0]


def test_an_input_that_cannot_take_examples(stub: Any) -> None:
    """TF1's regress_x2_to_y3 reads the float placeholder ``x2:0``: the serialized examples
    fed to it fail the request as TF Serving's one session run does."""
    request = _request(
        "default", ("regress_x_to_y", "regress"), ("regress_x2_to_y3", "regress"), x=2.0
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.MultiInference(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Expects arg[1] to be float but string is provided"


def test_duplicate_signature(stub: Any) -> None:
    request = _request("tf2", ("regress_x_to_y", "regress"), ("regress_x_to_y", "regress"), x=2.0)
    with pytest.raises(grpc.RpcError) as info:
        stub.MultiInference(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Duplicate evaluation of signature: regress_x_to_y"
