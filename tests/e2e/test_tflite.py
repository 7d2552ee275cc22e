"""TFLite models through the real server (``--prefer_tflite_model``), over gRPC and REST.

Two servers:

* ``plain``: started as TF Serving's ``testPredictOnTfLite`` starts it: model ``default`` at
  ``saved_model_half_plus_two_tflite`` (no SignatureDefs) with ``--prefer_tflite_model=true``.
* ``mixed``: ``default`` at ``saved_model_half_plus_two_tflite_with_sigdef`` (TF Serving's
  ``testPredictWithSignatureDefOnTfLite``), ``live`` (a TFLite model in a temporary base path
  that tests add versions to) and ``half_plus_two`` (a SavedModel, still served as one), with
  4 interpreters per TFLite version and batching on.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving import codec
from tests.e2e.server import RunningServer, run_to_exit

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
VERSION = "00000123"
PLAIN = "saved_model_half_plus_two_tflite"
WITH_SIGDEF = "saved_model_half_plus_two_tflite_with_sigdef"


@pytest.fixture(scope="module")
def plain(
    testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tflite_plain")
    srv = RunningServer(
        [
            "--model_name=default",
            f"--model_base_path={testdata / PLAIN}",
            "--prefer_tflite_model=true",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def live_base(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("tflite_live")


@pytest.fixture(scope="module")
def mixed(
    testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory, live_base: pathlib.Path
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tflite_mixed")
    shutil.copytree(testdata / PLAIN / VERSION, live_base / "1")
    params = tmp / "batching.config"
    params.write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 500000 }\n"
        "max_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 2 }\n"
    )
    config = tmp / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{ name: "default" base_path: "{testdata / WITH_SIGDEF}" }}
  config {{ name: "live" base_path: "{live_base}" }}
  config {{ name: "half_plus_two" base_path: "{testdata / "saved_model_half_plus_two_cpu"}" }}
}}"""
    )
    srv = RunningServer(
        [
            f"--model_config_file={config}",
            "--prefer_tflite_model",
            "--num_tflite_pools=2",
            "--num_tflite_interpreters_per_pool=2",
            "--enable_batching",
            f"--batching_parameters_file={params}",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
            "--max_num_load_retries=0",
            "--file_system_poll_wait_seconds=1",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


def verify_predict_request(
    port: int,
    *,
    specify_output: bool = True,
    signature_name: str = "serving_default",
    model_name: str = "default",
    version: int = int(VERSION),
) -> None:
    """TF Serving's ``VerifyPredictRequest``: x = [2.0] (shape [1]) gives y = [3.0]."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(request, TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [3.0]
    assert result.model_spec.name == model_name
    assert result.model_spec.signature_name == signature_name
    assert result.model_spec.version.value == version


def rest(server: RunningServer, path: str, body: Any) -> tuple[int, Any]:
    r = server.client.post(path, content=json.dumps(body))
    return r.status_code, r.json()


def _float_info(name: str, dims: list[int]) -> dict[str, Any]:
    shape = {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
    return {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": name}


# ----------------------------------------------------------------------------- TF Serving's


def test_predict_on_tflite(plain: RunningServer) -> None:
    """TF Serving's ``testPredictOnTfLite``."""
    verify_predict_request(plain.grpc_port, specify_output=False)
    verify_predict_request(plain.grpc_port, specify_output=True)


def test_predict_with_signature_def_on_tflite(mixed: RunningServer) -> None:
    """TF Serving's ``testPredictWithSignatureDefOnTfLite``."""
    verify_predict_request(mixed.grpc_port, specify_output=False)
    verify_predict_request(mixed.grpc_port, specify_output=True)


# ----------------------------------------------------------------------------- REST


@pytest.mark.parametrize("server_name", ["plain", "mixed"])
def test_rest_predict_row_and_columnar(server_name: str, request: pytest.FixtureRequest) -> None:
    server: RunningServer = request.getfixturevalue(server_name)
    status, body = rest(server, "/v1/models/default:predict", {"instances": [[2.0], [3.0]]})
    assert status == 200, body
    assert body == {"predictions": [[3.0], [3.5]]}
    status, body = rest(server, "/v1/models/default:predict", {"instances": [2.0, 4.0, 6.0]})
    assert (status, body) == (200, {"predictions": [3.0, 4.0, 5.0]})
    status, body = rest(
        server,
        "/v1/models/default/versions/123:predict",
        {"signature_name": "serving_default", "inputs": {"x": [[1.0]]}},
    )
    assert (status, body) == (200, {"outputs": [[2.5]]})
    status, body = rest(server, "/v1/models/default:predict", {"inputs": {"z": [[1.0]]}})
    assert status == 400 and "input" in body["error"]


def test_rest_status_and_metadata(plain: RunningServer) -> None:
    r = plain.client.get("/v1/models/default")
    assert r.json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    body = plain.client.get("/v1/models/default/metadata").json()
    assert body["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    assert body["metadata"]["signature_def"]["signature_def"] == {
        "serving_default": {
            "inputs": {"x": _float_info("x", [1, 1])},
            "outputs": {"y": _float_info("y", [1, 1])},
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }
    }


# ----------------------------------------------------------------------------- gRPC metadata


def test_grpc_metadata_of_the_signature_def_model(mixed: RunningServer) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    with grpc.insecure_channel(f"127.0.0.1:{mixed.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.GetModelMetadata(request, TIMEOUT)
    assert response.model_spec.version.value == int(VERSION)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert list(signatures.signature_def) == ["serving_default"]
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    # The stored SignatureDef names tflite_input:0; the model's tensor is tflite_input.
    assert signature.inputs["x"].name == "tflite_input"
    assert signature.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in signature.inputs["x"].tensor_shape.dim] == [1, 1]
    assert signature.outputs["y"].name == "y"


def test_saved_models_are_still_served_as_saved_models(mixed: RunningServer) -> None:
    verify_predict_request(mixed.grpc_port, model_name="half_plus_two")
    body = mixed.client.get("/v1/models/half_plus_two/metadata").json()
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["x"]["name"] == "x:0"
    assert "classify_x_to_y" in signatures


# ----------------------------------------------------------------------------- batching


def _batch_stats(server: RunningServer, model: str) -> tuple[float, float]:
    r = server.client.get("/monitoring/prometheus/metrics")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    sizes = families.get(":tensorflow:serving:batching_session:processed_batch_size")
    if sizes is None:
        return 0.0, 0.0
    stats = {
        s.name.rsplit("_", 1)[-1]: s.value
        for s in sizes.samples
        if "le" not in s.labels and s.labels.get("model_name") == model
    }
    return stats.get("count", 0.0), stats.get("sum", 0.0)


def test_concurrent_requests_are_batched(mixed: RunningServer) -> None:
    before = _batch_stats(mixed, "default")
    channel = grpc.insecure_channel(f"127.0.0.1:{mixed.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    start = threading.Barrier(8)

    def grpc_call(i: int) -> list[list[float]]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].CopyFrom(
            codec.ndarray_to_tensor_proto(np.array([[float(i)]], np.float32))
        )
        start.wait(TIMEOUT)
        response = stub.Predict(request, TIMEOUT)
        return codec.tensor_proto_to_ndarray(response.outputs["y"]).tolist()

    def rest_call(i: int) -> list[list[float]]:
        start.wait(TIMEOUT)
        status, body = rest(mixed, "/v1/models/default:predict", {"instances": [[float(i)]]})
        assert status == 200, body
        return body["predictions"]

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = [(i, pool.submit(grpc_call if i % 2 else rest_call, i)) for i in range(8)]
            for i, job in jobs:
                assert job.result(timeout=TIMEOUT) == [[0.5 * i + 2.0]]
    finally:
        channel.close()
    count, rows = (a - b for a, b in zip(_batch_stats(mixed, "default"), before, strict=True))
    assert rows == 8
    assert count < 8  # requests were merged into fewer runs of the interpreters


# ----------------------------------------------------------------------------- lifecycle


def _version_states(server: RunningServer, model: str) -> dict[str, dict[str, Any]]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = stub.GetModelStatus(request, TIMEOUT)
    return {
        str(s.version): {
            "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
            "code": s.status.error_code,
            "message": s.status.error_message,
        }
        for s in response.model_version_status
    }


def _wait_for(server: RunningServer, model: str, version: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status = _version_states(server, model).get(version)
        if status is not None and status["state"] == state:
            return status
        time.sleep(0.2)
    raise AssertionError(f"{model} {version} never reached {state}:\n{server.log()}")


def test_corrupt_model_tflite_is_a_load_error_in_model_status(
    mixed: RunningServer, live_base: pathlib.Path, testdata: pathlib.Path
) -> None:
    model = (testdata / PLAIN / VERSION / "model.tflite").read_bytes()
    # A copy that stopped half way: loaded once unchanged for two polls, and it fails.
    staging = live_base / ".staging"
    staging.mkdir()
    (staging / "model.tflite").write_bytes(model[: len(model) // 2])
    staging.rename(live_base / "2")
    bad = _wait_for(mixed, "live", "2", "END")
    assert bad["code"] == grpc.StatusCode.DATA_LOSS.value[0]
    assert "model.tflite is not a valid TFLite model" in bad["message"]
    # The previous version keeps serving.
    assert _version_states(mixed, "live")["1"]["state"] == "AVAILABLE"
    status, body = rest(mixed, "/v1/models/live:predict", {"instances": [[2.0]]})
    assert (status, body) == (200, {"predictions": [[3.0]]})
    r = mixed.client.get("/v1/models/live/versions/2")
    assert r.json()["model_version_status"][0]["status"]["error_code"] == "DATA_LOSS"

    # The copy completed in place: the changed version is loaded afresh and takes over.
    (live_base / "2" / "model.tflite").write_bytes(model)
    _wait_for(mixed, "live", "2", "AVAILABLE")
    verify_predict_request(mixed.grpc_port, model_name="live", version=2)
    status, body = rest(mixed, "/v1/models/live/versions/2:predict", {"instances": [[4.0]]})
    assert (status, body) == (200, {"predictions": [[4.0]]})


def test_corrupt_model_at_start_up_stops_the_server(tmp_path: pathlib.Path) -> None:
    (tmp_path / "model" / "7").mkdir(parents=True)
    (tmp_path / "model" / "7" / "model.tflite").write_bytes(b"TFL3 is not enough")
    result = run_to_exit(
        [
            "--port=0",
            "--model_name=broken",
            f"--model_base_path={tmp_path / 'model'}",
            "--prefer_tflite_model",
            "--max_num_load_retries=0",
        ]
    )
    assert result.returncode != 0
    assert "1 model(s) did not become available" in result.stderr
    assert "is not a valid TFLite model" in result.stderr
