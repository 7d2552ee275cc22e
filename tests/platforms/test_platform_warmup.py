"""Warmup records (``assets.extra/tf_serving_warmup_requests``) are replayed for models of
the non-TensorFlow platforms as for SavedModels: a good record warms the model up, a bad one
fails the version's load."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pyserving import codec
from pyserving.errors import InvalidArgument
from pyserving.platforms.registry import PlatformOptions, detect_platform
from pyserving.warmup import WARMUP_FILE, WarmupLoader

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _examples() -> Any:
    spec = importlib.util.spec_from_file_location(
        "pyserving_examples_warmup", ROOT / "examples" / "platforms.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write_warmup(version: pathlib.Path, rows: np.ndarray) -> None:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = "iris"
    log.predict_log.request.inputs["inputs"].CopyFrom(codec.ndarray_to_tensor_proto(rows))
    (version / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(version / WARMUP_FILE)) as writer:
        writer.write(log.SerializeToString())


def test_onnx_warmup(tmp_path: pathlib.Path) -> None:
    version = _examples().export_onnx_iris(tmp_path / "iris")
    _write_warmup(version, np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    inner = detect_platform(str(version), PlatformOptions()).loader(str(version), PlatformOptions())
    warmed: list[float] = []
    loader = WarmupLoader(inner, str(version), 2, warmed.append)
    loader.load()
    try:
        assert len(warmed) == 1
    finally:
        loader.unload()
    # A record the model cannot take fails the load.
    _write_warmup(version, np.array([1.0, 2.0], dtype=np.float32))
    inner = detect_platform(str(version), PlatformOptions()).loader(str(version), PlatformOptions())
    with pytest.raises(InvalidArgument, match="Warmup record 0"):
        WarmupLoader(inner, str(version)).load()
