"""Warmup with real SavedModels: records replayed before AVAILABLE; a bad file fails the load."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_log_pb2

from pyserving import codec
from pyserving.config import ModelServerConfig, parse_text_proto
from pyserving.core.manager import ManagerOptions
from pyserving.core.monitor import ManagerState
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.metrics import ServerMetrics
from pyserving.warmup import WARMUP_FILE, load_warmup_records


def predict_log(signature: str = "serving_default", x: float = 2.0) -> bytes:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "m"
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(np.array([[x]], np.float32)))
    return log.SerializeToString()


def regress_log() -> bytes:
    log = prediction_log_pb2.PredictionLog()
    request = log.regress_log.request
    request.model_spec.signature_name = "regress_x_to_y"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)
    return log.SerializeToString()


def write_warmup(version_dir: pathlib.Path, records: list[bytes]) -> None:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


@pytest.fixture
def model(testdata: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", base)
    return base


@pytest.fixture
def metrics() -> ServerMetrics:
    return ServerMetrics()


@pytest.fixture
def core(metrics: ServerMetrics) -> Iterator[ServerCore]:
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1, max_num_load_retries=0),
        file_system_poll_wait_seconds=0,
        settle_timeout=60,
        warmup_iterations=3,
    )
    with ServerCore(options, metrics) as c:
        c.manager.bus.subscribe(metrics.on_state)
        yield c


def config_for(base: pathlib.Path) -> ModelServerConfig:
    config = ModelServerConfig()
    parse_text_proto(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" }} }}',
        config,
        "tensorflow.serving.ModelServerConfig",
    )
    return config


def test_records_are_read(model: pathlib.Path) -> None:
    write_warmup(model / "00000123", [predict_log(), regress_log()])
    records = load_warmup_records(str(model / "00000123"))
    assert [r.WhichOneof("log_type") for r in records] == ["predict_log", "regress_log"]


def test_warmup_replayed_and_counted(
    core: ServerCore, metrics: ServerMetrics, model: pathlib.Path
) -> None:
    write_warmup(model / "00000123", [predict_log(), regress_log()])
    core.reload_config(config_for(model))
    assert core.manager.available_versions("m") == [123]
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    warmup = families[":tensorflow:serving:model_warmup_latency"]
    count = next(s.value for s in warmup.samples if s.name.endswith("_count"))
    assert count == 1


def test_warmup_on_unknown_signature_fails_the_load(core: ServerCore, model: pathlib.Path) -> None:
    write_warmup(model / "00000123", [predict_log(signature="nope")])
    core.reload_config(config_for(model))
    [state] = core.model_status("m")
    assert state.state is ManagerState.END
    assert state.error is not None
    assert "Warmup record 0" in state.error.message and "nope" in state.error.message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x05\x00\x00", "truncated record"),  # a record header cut short
        (b"this is not a tfrecord at all" * 5, "corrupted record at 0"),  # length's CRC wrong
    ],
)
def test_malformed_warmup_file_fails_the_load(
    core: ServerCore, model: pathlib.Path, content: bytes, reason: str
) -> None:
    path = model / "00000123" / WARMUP_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    core.reload_config(config_for(model))
    [state] = core.model_status("m")
    assert state.state is ManagerState.END
    assert state.error is not None and state.error.code.name == "DATA_LOSS", state.error
    assert f"Failed to read warmup data in {path}" in state.error.message
    assert reason in state.error.message
    assert "Please verify your warmup data is in TFRecord format." in state.error.message


def test_no_warmup_file_is_fine(core: ServerCore, model: pathlib.Path) -> None:
    core.reload_config(config_for(model))
    assert core.manager.available_versions("m") == [123]
