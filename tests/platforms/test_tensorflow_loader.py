"""SavedModelLoader / SavedModelServable on TF Serving's test SavedModels.

The models of the fixtures ``tf1``, ``tf2`` and ``half_plus_three`` and the known-answer tests
run on both sources (``each_testdata``: the generated equivalents, then TF Serving's own
exports when present). Each model is loaded once per module and source (TF is slow to start);
tests that change a model's state or files load their own copy of a generated one.
"""

from __future__ import annotations

import gc
import pathlib
import shutil
import threading
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from pyserving.core.loader import ResourceEstimate, estimate_from_disk
from pyserving.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServingError,
)
from pyserving.platforms.tensorflow import (
    INIT_OP_SIGNATURE_KEY,
    SavedModelLoader,
    SavedModelServable,
    read_saved_model,
)
from pyserving.platforms.tensorflow.loader import SAVED_MODEL_OVERHEAD

X = np.array([[2.0], [3.0], [4.0]], dtype=np.float32)


def _load(path: pathlib.Path, **kwargs: object) -> SavedModelLoader:
    loader = SavedModelLoader(str(path), **kwargs)  # type: ignore[arg-type]
    loader.load()
    return loader


@pytest.fixture(scope="module")
def tf1(each_testdata: pathlib.Path) -> Iterator[SavedModelServable]:
    loader = _load(each_testdata / "saved_model_half_plus_two_cpu" / "00000123")
    yield loader.servable()
    loader.unload()


@pytest.fixture(scope="module")
def tf2(each_testdata: pathlib.Path) -> Iterator[SavedModelServable]:
    loader = _load(each_testdata / "saved_model_half_plus_two_tf2_cpu" / "00000123")
    yield loader.servable()
    loader.unload()


@pytest.fixture(scope="module")
def half_plus_three(each_testdata: pathlib.Path) -> Iterator[SavedModelServable]:
    loader = _load(each_testdata / "saved_model_half_plus_three" / "00000123")
    yield loader.servable()
    loader.unload()


def example(x: float) -> bytes:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


def examples(*xs: float) -> np.ndarray:
    array = np.empty(len(xs), dtype=object)
    array[:] = [example(x) for x in xs]
    return array


# -------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("model", ["tf1", "tf2"])
def test_half_plus_two_predict(
    model: str, each_testdata: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    # each_testdata: the fixture looked up by name below depends on it (one run per source)
    servable: SavedModelServable = request.getfixturevalue(model)
    assert servable.backend == "session"
    y = servable.run("serving_default", {"x": X})["y"]
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[3.0], [3.5], [4.0]])


