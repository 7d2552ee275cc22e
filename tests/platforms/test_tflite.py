"""TfLiteLoader / TfLiteServable / InterpreterPool on TF Serving's TFLite test models.

``saved_model_half_plus_two_tflite`` has no SignatureDefs (input tensor ``x``, output ``y``,
both [1,1] float); ``saved_model_half_plus_two_tflite_with_sigdef`` has a ``serving_default``
SignatureDef in its ``signature_defs_metadata`` mapping ``x`` to tensor ``tflite_input:0``.
"""

from __future__ import annotations

import pathlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from pyserving import codec, inference
from pyserving.batching import BatchingLoader, BatchingOptions
from pyserving.core.loader import DISK_SIZE_RAM_MULTIPLIER
from pyserving.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from pyserving.platforms.tensorflow import SavedModelServable
from pyserving.platforms.tflite import (
    TFLITE_MODEL_FILENAME,
    InterpreterPool,
    TfLiteLoader,
    TfLiteServable,
    has_tflite_model,
    model_signatures,
    read_signature_defs,
)
from pyserving.platforms.tflite.loader import default_signature_keys
from pyserving.warmup import WarmupLoader

VERSION = "00000123"
PLAIN = "saved_model_half_plus_two_tflite"
WITH_SIGDEF = "saved_model_half_plus_two_tflite_with_sigdef"


def _load(path: pathlib.Path, pools: int = 1, per_pool: int = 1) -> TfLiteLoader:
    loader = TfLiteLoader(str(path), pools, per_pool)
    loader.load()
    return loader


@pytest.fixture(scope="module")
def plain(testdata: pathlib.Path) -> Iterator[TfLiteServable]:
    loader = _load(testdata / PLAIN / VERSION, 2, 2)
    yield loader.servable()
    loader.unload()


@pytest.fixture(scope="module")
def with_sigdef(testdata: pathlib.Path) -> Iterator[TfLiteServable]:
    loader = _load(testdata / WITH_SIGDEF / VERSION)
    yield loader.servable()
    loader.unload()


def _model_bytes(testdata: pathlib.Path, name: str = PLAIN) -> bytes:
    return (testdata / name / VERSION / TFLITE_MODEL_FILENAME).read_bytes()


def _version_with(tmp_path: pathlib.Path, model: bytes) -> pathlib.Path:
    version = tmp_path / "model" / VERSION
    version.mkdir(parents=True)
    (version / TFLITE_MODEL_FILENAME).write_bytes(model)
    return version


def _tensor_info(name: str, shape: list[int]) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=name, dtype=types_pb2.DT_FLOAT)
    for size in shape:
        info.tensor_shape.dim.add().size = size
    return info


