"""Batching through the real server: concurrent REST and gRPC requests merged and split back."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving import codec
from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(
    testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("batching")
    params = tmp / "batching.config"
    params.write_text(
        "max_batch_size { value: 16 }\n"
        "batch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n"
    )
    config = tmp / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{ name: "half_plus_two" base_path: "{testdata / "saved_model_half_plus_two_cpu"}" }}
  config {{ name: "matrix" base_path: "{testdata / "matrix_half_plus_two"}" }}
}}"""
    )
    srv = RunningServer(
        [
            f"--model_config_file={config}",
            "--enable_batching",
            f"--batching_parameters_file={params}",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


def rest_predict(server: RunningServer, model: str, x: list) -> list:
    r = server.client.post(f"/v1/models/{model}:predict", content=json.dumps({"instances": x}))
    assert r.status_code == 200, r.text
    return r.json()["predictions"]  # type: ignore[no-any-return]


def grpc_predict(port: int, x: np.ndarray) -> np.ndarray:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(x))
        response = stub.Predict(request, timeout=60)
        return codec.tensor_proto_to_ndarray(response.outputs["y"])


def metric_families(server: RunningServer) -> dict[str, Any]:
    """One scrape of ``server``'s Prometheus metrics, by family name."""
    r = server.client.get("/monitoring/prometheus/metrics")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def batch_size_stats(families: dict[str, Any]) -> dict[str, float]:
    """``processed_batch_size``'s ``count`` and ``sum`` (every model) in a scrape."""
    sizes = families[":tensorflow:serving:batching_session:processed_batch_size"]
    return {s.name.rsplit("_", 1)[-1]: s.value for s in sizes.samples if "le" not in s.labels}


def test_concurrent_requests_get_their_own_answers(server: RunningServer) -> None:
    jobs = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for i in range(48):
            rows = [[float(i * 10 + r)] for r in range(1 + i % 3)]
            if i % 2:
                jobs.append((rows, pool.submit(rest_predict, server, "half_plus_two", rows)))
            else:
                x = np.array(rows, np.float32)
                jobs.append((rows, pool.submit(grpc_predict, server.grpc_port, x)))
        for rows, future in jobs:
            got = np.asarray(future.result(), np.float32)
            np.testing.assert_allclose(got, np.asarray(rows, np.float32) * 0.5 + 2)


def test_matrix_model_batches(server: RunningServer) -> None:
    x = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    got = rest_predict(server, "matrix", x.tolist())
    np.testing.assert_allclose(got, x * 0.5 + 2)


def test_batch_metrics(server: RunningServer) -> None:
    rest_predict(server, "half_plus_two", [[1.0]])
    r = server.client.get("/monitoring/prometheus/metrics")
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    sizes = families[":tensorflow:serving:batching_session:processed_batch_size"]
    count = next(
        s.value
        for s in sizes.samples
        if s.name.endswith("_count") and s.labels["model_name"] == "half_plus_two"
    )
    assert count >= 1
    padding = families[":tensorflow:serving:batching_session:padding_size"]
    assert any(s.name.endswith("_sum") for s in padding.samples)
    assert ":tensorflow:serving:batching_session:queuing_latency" in families


def test_requests_waiting_for_a_batch_hold_no_thread(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """One REST and one gRPC thread, batches of 8 that run only when full: 4 REST and 4 gRPC
    concurrent requests must all be queued together, so the waiting ones cannot be holding
    the threads."""
    params = tmp_path / "batching.config"
    params.write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 30000000 }\n"
        "max_enqueued_batches { value: 10 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    srv = RunningServer(
        [
            "--model_name=half_plus_two",
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
            "--enable_batching",
            f"--batching_parameters_file={params}",
            "--rest_api_num_threads=1",
            "--grpc_max_threads=1",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        ],
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            rest = [
                (i, pool.submit(rest_predict, srv, "half_plus_two", [[float(i)]])) for i in range(4)
            ]
            grpc_jobs = [
                (i, pool.submit(grpc_predict, srv.grpc_port, np.array([[float(i)]], np.float32)))
                for i in range(4, 8)
            ]
            for i, job in rest:
                assert job.result(timeout=60) == [[0.5 * i + 2.0]]
            for i, job in grpc_jobs:
                np.testing.assert_allclose(job.result(timeout=60), [[0.5 * i + 2.0]])
        stats = batch_size_stats(metric_families(srv))
        assert (stats["count"], stats["sum"]) == (1, 8)  # one batch of all eight
    finally:
        assert srv.stop() == 0, srv.log()


def test_a_platform_config_file_sets_batching_and_warmup(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """TF Serving's PlatformConfigMap alone (no --enable_batching) turns batching on with its
    parameters and replays warmup as often as its options say: one warmup record of 8 rows
    replayed twice is two batches of 8, and 8 concurrent one-row requests, held by a 30 s
    timeout until the batch is full, are a third."""
    import shutil

    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    base = tmp_path / "half_plus_two"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", base)
    record = prediction_log_pb2.PredictionLog()
    request = record.predict_log.request
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(
        codec.ndarray_to_tensor_proto(np.arange(8, dtype=np.float32).reshape(8, 1))
    )
    warmup = base / "00000123" / "assets.extra" / "tf_serving_warmup_requests"
    warmup.parent.mkdir()
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        writer.write(record.SerializeToString())
    platform = tmp_path / "platform.config"
    platform.write_text(
        'platform_configs { key: "tensorflow" value { source_adapter_config {\n'
        "  [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {\n"
        "    legacy_config {\n"
        "      session_config { intra_op_parallelism_threads: 1 }\n"
        "      batching_parameters {\n"
        "        max_batch_size { value: 8 } batch_timeout_micros { value: 30000000 }\n"
        "        num_batch_threads { value: 1 }\n"
        "      }\n"
        "      enable_model_warmup: true\n"
        "      model_warmup_options { num_request_iterations { value: 2 } }\n"
        "    }\n"
        "  }\n"
        "} } }\n"
    )
    srv = RunningServer(
        [
            "--model_name=half_plus_two",
            f"--model_base_path={base}",
            f"--platform_config_file={platform}",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        ],
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = [
                (i, pool.submit(rest_predict, srv, "half_plus_two", [[float(i)]])) for i in range(8)
            ]
            for i, job in jobs:
                assert job.result(timeout=60) == [[0.5 * i + 2.0]]
        families = metric_families(srv)
        stats = batch_size_stats(families)
        assert (stats["count"], stats["sum"]) == (3, 24), stats
        warmups = families[":tensorflow:serving:model_warmup_latency"]
        assert next(s.value for s in warmups.samples if s.name.endswith("_count")) == 1
    finally:
        assert srv.stop() == 0, srv.log()
