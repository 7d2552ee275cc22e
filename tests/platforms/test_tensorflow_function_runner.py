"""The function runtime's two paths (``FunctionRunner``): TF2 exports restored with
``tf.saved_model.load`` run their signatures in a session (imported function graphs, the
restored variables copied in) unless they capture a resource that is not a variable, in
which case they are called eagerly with flat tensors. Both must answer exactly as the
restored functions do."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from pyserving.errors import InvalidArgument
from pyserving.platforms.tensorflow import SavedModelLoader
from pyserving.platforms.tensorflow.servable import FunctionRunner


def _load(path: pathlib.Path, runtime: Any = "function") -> SavedModelLoader:
    loader = SavedModelLoader(str(path), runtime=runtime)
    loader.load()
    return loader


def _path(loader: SavedModelLoader) -> str:
    runner = loader.servable()._runner
    assert isinstance(runner, FunctionRunner)
    return runner.path


class _TwoSignatures(tf.Module):
    """Inputs declared out of alphabetical order, two outputs, a captured constant, and a
    counter variable shared by two signatures."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = tf.Variable(10.0)
        self.count = tf.Variable(0.0)
        self.offset = tf.constant([1.0, 2.0])

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.float32, name="zeta"),
            tf.TensorSpec([None], tf.float32, name="alpha"),
        ]
    )
    def combine(self, zeta: Any, alpha: Any) -> dict[str, Any]:
        return {"b_diff": zeta - alpha, "a_scaled": zeta * self.scale + self.offset[0]}

    @tf.function(input_signature=[])
    def incr(self) -> dict[str, Any]:
        self.count.assign_add(1.0)
        return {"n": self.count + 0.0}

    @tf.function(input_signature=[])
    def read(self) -> dict[str, Any]:
        return {"n": self.count + 0.0}


@pytest.fixture(scope="module")
def two_signatures(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("two") / "1"
    module = _TwoSignatures()
    signatures = {"serving_default": module.combine, "incr": module.incr, "read": module.read}
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def test_signatures_run_in_a_session_with_inputs_matched_by_name(
    two_signatures: pathlib.Path,
) -> None:
    loader = _load(two_signatures)
    try:
        assert _path(loader) == "session"
        servable = loader.servable()
        inputs = {
            "zeta": np.array([5.0, 6.0], np.float32),
            "alpha": np.array([1.0, 4.0], np.float32),
        }
        out = servable.run("serving_default", inputs)
        np.testing.assert_array_equal(out["b_diff"], [4.0, 2.0])
        np.testing.assert_array_equal(out["a_scaled"], [51.0, 61.0])
        assert list(servable.run("serving_default", inputs, ["b_diff"])) == ["b_diff"]
        with pytest.raises(InvalidArgument, match=r"to be float but int32 is provided"):
            servable.run("serving_default", {**inputs, "alpha": np.array([1], np.int32)})
    finally:
        loader.unload()


def test_a_variable_shared_by_signatures_stays_shared(two_signatures: pathlib.Path) -> None:
    loader = _load(two_signatures)
    try:
        servable = loader.servable()
        assert servable.run("incr", {})["n"] == 1.0
        assert servable.run("incr", {})["n"] == 2.0
        assert servable.run("read", {})["n"] == 2.0
    finally:
        loader.unload()


def test_keras_export_runs_in_a_session(tmp_path: pathlib.Path) -> None:
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((4,), name="x"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.export(str(tmp_path / "1"), verbose=False)
    x = np.random.RandomState(0).uniform(0, 5, (5, 4)).astype(np.float32)
    want = model(x).numpy()

    loader = _load(tmp_path / "1", runtime="auto")
    try:
        assert loader.servable().backend == "function"
        assert _path(loader) == "session"
        got = loader.servable().run("serving_default", {"x": x})["output_0"]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    finally:
        loader.unload()


class _WithTable(tf.Module):
    """Captures a lookup table: a resource that is not a variable."""

    def __init__(self) -> None:
        super().__init__()
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64)
        )
        self.table = tf.lookup.StaticHashTable(init, default_value=-1)
        self.scale = tf.Variable(3, dtype=tf.int64)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="words"),
            tf.TensorSpec([None], tf.int64, name="add"),
        ]
    )
    def lookup(self, words: Any, add: Any) -> dict[str, Any]:
        ids = self.table.lookup(words)
        return {"ids": ids, "scaled": ids * self.scale + add}


def test_a_signature_capturing_a_table_runs_eagerly_with_flat_tensors(
    tmp_path: pathlib.Path,
) -> None:
    module = _WithTable()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.lookup})
    loader = _load(tmp_path / "1")
    try:
        assert _path(loader) == "eager"
        servable = loader.servable()
        inputs = {
            "words": np.array([b"b", b"z", b"a"], object),
            "add": np.array([10, 20, 30], np.int64),
        }
        out = servable.run("serving_default", inputs)
        np.testing.assert_array_equal(out["ids"], [2, -1, 1])
        np.testing.assert_array_equal(out["scaled"], [16, 17, 33])
        assert list(servable.run("serving_default", inputs, ["scaled", "ids"])) == [
            "scaled",
            "ids",
        ]
        with pytest.raises(InvalidArgument, match=r"to be int64 but float is provided"):
            servable.run("serving_default", {**inputs, "add": np.array([1.0], np.float32)})
    finally:
        loader.unload()