def _with_metadata(model: bytes, name: str, data: bytes) -> bytes:
    """``model`` with one more metadata entry ``name`` holding ``data``."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = list(data)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = [*(tree.metadata or []), entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _with_signatures(model: bytes, signatures: dict[str, meta_graph_pb2.SignatureDef]) -> bytes:
    """``model`` with ``signatures`` as TFLite's ``signature_defs_metadata`` (values as
    FlexBuffer blobs)."""
    from flatbuffers import flexbuffers

    builder = flexbuffers.Builder()
    with builder.Map():
        for key in sorted(signatures):
            builder.Blob(key, signatures[key].SerializeToString())
    return _with_metadata(model, "signature_defs_metadata", bytes(builder.Finish()))


# --------------------------------------------------------------------------- signatures


def test_model_without_signature_defs_gets_the_default_signature(
    plain: TfLiteServable,
) -> None:
    assert isinstance(plain, SavedModelServable)
    assert plain.backend == "tflite" and plain.tags == ()
    assert list(plain.signature_defs) == ["serving_default"]
    signature = plain.signature_defs["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["x"] == _tensor_info("x", [1, 1])
    assert signature.outputs["y"] == _tensor_info("y", [1, 1])
    assert list(signature.inputs) == ["x"] and list(signature.outputs) == ["y"]
    # Metadata reports exactly this map.
    metadata = inference.signature_def_map(plain)
    assert dict(metadata.signature_def) == dict(plain.signature_defs)


def test_stored_signature_def_is_served_with_legacy_tensor_names(
    with_sigdef: TfLiteServable,
) -> None:
    signature = with_sigdef.signature_defs["serving_default"]
    assert list(with_sigdef.signature_defs) == ["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    # Stored as tflite_input:0 / y:0; the model's tensors are tflite_input / y.
    assert signature.inputs["x"] == _tensor_info("tflite_input", [1, 1])
    assert signature.outputs["y"] == _tensor_info("y", [1, 1])


def test_read_signature_defs(testdata: pathlib.Path) -> None:
    assert read_signature_defs(_model_bytes(testdata, PLAIN)) == {}
    stored = read_signature_defs(_model_bytes(testdata, WITH_SIGDEF))
    assert list(stored) == ["serving_default"]
    assert stored["serving_default"].inputs["x"].name == "tflite_input:0"


def test_signature_defs_stored_as_blobs_and_full_names(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["input"].CopyFrom(_tensor_info("x", [1, 1]))
    signature.outputs["half_plus_two"].CopyFrom(_tensor_info("y", [1, 1]))
    model = _with_signatures(_model_bytes(testdata), {"predict_it": signature})
    loader = _load(_version_with(tmp_path, model))
    try:
        servable = loader.servable()
        assert dict(servable.signature_defs) == {"predict_it": signature}
        _, out = inference.predict(servable, "predict_it", {"input": np.array([[4.0]], np.float32)})
        assert out["half_plus_two"].tolist() == [[4.0]]
    finally:
        loader.unload()


def test_invalid_signature_defs_metadata_fails_the_load(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    model = _with_metadata(_model_bytes(testdata), "signature_defs_metadata", b"\x01\x02junk")
    with pytest.raises(InvalidArgument, match="Invalid SignatureDefs found in TfLite model"):
        read_signature_defs(model)
    loader = TfLiteLoader(str(_version_with(tmp_path, model)))
    with pytest.raises(InvalidArgument, match="Invalid SignatureDefs"):
        loader.load()
    with pytest.raises(FailedPrecondition):
        loader.servable()


def test_signature_naming_an_unknown_tensor_fails_the_load(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["x"].CopyFrom(_tensor_info("nowhere:0", [1, 1]))
    signature.outputs["y"].CopyFrom(_tensor_info("y:0", [1, 1]))
    model = _with_signatures(_model_bytes(testdata), {"serving_default": signature})
    with pytest.raises(Internal, match="Signature input x references an unknown tensor"):
        _load(_version_with(tmp_path, model))


def test_default_signature_keys() -> None:
    assert default_signature_keys(["x"]) == {"x": "x"}
    assert default_signature_keys(["serving_default_a:0", "b:0"]) == {
        "b": "b:0",
        "serving_default_a": "serving_default_a:0",
    }
    # Short names that collide keep their full names (TF Serving would keep only one).
    assert default_signature_keys(["PartitionedCall:1", "PartitionedCall:0", "z:0"]) == {
        "PartitionedCall:0": "PartitionedCall:0",
        "PartitionedCall:1": "PartitionedCall:1",
        "z": "z:0",
    }


def test_model_signatures_reports_dtypes_and_shapes() -> None:
    inputs = {
        "ids:0": {"name": "ids:0", "index": 0, "shape": np.array([4, 3]), "dtype": np.int64},
        "words": {"name": "words", "index": 1, "shape": np.array([1]), "dtype": np.bytes_},
    }
    outputs = {"out": {"name": "out", "index": 2, "shape": np.array([]), "dtype": np.int8}}
    (key, signature), *_ = model_signatures({}, inputs, outputs).items()
    assert key == "serving_default"
    assert signature.inputs["ids"].dtype == types_pb2.DT_INT64
    assert [d.size for d in signature.inputs["ids"].tensor_shape.dim] == [4, 3]
    assert signature.inputs["words"].dtype == types_pb2.DT_STRING
    assert signature.outputs["out"].dtype == types_pb2.DT_INT8
    assert signature.outputs["out"].tensor_shape.dim == []


# --------------------------------------------------------------------------- predict


@pytest.mark.parametrize("model", ["plain", "with_sigdef"])
def test_predict_like_tf_serving(model: str, request: pytest.FixtureRequest) -> None:
    servable: TfLiteServable = request.getfixturevalue(model)
    # TF Serving's VerifyPredictRequest: x = [2.0] of shape [1] (the model's tensor is [1,1]).
    name, out = inference.predict(servable, "", {"x": np.array([2.0], np.float32)}, ["y"])
    assert name == "serving_default"
    assert out["y"].dtype == np.float32 and out["y"].tolist() == [3.0]
    name, out = inference.predict(servable, "serving_default", {"x": np.array([2.0], np.float32)})
    assert list(out) == ["y"] and out["y"].tolist() == [3.0]


def test_inputs_of_any_batch_size_resize_the_interpreter(plain: TfLiteServable) -> None:
    for rows in (3, 1, 7, 3, 1):
        x = np.arange(rows, dtype=np.float32).reshape(rows, 1)
        _, out = inference.predict(plain, "", {"x": x})
        np.testing.assert_allclose(out["y"], x * 0.5 + 2)
    # A shape the interpreter cannot take is the request's error; the interpreter recovers.
    with pytest.raises(InvalidArgument):
        inference.predict(plain, "", {"x": np.array(4.0, np.float32)})
    _, out = inference.predict(plain, "", {"x": np.array([[4.0]], np.float32)})
    assert out["y"].tolist() == [[4.0]]


def test_request_errors_are_those_of_saved_models(plain: TfLiteServable) -> None:
    x = np.array([[1.0]], np.float32)
    with pytest.raises(FailedPrecondition, match='Serving signature key "nope" not found'):
        inference.predict(plain, "nope", {"x": x})
    with pytest.raises(InvalidArgument, match="input size does not match signature"):
        inference.predict(plain, "", {"x": x, "z": x})
    with pytest.raises(InvalidArgument, match="Expects arg\\[0\\] to be float but double"):
        inference.predict(plain, "", {"x": np.array([[1.0]])})
    with pytest.raises(InvalidArgument, match="output tensor alias not found in signature: q"):
        inference.predict(plain, "", {"x": x}, ["q"])


def test_concurrent_requests_share_the_pool(plain: TfLiteServable) -> None:
    assert plain.pool.size == 4
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(50):
                rows = 1 + (seed + i) % 4
                x = np.full((rows, 1), float(seed * 100 + i), np.float32)
                out = plain.run("serving_default", {"x": x})["y"]
                assert out.shape == (rows, 1)
                np.testing.assert_allclose(out, x * 0.5 + 2)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert plain.pool.available == 4


def test_batching_and_warmup_work_on_tflite(testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    version = _version_with(tmp_path, _model_bytes(testdata, WITH_SIGDEF))
    (version / "assets.extra").mkdir()
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(np.array([[1.0]], np.float32)))
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(log.SerializeToString())
    batches: list[int] = []
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1)
    loader = WarmupLoader(
        BatchingLoader(TfLiteLoader(str(version)), options, lambda s, r, p, q: batches.append(r)),
        str(version),
    )
    loader.load()
    try:
        assert batches == [1]  # the warmup record ran through the batching layer
        servable = loader.servable()
        futures = [
            servable.run_future("serving_default", {"x": np.array([[float(i)]], np.float32)})
            for i in range(4)
        ]
        answers = [f.result(timeout=60)["y"].tolist() for f in futures]
        assert answers == [[[0.5 * i + 2]] for i in range(4)]
        assert sum(batches[1:]) == 4 and len(batches) < 5  # merged into fewer runs
    finally:
        loader.unload()


# --------------------------------------------------------------------------- the pool


class _FakeInterpreter:
    """Just enough of ``tf.lite.Interpreter`` for the pool; ``fail`` names the step that
    raises next."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.fail = fail if fail is not None else {}
        self.shape: list[int] = [1]
        self.value: Any = None
        self.resizes: list[list[int]] = []

    def _maybe_fail(self, step: str) -> None:
        if self.fail.get(step, 0) > 0:
            self.fail[step] -= 1
            raise RuntimeError(f"{step} failed")

    def get_input_details(self) -> list[dict[str, Any]]:
        return [{"index": 0, "shape": np.array(self.shape)}]

    def resize_tensor_input(self, index: int, shape: list[int], strict: bool) -> None:
        self._maybe_fail("resize")
        self.resizes.append(list(shape))
        self.shape = list(shape)

    def allocate_tensors(self) -> None:
        self._maybe_fail("allocate")

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self.value = value

    def invoke(self) -> None:
        self._maybe_fail("invoke")

    def get_tensor(self, index: int) -> np.ndarray:
        return np.asarray(self.value) * 2

    def _get_tensor_details(self, index: int, subgraph: int) -> dict[str, Any]:
        return {"name": "in"}


