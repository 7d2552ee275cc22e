"""pyserving.testing.models: the generated test models are true to TF Serving's.

Where TF Serving's own tree is present, every generated SavedModel must declare exactly the
same SignatureDefs (names, keys, tensor names, dtypes, shapes, method names) and the config
files must parse to the same messages; the models' answers are checked by the loader, REST
and gRPC tests, which run on the generated tree.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.config import model_server_config_pb2

from pyserving.platforms.tensorflow import read_saved_model
from pyserving.protos import BatchingParameters, MonitoringConfig
from pyserving.testing import models

SAVED_MODELS = [
    "saved_model_half_plus_two_cpu/00000123",
    "saved_model_half_plus_two_tf2_cpu/00000123",
    "saved_model_half_plus_three/00000123",
    "saved_model_counter/00000123",
    "saved_model_half_plus_two_2_versions/00000123",
    "saved_model_half_plus_two_2_versions/00000124",
    "matrix_half_plus_two/1",
]


def _meta_graph(version_dir: pathlib.Path) -> meta_graph_pb2.MetaGraphDef:
    (meta_graph,) = read_saved_model(str(version_dir)).meta_graphs
    return meta_graph


@pytest.mark.parametrize("relative", SAVED_MODELS)
def test_signatures_match_tf_serving(
    testdata: pathlib.Path, tfserving_testdata: pathlib.Path, relative: str
) -> None:
    ours = _meta_graph(testdata / relative)
    theirs = _meta_graph(tfserving_testdata / relative)
    assert list(ours.meta_info_def.tags) == list(theirs.meta_info_def.tags) == ["serve"]
    assert dict(ours.signature_def) == dict(theirs.signature_def)
    # the same init-op collection (main op, legacy init op, or a TF2 export's)
    init_keys = {"saved_model_main_op", "legacy_init_op"}
    assert set(ours.collection_def) & init_keys == set(theirs.collection_def) & init_keys


def test_tree_has_every_entry(testdata: pathlib.Path) -> None:
    stamp = models.read_stamp(testdata)
    assert stamp is not None and stamp["format"] == models.FORMAT
    assert stamp["entries"] == list(models.ENTRIES)
    for name in [*models.ENTRIES, *models.CONFIG_FILES]:
        assert (testdata / name).exists(), name
    asset = testdata / models.HALF_PLUS_TWO / models.VERSION / "assets" / "foo.txt"
    assert asset.read_text() == "asset-file-contents"
    assert not (testdata / models.BAD_HALF_PLUS_TWO / models.VERSION / "saved_model.pb").exists()


def test_config_files_match_tf_serving(
    testdata: pathlib.Path, tfserving_testdata: pathlib.Path
) -> None:
    messages = {
        "good_model_config.txt": model_server_config_pb2.ModelServerConfig,
        "batching_config.txt": BatchingParameters,
        "monitoring_config.txt": MonitoringConfig,
    }
    for name, message in messages.items():
        ours = text_format.Parse((testdata / name).read_text(), message())
        theirs = text_format.Parse((tfserving_testdata / name).read_text(), message())
        assert ours == theirs, name
    bad = "bad_model_config.txt"
    assert (testdata / bad).read_text().strip() == (tfserving_testdata / bad).read_text().strip()


def _interpreter(path: pathlib.Path) -> Any:
    import tensorflow as tf

    with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is deprecated
        warnings.simplefilter("ignore", UserWarning)
        return tf.lite.Interpreter(model_path=str(path / models.VERSION / "model.tflite"))


@pytest.mark.parametrize(
    ("name", "input_tensor"),
    [(models.TFLITE, "x"), (models.TFLITE_WITH_SIGDEF, "tflite_input")],
)
def test_tflite_models_answer(testdata: pathlib.Path, name: str, input_tensor: str) -> None:
    interpreter = _interpreter(testdata / name)
    interpreter.allocate_tensors()
    (given,) = interpreter.get_input_details()
    (answer,) = interpreter.get_output_details()
    assert (given["name"], answer["name"]) == (input_tensor, "y")
    interpreter.set_tensor(given["index"], np.array([[2.0]], np.float32))
    interpreter.invoke()
    np.testing.assert_array_equal(interpreter.get_tensor(answer["index"]), [[3.0]])


def _tflite_signature_defs(path: pathlib.Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs in a model.tflite's ``signature_defs_metadata``."""
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    data = (path / models.VERSION / "model.tflite").read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        metadata = model.Metadata(i)
        if metadata.Name() == b"signature_defs_metadata":
            buffer = model.Buffers(metadata.Buffer()).DataAsNumpy().tobytes()
            stored = flexbuffers.GetRoot(buffer).AsMap
            return {
                stored.Keys[k].AsKey: meta_graph_pb2.SignatureDef.FromString(
                    stored.Values[k].AsStringBytes
                )
                for k in range(len(stored))
            }
    return {}


def test_tflite_signature_defs(testdata: pathlib.Path) -> None:
    assert _tflite_signature_defs(testdata / models.TFLITE) == {}
    (signature,) = _tflite_signature_defs(testdata / models.TFLITE_WITH_SIGDEF).values()
    assert signature.inputs["x"].name == "tflite_input:0"
    assert signature.outputs["y"].name == "y:0"


def test_tflite_signature_defs_match_tf_serving(
    testdata: pathlib.Path, tfserving_testdata: pathlib.Path
) -> None:
    ours = _tflite_signature_defs(testdata / models.TFLITE_WITH_SIGDEF)
    assert ours == _tflite_signature_defs(tfserving_testdata / models.TFLITE_WITH_SIGDEF)


def test_build_only_some_models(tmp_path: pathlib.Path) -> None:
    root = models.build_testdata(tmp_path / "tree", only=[models.MATRIX_HALF_PLUS_TWO])
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [models.MATRIX_HALF_PLUS_TWO, models.STAMP_FILE, *models.CONFIG_FILES]
    )
    assert json.loads((root / models.STAMP_FILE).read_text())["entries"] == [
        models.MATRIX_HALF_PLUS_TWO
    ]
    assert list(tmp_path.iterdir()) == [root]  # no staging directory left behind


def test_build_refuses_a_used_directory_and_unknown_names(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        models.build_testdata(tmp_path)
    with pytest.raises(KeyError, match="nope"):
        models.build_testdata(tmp_path / "new", only=["nope"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
