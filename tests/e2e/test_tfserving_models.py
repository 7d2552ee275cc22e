"""TF Serving's own test models, served by the real command, over REST and gRPC.

The rest of the end-to-end suite serves the generated equivalents (``testdata``). This module
serves the exports TF Serving itself is tested with (made by TF 1.0 to 2.14) and checks the
known answers on them, and compares model metadata with TF Serving's recorded answers (the
metadata JSON files, which only that tree has). Skipped when TF Serving's models are absent.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.e2e.server import RunningServer
from tests.e2e.test_grpc import example_input, float_tensor, predict_request, tensor_values

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def server(
    tfserving_testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tfserving")
    data = tfserving_testdata
    config = tmp / "models.config"
    config.write_text(
        f"""
model_config_list {{
  config {{ name: "default" base_path: "{data / "saved_model_half_plus_two_cpu"}" }}
  config {{ name: "tf2" base_path: "{data / "saved_model_half_plus_two_tf2_cpu"}" }}
  config {{ name: "half_plus_three" base_path: "{data / "saved_model_half_plus_three"}" }}
  config {{ name: "counter" base_path: "{data / "saved_model_counter"}" }}
  config {{ name: "matrix" base_path: "{data / "matrix_half_plus_two"}" }}
  config {{ name: "two" base_path: "{data / "saved_model_half_plus_two_2_versions"}"
           model_version_policy {{ all {{}} }} }}
}}
"""
    )
    srv = RunningServer([f"--model_config_file={config}"], tmp / "server.log")
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def post(server: RunningServer, path: str, body: object) -> tuple[int, Any]:
    r = server.client.post(path, content=json.dumps(body))
    return r.status_code, r.json()


def recorded(tfserving_testdata: pathlib.Path, name: str) -> Any:
    """A metadata answer TF Serving gave (REST JSON)."""
    return json.loads((tfserving_testdata / name).read_text())


# ----------------------------------------------------------------------------- REST


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("default", [[3.0], [3.5]]),
        ("tf2", [[3.0], [3.5]]),
        ("half_plus_three", [[4.0], [4.5]]),
    ],
)
def test_rest_predict(server: RunningServer, model: str, expected: list[list[float]]) -> None:
    status, body = post(server, f"/v1/models/{model}:predict", {"instances": [[2.0], [3.0]]})
    assert status == 200, body
    assert body == {"predictions": expected}


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_rest_classify_and_regress(server: RunningServer, model: str) -> None:
    status, body = post(
        server,
        f"/v1/models/{model}:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]},
    )
    assert status == 200, body
    assert body == {"results": [3.0, 4.0]}
    status, body = post(
        server,
        f"/v1/models/{model}:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
    )
    assert status == 200, body
    assert body["results"][0][0][1] == 3.0


def test_rest_counter_and_matrix(server: RunningServer) -> None:
    body = {"signature_name": "incr_counter_by", "inputs": {"delta": 2.0}}
    status, first = post(server, "/v1/models/counter:predict", body)
    assert status == 200, first
    status, second = post(server, "/v1/models/counter:predict", body)
    assert status == 200, second
    assert second["outputs"] == first["outputs"] + 2.0
    x = [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]
    status, answer = post(server, "/v1/models/matrix:predict", {"instances": x})
    assert status == 200, answer
    assert answer["predictions"] == [[[v / 2 + 2 for v in row] for row in x[0]]]


def test_rest_metadata_matches_tf_serving(
    server: RunningServer, tfserving_testdata: pathlib.Path
) -> None:
    expected = recorded(tfserving_testdata, "half_plus_two_model_metadata.json")
    for path in ("/v1/models/default/metadata", "/v1/models/default/versions/123/metadata"):
        r = server.client.get(path)
        assert r.status_code == 200, r.text
        assert r.json() == expected


def test_rest_metadata_two_versions(
    server: RunningServer, tfserving_testdata: pathlib.Path
) -> None:
    expected = recorded(tfserving_testdata, "saved_model_half_plus_two_2_versions_metadata.json")
    version = expected["model_spec"]["version"]
    got = server.client.get(f"/v1/models/two/versions/{version}/metadata").json()
    got["model_spec"]["name"] = expected["model_spec"]["name"]
    assert got == expected


# ----------------------------------------------------------------------------- gRPC


@pytest.mark.parametrize(
    ("model", "expected"),
    [("default", [[3.0], [3.5]]), ("tf2", [[3.0], [3.5]]), ("half_plus_three", [[4.0], [4.5]])],
)
def test_grpc_predict(stub: Any, model: str, expected: list[list[float]]) -> None:
    request = predict_request(model, {"x": float_tensor([2.0, 3.0], (2, 1))})
    response = stub.Predict(request, timeout=TIMEOUT)
    np.testing.assert_array_equal(tensor_values(response.outputs["y"]), expected)
    assert response.model_spec.version.value == 123


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_grpc_classify_and_regress(stub: Any, model: str) -> None:
    classify = classification_pb2.ClassificationRequest(input=example_input(2.0))
    classify.model_spec.name = model
    classify.model_spec.signature_name = "classify_x_to_y"
    [classifications] = stub.Classify(classify, timeout=TIMEOUT).result.classifications
    assert classifications.classes[0].score == pytest.approx(3.0)
    regress = regression_pb2.RegressionRequest(input=example_input(2.0))
    regress.model_spec.name = model
    regress.model_spec.signature_name = "regress_x_to_y2"
    [regression] = stub.Regress(regress, timeout=TIMEOUT).result.regressions
    assert regression.value == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("model", "version", "answer"),
    [
        ("default", None, "half_plus_two_model_metadata.json"),
        ("two", 123, "saved_model_half_plus_two_2_versions_metadata.json"),
    ],
)
def test_grpc_metadata_matches_tf_serving(
    stub: Any, tfserving_testdata: pathlib.Path, model: str, version: int | None, answer: str
) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    response = stub.GetModelMetadata(request, timeout=TIMEOUT)
    assert response.model_spec.version.value == 123
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    expected = json_format.ParseDict(
        recorded(tfserving_testdata, answer)["metadata"]["signature_def"],
        get_model_metadata_pb2.SignatureDefMap(),
    )
    assert signatures == expected