def test_pool_resizes_only_when_shapes_change() -> None:
    made: list[_FakeInterpreter] = []

    def factory() -> _FakeInterpreter:
        made.append(_FakeInterpreter())
        return made[-1]

    pool = InterpreterPool(factory, 1)
    for shape in [(1,), (2,), (2,), (1,)]:
        assert pool.run([0], [np.ones(shape)], [0])[0].shape == shape
    assert made[0].resizes == [[2], [1]]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (observable state) until it holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.005)


def test_pool_is_bounded_and_close_wakes_waiters() -> None:
    pool = InterpreterPool(_FakeInterpreter, 2)
    outcome: list[object] = []
    with pool.borrow(), pool.borrow():
        assert pool.available == 0

        def third() -> None:
            try:
                with pool.borrow():
                    outcome.append("borrowed")
            except FailedPrecondition as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=third)
        waiter.start()
        wait_until(lambda: pool.waiting == 1, "the third caller to wait in borrow()")
        assert outcome == []  # waits while both are lent out
    waiter.join(5)
    assert outcome == ["borrowed"]
    assert pool.available == 2

    with pool.borrow(), pool.borrow():
        waiters = [threading.Thread(target=third) for _ in range(2)]
        for waiter in waiters:
            waiter.start()
        wait_until(lambda: pool.waiting == 2, "both callers to wait in borrow()")
        pool.close()
        for waiter in waiters:
            waiter.join(5)
    # Closing wakes every waiter with FailedPrecondition; nobody borrows any more.
    assert outcome[0] == "borrowed" and len(outcome) == 3
    assert all(isinstance(o, FailedPrecondition) for o in outcome[1:])
    assert pool.available == 0
    with pytest.raises(FailedPrecondition, match="unloaded"):
        pool.run([0], [np.ones(1)], [0])


