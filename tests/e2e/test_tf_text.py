"""SavedModels using TF Text ops, end to end: the real command, REST and the official gRPC stub.

TF Serving's ``test_tf_text``: a model whose ``serving_default`` maps ``x`` (float, [1]) to
``y = x + 1`` after running TF Text ops (constrained sequence, normalization, a tokenizer)
answers a Predict of ``x = [2.0]`` with ``3.0``. The model is exported here (as TF Text's own
``save_models.py`` exports TF Serving's ``tf_text_regression``, version ``01``); the server,
a fresh process that never imported ``tensorflow_text``, imports it when loading the model.

Without the package (its import blocked by a stand-in module earlier on ``PYTHONPATH``), the
version fails to load and its status names the missing ops and the package to install.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
VERSION = 1
TF_TEXT_OPS = (
    "CaseFoldUTF8, ConstrainedSequence, NormalizeUTF8, TFText>WhitespaceTokenizeWithOffsetsV2"
)


def export_tf_text_model(path: pathlib.Path) -> None:
    """Save a TF2 SavedModel at ``path``: ``serving_default`` maps ``x`` (float32, [1]) to
    ``{"y": x + 1}``, computed only after TF Text ops have run."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_text as text

    class TfTextOps(tf.Module):
        @tf.function
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            scores = np.array([[10.0, 12.0, 6.0, 4.0], [13.0, 12.0, 11.0, 10.0]], np.float32)
            constrained = text.viterbi_constrained_sequence(
                np.stack([scores, scores, scores]), [2, 2, 2], use_log_space=True
            )
            normalized = text.normalize_utf8(text.case_fold_utf8(["A String"]))
            tokens = text.WhitespaceTokenizer().tokenize(["a string"])
            with tf.control_dependencies([constrained, normalized, tokens]):
                y = tf.add(x, [1.0])
            return {"y": y}

    module = TfTextOps()
    call = module.__call__.get_concrete_function(tf.TensorSpec([1], tf.float32, "x"))
    tf.saved_model.save(module, str(path), signatures=call)


@pytest.fixture(scope="session")
def tf_text_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The base path of the TF Text model (one version, ``01``)."""
    base = tmp_path_factory.mktemp("tf_text") / "tf_text_regression"
    export_tf_text_model(base / "01")
    return base


@pytest.fixture(scope="module")
def server(
    tf_text_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tf_text_server")
    srv = RunningServer(
        ["--model_name=default", f"--model_base_path={tf_text_model}"], tmp / "server.log"
    )
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


def test_grpc_predict(server: RunningServer) -> None:
    """TF Serving's ``test_tf_text`` (``VerifyPredictRequest``)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.output_filter.append("y")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(request, timeout=TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [3.0]
    assert result.model_spec.name == "default"
    assert result.model_spec.signature_name == "serving_default"
    assert result.model_spec.version.value == VERSION


def test_rest_predict(server: RunningServer) -> None:
    r = server.client.post("/v1/models/default:predict", json={"instances": [2.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [3.0]}
    r = server.client.post("/v1/models/default:predict", json={"inputs": {"x": [2.0]}})
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": [3.0]}


def test_without_the_package_the_status_names_ops_and_package(
    tf_text_model: pathlib.Path,
    testdata: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in that fails to import as an absent package does, found before the real one.
    shadow = tmp_path / "shadow" / "tensorflow_text"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'tensorflow_text\'", name="tensorflow_text")\n'
    )
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")])),
    )
    # Version 1 (half_plus_two) serves; version 2, the TF Text model, arrives later.
    live = tmp_path / "live"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", live / "1")
    srv = RunningServer(
        [
            "--model_name=text",
            f"--model_base_path={live}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
        ],
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        shutil.copytree(tf_text_model / "01", live / "2")
        states = _wait_for_end(srv, "text", "2")
        message = (
            f"Op type not registered in TensorFlow: {TF_TEXT_OPS} (from the Python package "
            "tensorflow-text, which is not installed: pip install 'pyserving[text]')"
        )
        assert states["2"]["status"] == {"error_code": "NOT_FOUND", "error_message": message}
        assert states["1"]["state"] == "AVAILABLE"

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "text"
        request.model_spec.version.value = 2
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            [status] = stub.GetModelStatus(request, timeout=TIMEOUT).model_version_status
        assert status.state == get_model_status_pb2.ModelVersionStatus.END
        assert status.status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert status.status.error_message == message
        r = srv.client.post("/v1/models/text:predict", json={"instances": [[2.0]]})
        assert r.json() == {"predictions": [[3.0]]}  # version 1 still serves
    finally:
        assert srv.stop() == 0, srv.log()


def _wait_for_end(srv: RunningServer, model: str, version: str) -> dict[str, Any]:
    """The model's version states once ``version`` has ended (failed to load)."""
    deadline = time.monotonic() + TIMEOUT
    states: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = srv.client.get(f"/v1/models/{model}").json()
        states = {s["version"]: s for s in answer.get("model_version_status", [])}
        if states.get(version, {}).get("state") == "END":
            return states
        time.sleep(0.2)
    raise AssertionError(f"version {version} did not end: {states}\n{srv.log()}")