@pytest.mark.parametrize("model", ["tf1", "tf2"])
def test_feed_shape_is_not_checked_against_the_placeholder(
    model: str, each_testdata: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    # TF Serving answers {"instances": [2, 3, 4]} (shape [3]) although x is [-1,1] / [1].
    servable: SavedModelServable = request.getfixturevalue(model)
    y = servable.run("serving_default", {"x": np.array([2.0, 3.0, 4.0], np.float32)})["y"]
    np.testing.assert_array_equal(y, [3.0, 3.5, 4.0])


@pytest.mark.parametrize("model", ["tf1", "tf2"])
@pytest.mark.parametrize(
    ("signature", "expected"),
    [("regress_x_to_y", 3.0), ("regress_x_to_y2", 4.0), ("classify_x_to_y", 3.0)],
)
def test_example_signatures(
    model: str,
    signature: str,
    expected: float,
    each_testdata: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    servable: SavedModelServable = request.getfixturevalue(model)
    outputs = servable.run(signature, {"inputs": examples(2.0)})
    (value,) = outputs.values()
    np.testing.assert_array_equal(value, [[expected]])


def test_half_plus_three_tf1_0_export(half_plus_three: SavedModelServable) -> None:
    assert half_plus_three.backend == "session"
    y = half_plus_three.run("serving_default", {"x": np.array([[2.0], [3.0]], np.float32)})
    np.testing.assert_array_equal(y["y"], [[4.0], [4.5]])
    assert "tensorflow/serving/regress" in half_plus_three.signature_defs


def test_counter_is_stateful(each_testdata: pathlib.Path) -> None:
    loader = _load(each_testdata / "saved_model_counter" / "00000123")
    try:
        counter = loader.servable()
        assert counter.run("incr_counter", {})["output"].item() == 1.0
        get = counter.run("get_counter", {})["output"]
        assert get.shape == () and get.dtype == np.float32 and get.item() == 1.0
        delta = np.array(2.0, np.float32)
        assert counter.run("incr_counter_by", {"delta": delta})["output"].item() == 3.0
        assert counter.run("reset_counter", {})["output"].item() == 0.0
        assert counter.run("get_counter", {})["output"].item() == 0.0
    finally:
        loader.unload()


def _assert_half_plus_two(path: pathlib.Path) -> None:
    loader = _load(path)
    try:
        y = loader.servable().run("serving_default", {"x": X})["y"]
        np.testing.assert_array_equal(y, [[3.0], [3.5], [4.0]])
    finally:
        loader.unload()


@pytest.mark.parametrize("version", ["00000123", "00000124"])
def test_two_versions_export(each_testdata: pathlib.Path, version: str) -> None:
    _assert_half_plus_two(each_testdata / "saved_model_half_plus_two_2_versions" / version)


def test_export_with_saved_model_config(tfserving_testdata: pathlib.Path) -> None:
    # assets.extra/saved_model_config.pb is not read; the model loads and answers as usual
    relative = "saved_model_half_plus_two_cpu_with_saved_model_config/00000123"
    _assert_half_plus_two(tfserving_testdata / relative)


def test_matrix_half_plus_two(each_testdata: pathlib.Path) -> None:
    loader = _load(each_testdata / "matrix_half_plus_two" / "1")
    try:
        x = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
        y = loader.servable().run("serving_default", {"x": x})["y"]
        np.testing.assert_array_equal(y, 0.5 * x + 2)
    finally:
        loader.unload()


def test_function_runtime_gives_the_same_answers(each_testdata: pathlib.Path) -> None:
    path = each_testdata / "saved_model_half_plus_two_tf2_cpu" / "00000123"
    loader = _load(path, runtime="function")
    try:
        servable = loader.servable()
        assert servable.backend == "function"
        y = servable.run("serving_default", {"x": np.array([2.0, 3.0, 4.0], np.float32)})
        np.testing.assert_array_equal(y["y"], [3.0, 3.5, 4.0])
        outputs = servable.run("regress_x_to_y", {"inputs": examples(2.0)})
        np.testing.assert_array_equal(outputs["outputs"], [[3.0]])
        with pytest.raises(InvalidArgument, match=r"Expects arg\[0\] to be float"):
            servable.run("serving_default", {"x": np.array([1.0])})
    finally:
        loader.unload()


def test_keras3_export_without_saver_restorable_variables(tmp_path: pathlib.Path) -> None:
    # A Keras 3 model saved with tf.saved_model.save keeps its weights only in the object
    # graph: TF Serving loads it and then fails every request ("Could not find variable").
    import keras

    inputs = keras.Input((2,), name="x")
    dense = keras.layers.Dense(1, name="dense", kernel_initializer="ones", bias_initializer="ones")
    tf.saved_model.save(keras.Model(inputs, dense(inputs)), str(tmp_path / "1"))
    x = {"inputs": np.array([[1.0, 2.0]], np.float32)}

    loader = _load(tmp_path / "1")
    try:
        assert loader.servable().backend == "function"
        np.testing.assert_array_equal(
            loader.servable().run("serving_default", x)["output_0"], [[4.0]]
        )
    finally:
        loader.unload()

    loader = _load(tmp_path / "1", runtime="session")
    try:
        with pytest.raises(FailedPrecondition, match=r"^Could not find variable dense/"):
            loader.servable().run("serving_default", x)
    finally:
        loader.unload()


def test_tf1_runtime_function_is_refused(each_testdata: pathlib.Path) -> None:
    # tf.saved_model.load rejects half_plus_three: its signatures declare no shapes (scalars)
    # for tensors of shape [-1, 1]
    loader = SavedModelLoader(
        str(each_testdata / "saved_model_half_plus_three" / "00000123"), runtime="function"
    )
    with pytest.raises(ServingError):
        loader.load()
    with pytest.raises(FailedPrecondition):
        loader.servable()


# -------------------------------------------------------------------------- signatures


def test_signature_defs_come_from_the_meta_graph(
    each_testdata: pathlib.Path, tf2: SavedModelServable
) -> None:
    path = each_testdata / "saved_model_half_plus_two_tf2_cpu" / "00000123"
    saved = read_saved_model(str(path))
    on_disk = saved.meta_graphs[0].signature_def
    assert INIT_OP_SIGNATURE_KEY in on_disk
    assert INIT_OP_SIGNATURE_KEY not in tf2.signature_defs
    assert set(tf2.signature_defs) == set(on_disk) - {INIT_OP_SIGNATURE_KEY}
    for key, signature in tf2.signature_defs.items():
        assert signature == on_disk[key]
    # the complete map (metadata reports the init op too); the graph itself is not kept
    assert dict(tf2.meta_graph.signature_def) == dict(on_disk)
    assert not tf2.meta_graph.HasField("graph_def")
    assert tf2.meta_graph.HasField("object_graph_def")
    assert tf2.tags == ("serve",)
    with pytest.raises(TypeError):
        tf2.signature_defs["x"] = on_disk["serving_default"]  # type: ignore[index]


def test_signature_defaults_fill_missing_inputs(tf2: SavedModelServable) -> None:
    # the TF2 export gives serving_default's x a default of [0.0]
    np.testing.assert_array_equal(tf2.run("serving_default", {})["y"], [2.0])


def test_output_keys_select_and_order_outputs(tf1: SavedModelServable) -> None:
    outputs = tf1.run("serving_default", {"x": X}, ["y"])
    assert list(outputs) == ["y"]
    with pytest.raises(InvalidArgument) as info:
        tf1.run("serving_default", {"x": X}, ["z"])
    assert info.value.message == (
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}."
    )
    with pytest.raises(InvalidArgument) as info:
        tf1.run("serving_default", {"x": X}, ["y", "y"])
    assert info.value.message == "duplicate output tensor alias: y"


# -------------------------------------------------------------------------- request errors


def test_unknown_signature(tf1: SavedModelServable) -> None:
    with pytest.raises(FailedPrecondition) as info:
        tf1.run("foo", {"x": X})
    assert info.value.message == 'Serving signature key "foo" not found.'


def test_missing_input(tf1: SavedModelServable) -> None:
    with pytest.raises(InvalidArgument) as info:
        tf1.run("serving_default", {})
    assert info.value.message == (
        "input size does not match signature: 0!=1 len({}) != len({x}). "
        "Sent extra: {}. Missing but required: {x}."
    )


def test_extra_input(tf1: SavedModelServable) -> None:
    with pytest.raises(InvalidArgument) as info:
        tf1.run("serving_default", {"x": X, "z": X})
    assert info.value.message == (
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
        "Sent extra: {z}. Missing but required: {}."
    )


def test_wrong_input_name(tf1: SavedModelServable) -> None:
    with pytest.raises(InvalidArgument) as info:
        tf1.run("serving_default", {"z": X})
    assert info.value.message == (
        "Signature input alias: x(feed name: x:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {z}, or default input alias set: "
    )


def test_wrong_input_name_with_defaults(tf2: SavedModelServable) -> None:
    with pytest.raises(InvalidArgument) as info:
        tf2.run("serving_default", {"z": X})
    assert info.value.message == (
        "Inputs contains invalid name. Used request inputs: , request input: z"
    )


@pytest.mark.parametrize(
    ("value", "provided"),
    [
        (X.astype(np.float64), "double"),
        (X.astype(np.int32), "int32"),
        (np.array([b"a"], dtype=object), "string"),
    ],
)
def test_wrong_dtype(tf1: SavedModelServable, value: np.ndarray, provided: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        tf1.run("serving_default", {"x": value})
    assert info.value.message == f"Expects arg[0] to be float but {provided} is provided"


def test_string_inputs_accept_str_and_bytes_arrays(tf1: SavedModelServable) -> None:
    serialized = example(2.0)
    for value in (np.array([serialized]), np.array([serialized], dtype=object)):
        outputs = tf1.run("regress_x_to_y", {"inputs": value})
        np.testing.assert_array_equal(outputs["outputs"], [[3.0]])
    with pytest.raises(InvalidArgument):  # unicode text is not a parseable tf.Example
        tf1.run("regress_x_to_y", {"inputs": np.array(["not an example"])})


def test_tf_runtime_errors_keep_code_and_message(tf1: SavedModelServable) -> None:
    garbage = np.array([b"not a tf.Example"], dtype=object)
    with pytest.raises(InvalidArgument) as info:
        tf1.run("regress_x_to_y", {"inputs": garbage})
    assert "Could not parse example input" in info.value.message


def test_concurrent_runs(tf1: SavedModelServable) -> None:
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(50):
                x = np.full((4, 1), float(seed * 100 + i), np.float32)
                np.testing.assert_array_equal(tf1.run("serving_default", {"x": x})["y"], x / 2 + 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -------------------------------------------------------------------------- load errors


def test_bad_half_plus_two_fails_cleanly(testdata: pathlib.Path) -> None:
    path = testdata / "bad_half_plus_two" / "00000123"
    loader = SavedModelLoader(str(path))
    with pytest.raises(NotFound) as info:
        loader.load()
    assert info.value.message == (
        "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
        f"{path}. Check that the directory exists and that you have the right permissions "
        "for accessing it."
    )
    with pytest.raises(FailedPrecondition):
        loader.servable()
    loader.unload()  # nothing to do, must not raise


def test_missing_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotFound, match="Could not find SavedModel"):
        SavedModelLoader(str(tmp_path / "nope")).load()


def test_unknown_tags_list_the_available_tag_sets(testdata: pathlib.Path) -> None:
    loader = SavedModelLoader(str(testdata / "saved_model_half_plus_two_cpu" / "00000123"), ["gpu"])
    with pytest.raises(NotFound) as info:
        loader.load()
    assert info.value.message == (
        "Could not find meta graph def matching supplied tags: { gpu }. "
        "Available tag-sets in the SavedModel: { serve }"
    )


def test_tags_string_is_comma_separated() -> None:
    assert SavedModelLoader("/x", "serve, gpu").tags == ("serve", "gpu")


def test_corrupt_saved_model(tmp_path: pathlib.Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(DataLoss, match="as binary proto"):
        SavedModelLoader(str(tmp_path)).load()


def test_pbtxt_export_loads(testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    source = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    target = tmp_path / "1"
    shutil.copytree(source, target)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((target / "saved_model.pb").read_bytes())
    (target / "saved_model.pb").unlink()
    (target / "saved_model.pbtxt").write_text(text_format.MessageToString(proto))
    loader = _load(target)
    try:
        y = loader.servable().run("serving_default", {"x": X})["y"]
        np.testing.assert_array_equal(y, [[3.0], [3.5], [4.0]])
    finally:
        loader.unload()


def test_missing_variables_load_but_requests_fail(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # As TF Serving's loader: no variables/variables.index means nothing to restore.
    target = tmp_path / "1"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", target)
    shutil.rmtree(target / "variables")
    loader = _load(target)
    try:
        with pytest.raises(FailedPrecondition, match="uninitialized"):
            loader.servable().run("serving_default", {"x": X})
    finally:
        loader.unload()


def test_corrupt_variables_fail_to_load(testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    target = tmp_path / "1"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", target)
    (target / "variables" / "variables.data-00000-of-00001").write_bytes(b"")
    loader = SavedModelLoader(str(target))
    with pytest.raises(ServingError):
        loader.load()
    with pytest.raises(FailedPrecondition):
        loader.servable()
    # a retry after fixing the files succeeds
    shutil.copy(
        testdata
        / "saved_model_half_plus_two_cpu"
        / "00000123"
        / "variables"
        / "variables.data-00000-of-00001",
        target / "variables",
    )
    loader.load()
    loader.unload()


# -------------------------------------------------------------------------- lifecycle


def test_estimate_is_cached_from_disk_plus_the_overhead(testdata: pathlib.Path) -> None:
    path = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    loader = SavedModelLoader(str(path))
    first = loader.estimate_resources()
    assert first == estimate_from_disk(path) + ResourceEstimate(ram_bytes=SAVED_MODEL_OVERHEAD)
    assert first.ram_bytes > 0
    assert loader.estimate_resources() is first


def test_unload_frees_the_session(testdata: pathlib.Path) -> None:
    loader = _load(testdata / "saved_model_half_plus_two_cpu" / "00000123")
    servable = loader.servable()
    graph = weakref.ref(servable._runner._graph)  # type: ignore[union-attr, attr-defined]
    session = servable._runner._session  # type: ignore[union-attr, attr-defined]
    assert servable.run("serving_default", {"x": X})["y"].shape == (3, 1)
    with pytest.raises(FailedPrecondition):
        loader.load()  # already loaded
    loader.unload()
    assert servable.closed
    assert session._closed
    with pytest.raises(FailedPrecondition):
        loader.servable()
    with pytest.raises(FailedPrecondition):
        servable.run("serving_default", {"x": X})
    del servable, session
    gc.collect()
    assert graph() is None
    loader.unload()  # idempotent


def test_session_config_from_file_and_thread_flags(testdata: pathlib.Path) -> None:
    """--tensorflow_session_config_file is the base; positive thread flags override it; with
    neither, ops run in the calling thread (inter_op_parallelism_threads < 0)."""
    from tensorflow.core.protobuf import config_pb2

    path = str(next((testdata / "saved_model_half_plus_two_cpu").iterdir()))
    base = config_pb2.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=3)
    base.graph_options.optimizer_options.do_constant_folding = True
    from_file = SavedModelLoader(path, session_config=base.SerializeToString())
    config = from_file.config_proto()
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (1, 3)
    assert config.graph_options.optimizer_options.do_constant_folding
    flagged = SavedModelLoader(
        path, intra_op_threads=2, inter_op_threads=2, session_config=base.SerializeToString()
    ).config_proto()
    assert (flagged.intra_op_parallelism_threads, flagged.inter_op_parallelism_threads) == (2, 2)
    assert SavedModelLoader(path).config_proto().inter_op_parallelism_threads == -1
    from_file.load()
    try:
        out = from_file.servable().run("serving_default", {"x": np.array([[2.0]], np.float32)})
        np.testing.assert_allclose(out["y"], [[3.0]])
    finally:
        from_file.unload()