def test_failed_call_resets_the_interpreter() -> None:
    interpreter = _FakeInterpreter({"invoke": 1})
    pool = InterpreterPool(lambda: interpreter, 1)
    with pytest.raises(Internal, match="Failed to invoke TfLite interpreter: invoke failed"):
        pool.run([0], [np.ones(3)], [0])
    assert interpreter.shape == [1]  # back to its initial shape
    assert pool.run([0], [np.ones(2)], [0])[0].tolist() == [2.0, 2.0]


def test_interpreter_that_cannot_be_reset_is_replaced() -> None:
    first = _FakeInterpreter({"allocate": 2})  # the call's allocation and the reset's fail
    second = _FakeInterpreter()
    interpreters = iter([first, second])
    pool = InterpreterPool(lambda: next(interpreters), 1)
    with pytest.raises(InvalidArgument, match="Failed to allocate"):
        pool.run([0], [np.ones(3)], [0])
    with pool.borrow() as slot:
        assert slot.interpreter is second
    second.fail["resize"] = 1
    with pytest.raises(InvalidArgument, match="Failed to resize input tensor in to \\[5\\]"):
        pool.run([0], [np.ones(5)], [0])
    assert pool.run([0], [np.ones(5)], [0])[0].tolist() == [2.0] * 5


def test_pool_needs_an_interpreter() -> None:
    with pytest.raises(ValueError, match="at least one"):
        InterpreterPool(_FakeInterpreter, 0)


# --------------------------------------------------------------------------- lifecycle


def test_estimate_is_the_file_size_per_interpreter(testdata: pathlib.Path) -> None:
    path = testdata / PLAIN / VERSION
    size = (path / TFLITE_MODEL_FILENAME).stat().st_size
    assert TfLiteLoader(str(path)).estimate_resources().ram_bytes == int(
        size * DISK_SIZE_RAM_MULTIPLIER
    )
    loader = TfLiteLoader(str(path), 3, 2)
    assert loader.num_interpreters == 6
    assert loader.estimate_resources().ram_bytes == int(size * DISK_SIZE_RAM_MULTIPLIER * 6)
    assert TfLiteLoader(str(path), 0, -1).num_interpreters == 1


def test_unload_releases_the_interpreters(testdata: pathlib.Path) -> None:
    loader = _load(testdata / PLAIN / VERSION)
    servable = loader.servable()
    with pytest.raises(FailedPrecondition, match="already loaded"):
        loader.load()
    loader.unload()
    loader.unload()  # idempotent
    assert servable.closed
    with pytest.raises(FailedPrecondition):
        servable.run("serving_default", {"x": np.array([[1.0]], np.float32)})
    with pytest.raises(FailedPrecondition, match="not loaded"):
        loader.servable()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="half-copied"),
        pytest.param(lambda b: b[:-8], id="truncated"),
        pytest.param(lambda b: b[:12], id="header-only"),
        pytest.param(lambda b: b"PK\x03\x04 not a flatbuffer at all" * 4, id="junk"),
    ],
)
def test_corrupt_model_is_a_clean_load_error(
    damage: Any, testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    loader = TfLiteLoader(str(_version_with(tmp_path, damage(_model_bytes(testdata)))))
    with pytest.raises(DataLoss, match="is not a valid TFLite model"):
        loader.load()
    with pytest.raises(FailedPrecondition):
        loader.servable()
    loader.unload()  # nothing loaded: a no-op


def test_empty_or_missing_model(tmp_path: pathlib.Path) -> None:
    version = _version_with(tmp_path, b"")
    with pytest.raises(DataLoss, match="is empty"):
        TfLiteLoader(str(version)).load()
    (version / TFLITE_MODEL_FILENAME).unlink()
    assert not has_tflite_model(version)
    assert TfLiteLoader(str(version)).estimate_resources().ram_bytes == 0
    with pytest.raises(NotFound, match=r"Could not find model\.tflite"):
        TfLiteLoader(str(version)).load()


def test_duplicate_tensor_names_fail() -> None:
    from pyserving.platforms.tflite.loader import _tensor_map

    with pytest.raises(AlreadyExists, match="Input tensor name: x has multiple indices"):
        _tensor_map([{"name": "x", "index": 0}, {"name": "x", "index": 1}], "Input")


# --------------------------------------------------------------------------- ServerCore


def _core_config(name: str, base_path: pathlib.Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = str(base_path)
    return config


def test_server_core_prefers_model_tflite_only_when_asked(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from pyserving.core.manager import ManagerOptions
    from pyserving.server.core import ServerCore, ServerCoreOptions

    # A version holding both a SavedModel and model.tflite.
    base = tmp_path / "both"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / VERSION, base / VERSION)
    shutil.copy(testdata / PLAIN / VERSION / TFLITE_MODEL_FILENAME, base / VERSION)
    for prefer, kind in ((True, TfLiteServable), (False, SavedModelServable)):
        options = ServerCoreOptions(
            manager=ManagerOptions(max_num_load_retries=0),
            file_system_poll_wait_seconds=0,
            prefer_tflite_model=prefer,
            num_tflite_pools=2,
            num_tflite_interpreters_per_pool=3,
            settle_timeout=120,
        )
        with ServerCore(options) as core:
            config = _core_config("both", base)
            markers = core._source_config(config.model_config_list.config[0]).complete_markers
            assert (TFLITE_MODEL_FILENAME in markers) is prefer
            core.reload_config(config)
            with core.handle("both") as handle:
                servable = handle.servable
                assert type(servable) is kind
                if isinstance(servable, TfLiteServable):
                    assert servable.pool.size == 6
                _, out = inference.predict(servable, "", {"x": np.array([[2.0]], np.float32)})
                assert out["y"].tolist() == [[3.0]]


@pytest.mark.parametrize("name", [PLAIN, WITH_SIGDEF])
def test_on_each_source_of_test_models(each_testdata: pathlib.Path, name: str) -> None:
    loader = _load(each_testdata / name / VERSION)
    try:
        servable = loader.servable()
        signature = servable.signature_defs["serving_default"]
        assert (list(signature.inputs), list(signature.outputs)) == (["x"], ["y"])
        _, out = inference.predict(servable, "", {"x": np.array([2.0], np.float32)}, ["y"])
        assert out["y"].tolist() == [3.0]
    finally:
        loader.unload()
