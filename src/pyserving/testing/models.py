"""Equivalents of TensorFlow Serving's test models, exported with the installed TensorFlow.

pyserving is tested against the SavedModels TF Serving itself is tested with
(``tensorflow_serving/servables/tensorflow/testdata``). Those files are not part of this
repository, so this module exports models that answer the same way, under the same directory
names and version numbers, with the same signature names, input and output keys, tensor
names, dtypes, shapes and method names:

- ``saved_model_half_plus_two_cpu/00000123``: a TF1 graph (``tf.compat.v1`` builder, ref
  variables). ``serving_default``: ``x`` -> ``y = 0.5 x + 2``, [-1,1] float;
  ``classify_x_to_y``, ``regress_x_to_y`` (serialized ``tf.Example`` in), ``regress_x_to_y2``
  (``0.5 x + 3``), ``regress_x2_to_y3``; ``assets/foo.txt`` and a main op.
- ``saved_model_half_plus_two_tf2_cpu/00000123``: a TF2 ``tf.saved_model.save`` export of the
  same functions; every method name is ``tensorflow/serving/predict``; ``serving_default``'s
  ``x`` is [1] with a default of [0.0].
- ``saved_model_half_plus_three/00000123``: a TF1 graph, ``y = 0.5 x + 3``, signatures without
  shapes, a ``legacy_init_op`` and a ``tensorflow/serving/regress`` signature;
  ``tf.saved_model.load`` rejects it.
- ``saved_model_counter/00000123``: a TF1 stateful graph: ``get_counter``, ``incr_counter``,
  ``incr_counter_by``, ``reset_counter``, ``float_ref`` outputs.
- ``saved_model_half_plus_two_2_versions/{00000123,00000124}``: half_plus_two, with
  ``classify_x2_to_y3`` as well and a ``legacy_init_op``.
- ``bad_half_plus_two/00000123``: a checkpoint and meta graph, no SavedModel.
- ``matrix_half_plus_two/1``: ``x`` [-1,3,3] -> ``0.5 x + 2``.
- ``saved_model_half_plus_two_tflite/00000123``: ``model.tflite``, ``x`` [1,1] -> ``y``.
- ``saved_model_half_plus_two_tflite_with_sigdef/00000123``: ``model.tflite`` whose input
  tensor is ``tflite_input``; a SignatureDef in the file's ``signature_defs_metadata`` maps
  ``x`` to it.
- ``good_model_config.txt``, ``bad_model_config.txt``, ``batching_config.txt``,
  ``monitoring_config.txt``: the config files of TF Serving's tests (the good one with
  ``${TEST_HALF_PLUS_TWO_DIR}`` and ``${TEST_HALF_PLUS_THREE_DIR}`` placeholders).

What they do not reproduce: the TF versions that made the originals (TF 1.0 to 2.14, so
their graphs' op versions and attributes),
``saved_model_half_plus_two_cpu_with_saved_model_config`` and the metadata JSON files (TF
Serving's recorded answers, which only TF Serving can produce). Tests needing those read TF
Serving's own tree.

Exporting the whole tree takes about two seconds once TensorFlow is imported.
:func:`ensure_testdata` keeps a tree cached in a directory (rebuilt when this module's
:data:`FORMAT` or the TensorFlow version changes).

    python -m pyserving.testing.models DIR [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

#: The version directory of every model but ``matrix_half_plus_two``.
VERSION = "00000123"
HALF_PLUS_TWO = "saved_model_half_plus_two_cpu"
HALF_PLUS_TWO_TF2 = "saved_model_half_plus_two_tf2_cpu"
HALF_PLUS_THREE = "saved_model_half_plus_three"
COUNTER = "saved_model_counter"
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"
BAD_HALF_PLUS_TWO = "bad_half_plus_two"
MATRIX_HALF_PLUS_TWO = "matrix_half_plus_two"
TFLITE = "saved_model_half_plus_two_tflite"
TFLITE_WITH_SIGDEF = "saved_model_half_plus_two_tflite_with_sigdef"
CONFIG_FILES = (
    "good_model_config.txt",
    "bad_model_config.txt",
    "batching_config.txt",
    "monitoring_config.txt",
)
#: Written at the root of a built tree: the format below, the TF version and the entries.
STAMP_FILE = "pyserving_testdata.json"
#: Changes whenever an export changes, so that cached trees are rebuilt.
FORMAT = 1

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
ASSET_NAME = "foo.txt"
ASSET_CONTENTS = "asset-file-contents"

_CONFIG_TEXTS = {
    "good_model_config.txt": """\
model_config_list: {
  config: {
    name: "half_plus_two",
    base_path: "${TEST_HALF_PLUS_TWO_DIR}",
    model_platform: "tensorflow"
  },
  config: {
    name: "half_plus_three",
    base_path: "${TEST_HALF_PLUS_THREE_DIR}",
    model_platform: "tensorflow"
  }
}
""",
    "bad_model_config.txt": "improperly formatted file",
    "batching_config.txt": """\
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
""",
    "monitoring_config.txt": """\
prometheus_config: {
  enable: true,
  path: "/monitoring/prometheus/metrics"
}
""",
}


def _tf() -> Any:
    """TensorFlow, imported on first use (importing this module does not import it)."""
    import tensorflow as tf

    return tf


def _new_export_dir(export_dir: str | os.PathLike[str]) -> pathlib.Path:
    path = pathlib.Path(export_dir)
    if path.exists():
        raise FileExistsError(f"export directory already exists: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- TF1 graphs


@contextlib.contextmanager
def _tf1_session() -> Iterator[Any]:
    """A session on a fresh graph, that graph being the default inside the block."""
    tf = _tf()
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        yield session


def _ref_variable(value: Any, name: str) -> Any:
    """A TF1 ref variable (``VariableV2``), as TF 1.x exports have."""
    return _tf().compat.v1.Variable(value, name=name, use_resource=False)


def _batch_of_one(tensor: Any, name: str) -> Any:
    """``tensor`` under ``name``, declared [-1, 1]."""
    named = _tf().identity(tensor, name=name)
    named.set_shape([None, 1])
    return named


def _signature(inputs: Mapping[str, Any], outputs: Mapping[str, Any], method_name: str) -> Any:
    """A SignatureDef from tensors, as the TF1 ``build_signature_def`` makes it."""
    saved_model = _tf().compat.v1.saved_model
    info = saved_model.utils.build_tensor_info
    return saved_model.signature_def_utils.build_signature_def(
        {key: info(t) for key, t in inputs.items()},
        {key: info(t) for key, t in outputs.items()},
        method_name,
    )


def _shapeless_signature(
    inputs: Mapping[str, tuple[str, Any]], outputs: Mapping[str, tuple[str, Any]], method: str
) -> Any:
    """A SignatureDef naming tensors and dtypes only (no shapes), as TF 1.0 wrote them."""
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef(method_name=method)
    for target, spec in ((signature.inputs, inputs), (signature.outputs, outputs)):
        for key, (name, dtype) in spec.items():
            target[key].name = name
            target[key].dtype = dtype.as_datatype_enum
    return signature


@contextlib.contextmanager
def _asset_source() -> Iterator[pathlib.Path]:
    """A ``foo.txt`` to export as an asset (the builder copies it into ``assets/``)."""
    with tempfile.TemporaryDirectory(prefix="pyserving-asset-") as directory:
        path = pathlib.Path(directory) / ASSET_NAME
        path.write_text(ASSET_CONTENTS)
        yield path


def _asset_init_op(asset: pathlib.Path) -> Any:
    """Registers ``asset`` as the graph's asset; returns an op to run at load time that assigns
    its file name to a variable the checkpoint does not hold (the export's init op)."""
    tf = _tf()
    v1 = tf.compat.v1
    v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, tf.constant(str(asset)))
    filename = v1.Variable(
        ASSET_NAME, name="filename_tensor", trainable=False, collections=[], use_resource=False
    )
    return filename.assign(ASSET_NAME)


def _save_tf1(
    session: Any,
    export_dir: pathlib.Path,
    signatures: Mapping[str, Any],
    *,
    main_op: Any = None,
) -> None:
    """Save the session's graph and variables as a SavedModel tagged ``serve``."""
    v1 = _tf().compat.v1
    session.run(v1.global_variables_initializer())
    builder = v1.saved_model.Builder(str(export_dir))
    builder.add_meta_graph_and_variables(
        session,
        [v1.saved_model.tag_constants.SERVING],
        signature_def_map=dict(signatures),
        assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS) or None,
        main_op=main_op,
    )
    builder.save()


def export_half_plus_two(
    export_dir: str | os.PathLike[str],
    *,
    classify_x2_to_y3: bool = False,
    legacy_init_op: bool = False,
) -> pathlib.Path:
    """Export ``saved_model_half_plus_two_cpu``'s equivalent into ``export_dir`` (a version
    directory, which must not exist). Returns it.

    Variables ``a`` = 0.5, ``b`` = 2, ``c`` = 3 (and ``a2``, ``c2`` for ``y3``); ``tf_example``
    (string, unknown rank) is parsed for features ``x`` and ``x2`` (default 0). Signatures:
    ``serving_default`` (``x`` -> ``y``), ``classify_x_to_y`` (``inputs`` -> ``scores`` = y),
    ``regress_x_to_y`` (-> ``outputs`` = y), ``regress_x_to_y2`` (y2 = 0.5 x + 3),
    ``regress_x2_to_y3`` (``x2`` -> y3 = 0.5 x2 + 3) and, with ``classify_x2_to_y3``, that
    classify signature too. The init op (assigning the asset's name to a variable) is the
    SavedModel's main op (as in ``saved_model_half_plus_two_cpu``) or, with
    ``legacy_init_op``, in the ``legacy_init_op`` collection (as in
    ``saved_model_half_plus_two_2_versions``).
    """
    tf = _tf()
    v1 = tf.compat.v1
    path = _new_export_dir(export_dir)
    with _asset_source() as asset, _tf1_session() as session:
        a, b, c = (_ref_variable(v, n) for v, n in ((0.5, "a"), (2.0, "b"), (3.0, "c")))
        serialized = v1.placeholder(tf.string, name="tf_example")
        features = v1.io.parse_example(
            serialized,
            {
                "x": v1.io.FixedLenFeature([1], tf.float32),
                "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        x = _batch_of_one(features["x"], "x")
        y = _batch_of_one(a * x + b, "y")
        y2 = _batch_of_one(a * x + c, "y2")
        x2 = _batch_of_one(features["x2"], "x2")
        a2, c2 = _ref_variable(0.5, "a2"), _ref_variable(3.0, "c2")
        y3 = _batch_of_one(a2 * x2 + c2, "y3")
        init = _asset_init_op(asset)
        signatures = {
            "serving_default": _signature({"x": x}, {"y": y}, PREDICT),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, CLASSIFY),
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, REGRESS),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, REGRESS),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, REGRESS),
        }
        if classify_x2_to_y3:
            signatures["classify_x2_to_y3"] = _signature({"inputs": x2}, {"scores": y3}, CLASSIFY)
        if legacy_init_op:
            v1.add_to_collection("legacy_init_op", tf.group(init))
            _save_tf1(session, path, signatures)
        else:
            _save_tf1(session, path, signatures, main_op=tf.group(init))
    return path


def export_half_plus_three(export_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Export ``saved_model_half_plus_three``'s equivalent into ``export_dir``. Returns it.

    As TF Serving's TF 1.0 export: ``serving_default`` ``x`` -> ``y = 0.5 x + 3``, and a
    signature keyed ``tensorflow/serving/regress`` whose input names ``tf_example:0`` (a string
    placeholder) with dtype float, output ``Identity:0`` (y); no signature declares a shape,
    which reads as scalar while ``x`` and ``y`` are [-1,1], so ``tf.saved_model.load`` rejects
    the export ("Shapes must be equal rank") as it rejects TF Serving's; TF1's session loader
    loads it. Its init op is in the ``legacy_init_op`` collection, not ``saved_model_main_op``.
    """
    tf = _tf()
    v1 = tf.compat.v1
    path = _new_export_dir(export_dir)
    with _asset_source() as asset, _tf1_session() as session:
        a, b, c = (_ref_variable(v, n) for v, n in ((0.5, "a"), (3.0, "b"), (3.0, "c")))
        serialized = v1.placeholder(tf.string, name="tf_example")
        features = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})
        x = _batch_of_one(features["x"], "x")
        y = tf.add(a * x, b, name="y")
        x2 = v1.placeholder(tf.float32, name="x2")
        tf.add(a * x2, c, name="y2")
        tf.identity(y, name="Identity")
        v1.add_to_collection("legacy_init_op", tf.group(_asset_init_op(asset)))
        float32 = tf.float32
        signatures = {
            "serving_default": _shapeless_signature(
                {"x": ("x:0", float32)}, {"y": ("y:0", float32)}, PREDICT
            ),
            REGRESS: _shapeless_signature(
                {"inputs": ("tf_example:0", float32)},
                {"outputs": ("Identity:0", float32)},
                REGRESS,
            ),
        }
        _save_tf1(session, path, signatures)
    return path


def export_counter(export_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Export ``saved_model_counter``'s equivalent into ``export_dir``. Returns it.

    One ref variable ``counter`` (0.0) and predict signatures without inputs (but
    ``incr_counter_by``'s ``delta``), each with the one output ``output`` (``float_ref``,
    scalar): ``get_counter`` reads it, ``incr_counter`` adds 1, ``incr_counter_by`` adds
    ``delta``, ``reset_counter`` sets 0; each answers the new value.
    """
    tf = _tf()
    v1 = tf.compat.v1
    path = _new_export_dir(export_dir)
    with _tf1_session() as session:
        counter = _ref_variable(0.0, "counter")
        with tf.name_scope("incr_counter_op"):
            incr = counter.assign_add(1.0)
        delta = v1.placeholder(tf.float32, name="delta")
        with tf.name_scope("incr_counter_by_op"):
            incr_by = counter.assign_add(delta)
        with tf.name_scope("reset_counter_op"):
            reset = counter.assign(0.0)
        signatures = {
            "get_counter": _signature({}, {"output": counter}, PREDICT),
            "incr_counter": _signature({}, {"output": incr}, PREDICT),
            "incr_counter_by": _signature({"delta": delta}, {"output": incr_by}, PREDICT),
            "reset_counter": _signature({}, {"output": reset}, PREDICT),
        }
        _save_tf1(session, path, signatures)
    return path


def export_matrix_half_plus_two(export_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Export ``matrix_half_plus_two``'s equivalent into ``export_dir`` (no variables):
    ``serving_default`` ``x`` [-1,3,3] float -> ``y = 0.5 x + 2``, same shape. Returns it."""
    tf = _tf()
    v1 = tf.compat.v1
    path = _new_export_dir(export_dir)
    with _tf1_session() as session:
        x = v1.placeholder(tf.float32, [None, 3, 3], name="x")
        y = tf.add(tf.multiply(0.5, x), 2.0, name="y")
        _save_tf1(session, path, {"serving_default": _signature({"x": x}, {"y": y}, PREDICT)})
    return path


def write_bad_half_plus_two(export_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Write ``bad_half_plus_two``'s equivalent into ``export_dir``: a legacy export, that is
    a ``tf.compat.v1.train.Saver`` checkpoint (``checkpoint``, ``export.*``) and its meta graph
    (``export.meta``), with no ``saved_model.pb``. Loading it as a SavedModel must fail."""
    tf = _tf()
    v1 = tf.compat.v1
    path = _new_export_dir(export_dir)
    path.mkdir()
    with _tf1_session() as session:
        a, b = _ref_variable(0.5, "a"), _ref_variable(2.0, "b")
        x = v1.placeholder(tf.float32, name="x")
        tf.add(a * x, b, name="y")
        session.run(v1.global_variables_initializer())
        v1.train.Saver().save(session, str(path / "export"))
    return path


# ----------------------------------------------------------------------------- TF2 export


def export_half_plus_two_tf2(export_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Export ``saved_model_half_plus_two_tf2_cpu``'s equivalent with ``tf.saved_model.save``
    into ``export_dir``. Returns it.

    A ``tf.Module`` with variables ``a`` = 0.5, ``b`` = 2, ``c`` = 3 and the asset ``foo.txt``.
    Signatures (all with method name ``tensorflow/serving/predict``, as TF2 writes them):
    ``serving_default`` ``x`` [1] (default [0.0]) -> ``y`` = 0.5 x + 2; ``regress_x_to_y``,
    ``regress_x_to_y2``, ``classify_x_to_y``: ``inputs`` (serialized ``tf.Example`` [-1]) ->
    ``outputs`` / ``scores`` [-1,1]; ``regress_x2_to_y3``, ``classify_x2_to_y3``: ``inputs``
    [1] float -> [1].
    """
    tf = _tf()
    path = _new_export_dir(export_dir)
    examples = tf.TensorSpec([None], tf.string, name="inputs")
    one_float = tf.TensorSpec([1], tf.float32, name="inputs")
    # autograph=False: there is no Python control flow to convert (and AutoGraph would read
    # this file's source again at export time).

    module_base: Any = tf.Module

    class HalfPlusTwo(module_base):
        def __init__(self, asset: pathlib.Path) -> None:
            super().__init__()
            self.a = tf.Variable(0.5, name="a")
            self.b = tf.Variable(2.0, name="b")
            self.c = tf.Variable(3.0, name="c")
            self.asset = tf.saved_model.Asset(str(asset))

        def _x(self, serialized: Any) -> Any:
            spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}
            return tf.io.parse_example(serialized, spec)["x"]

        @tf.function(autograph=False, input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
        def predict(self, x: Any = tf.constant([0.0])) -> dict[str, Any]:  # noqa: B008
            return {"y": self.a * x + self.b}

        @tf.function(autograph=False, input_signature=[examples])
        def regress_xy(self, inputs: Any) -> dict[str, Any]:
            return {"outputs": self.a * self._x(inputs) + self.b}

        @tf.function(autograph=False, input_signature=[examples])
        def regress_xy2(self, inputs: Any) -> dict[str, Any]:
            return {"outputs": self.a * self._x(inputs) + self.c}

        @tf.function(autograph=False, input_signature=[one_float])
        def regress_x2y3(self, inputs: Any) -> dict[str, Any]:
            return {"outputs": self.a * inputs + self.c}

        @tf.function(autograph=False, input_signature=[examples])
        def classify_xy(self, inputs: Any) -> dict[str, Any]:
            return {"scores": self.a * self._x(inputs) + self.b}

        @tf.function(autograph=False, input_signature=[one_float])
        def classify_x2y3(self, inputs: Any) -> dict[str, Any]:
            return {"scores": self.a * inputs + self.c}

    with _asset_source() as asset:
        module = HalfPlusTwo(asset)
        signatures = {
            "serving_default": module.predict,
            "regress_x_to_y": module.regress_xy,
            "regress_x_to_y2": module.regress_xy2,
            "regress_x2_to_y3": module.regress_x2y3,
            "classify_x_to_y": module.classify_xy,
            "classify_x2_to_y3": module.classify_x2y3,
        }
        tf.saved_model.save(module, str(path), signatures=signatures)
    return path


# ----------------------------------------------------------------------------- TFLite


def export_half_plus_two_tflite(
    export_dir: str | os.PathLike[str], *, with_signature_def: bool = False
) -> pathlib.Path:
    """Convert half_plus_two (``y = 0.5 x + 2``, ``x`` [1,1] float) with the TFLite converter
    into ``export_dir/model.tflite`` (``export_dir`` must not exist). Returns ``export_dir``.

    The input tensor is ``x``, the output ``y``. With ``with_signature_def`` the input tensor
    is ``tflite_input`` and a ``serving_default`` SignatureDef (``x`` -> ``tflite_input:0``,
    ``y`` -> ``y:0``, predict) is stored in the file's ``signature_defs_metadata``, as
    ``saved_model_half_plus_two_tflite_with_sigdef`` has it.
    """
    tf = _tf()
    v1 = tf.compat.v1
    path = _new_export_dir(export_dir)
    input_name = "tflite_input" if with_signature_def else "x"
    with _tf1_session() as session:
        a, b = _ref_variable(0.5, "a"), _ref_variable(2.0, "b")
        x = v1.placeholder(tf.float32, [1, 1], name=input_name)
        y = tf.identity(a * x + b, name="y")
        session.run(v1.global_variables_initializer())
        model = v1.lite.TFLiteConverter.from_session(session, [x], [y]).convert()
        if with_signature_def:
            signature = _signature({"x": x}, {"y": y}, PREDICT)
            model = _with_signature_defs(model, {"serving_default": signature})
    path.mkdir()
    (path / "model.tflite").write_bytes(model)
    return path


def _with_signature_defs(model: bytes, signatures: Mapping[str, Any]) -> bytes:
    """``model`` with ``signatures`` (SignatureDef protos) stored as TFLite's
    ``signature_defs_metadata``: a FlexBuffer map from key to the serialized SignatureDef."""
    import flatbuffers
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    values = flexbuffers.Builder()
    with values.Map():
        for key in sorted(signatures):
            serialized = signatures[key].SerializeToString()
            # The builder writes text; these small protos are plain ASCII (checked).
            values.String(key, serialized.decode("ascii"))
    data = values.Finish()

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = list(data)
    tree.buffers.append(buffer)
    metadata = schema.MetadataT()
    metadata.name = "signature_defs_metadata"
    metadata.buffer = len(tree.buffers) - 1
    tree.metadata = [*(tree.metadata or []), metadata]
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ----------------------------------------------------------------------------- the tree


def write_config_files(root: str | os.PathLike[str]) -> None:
    """Write TF Serving's test config files into ``root`` (see :data:`CONFIG_FILES`)."""
    for name, text in _CONFIG_TEXTS.items():
        (pathlib.Path(root) / name).write_text(text)


def _two_versions(base: pathlib.Path) -> None:
    for version in (VERSION, "00000124"):
        export_half_plus_two(base / version, classify_x2_to_y3=True, legacy_init_op=True)


#: Every entry of the tree and how to make it under the tree's root.
ENTRIES: dict[str, Callable[[pathlib.Path], object]] = {
    HALF_PLUS_TWO: lambda d: export_half_plus_two(d / VERSION),
    HALF_PLUS_TWO_TF2: lambda d: export_half_plus_two_tf2(d / VERSION),
    HALF_PLUS_THREE: lambda d: export_half_plus_three(d / VERSION),
    COUNTER: lambda d: export_counter(d / VERSION),
    TWO_VERSIONS: _two_versions,
    BAD_HALF_PLUS_TWO: lambda d: write_bad_half_plus_two(d / VERSION),
    MATRIX_HALF_PLUS_TWO: lambda d: export_matrix_half_plus_two(d / "1"),
    TFLITE: lambda d: export_half_plus_two_tflite(d / VERSION),
    TFLITE_WITH_SIGDEF: lambda d: export_half_plus_two_tflite(d / VERSION, with_signature_def=True),
}


def build_testdata(root: str | os.PathLike[str], only: Iterable[str] | None = None) -> pathlib.Path:
    """Export the tree described in the module docstring into ``root``. Returns ``root``.

    ``root`` must not exist or be an empty directory. The tree is built beside it and renamed
    into place, so ``root`` is complete or absent, never half written. ``only`` limits the
    models to those names (keys of :data:`ENTRIES`); config files are always written. A
    :data:`STAMP_FILE` records :data:`FORMAT`, the TensorFlow version and the entries.

    Raises:
        KeyError: an unknown name in ``only``.
        FileExistsError: ``root`` is a file or a directory that is not empty.
    """
    target = pathlib.Path(root)
    names = list(ENTRIES) if only is None else list(dict.fromkeys(only))
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        raise KeyError(f"unknown test models {unknown}; known: {sorted(ENTRIES)}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"not an empty directory: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name in names:
            ENTRIES[name](staging / name)
        write_config_files(staging)
        stamp = {"format": FORMAT, "tensorflow": _tf().__version__, "entries": names}
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def read_stamp(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The :data:`STAMP_FILE` of a tree :func:`build_testdata` made, or None if there is none
    (or it does not parse)."""
    try:
        stamp = json.loads((pathlib.Path(root) / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def is_current(root: str | os.PathLike[str], only: Iterable[str] | None = None) -> bool:
    """Whether ``root`` holds a tree :func:`build_testdata` made with this :data:`FORMAT` and
    the installed TensorFlow version, with (at least) the entries ``only`` (default: all).
    Does not import TensorFlow."""
    stamp = read_stamp(root)
    if stamp is None or stamp.get("format") != FORMAT:
        return False
    try:
        installed = importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        return False
    wanted = set(ENTRIES if only is None else only)
    return stamp.get("tensorflow") == installed and wanted <= set(stamp.get("entries", ()))


# ----------------------------------------------------------------------------- Keras


def export_keras_classifier(
    export_dir: str | os.PathLike[str],
    layers: Sequence[tuple[Any, Any]],
    input_name: str = "x",
) -> pathlib.Path:
    """Export a Keras 3 classifier with ``model.export()`` into ``export_dir``. Returns it.

    ``layers`` are (kernel [in, out], bias [out]) NumPy arrays of ``Dense`` layers, ReLU
    between them and softmax on the last: the weights are set, not trained, so the answers
    can be computed without Keras. The export is what Keras users hand to a model server: a
    TF2 SavedModel whose variables only its object graph restores (TF Serving fails its
    requests with ``Could not find variable``), signatures ``serving_default`` and
    ``serve``: ``input_name`` [-1, in] float -> ``output_0`` [-1, classes].
    """
    import keras

    path = _new_export_dir(export_dir)
    model = keras.Sequential([keras.Input((int(layers[0][0].shape[0]),), name=input_name)])
    last = len(layers) - 1
    for i, (kernel, _) in enumerate(layers):
        activation = "softmax" if i == last else "relu"
        model.add(keras.layers.Dense(int(kernel.shape[1]), activation=activation))
    model.set_weights([array for layer in layers for array in layer])
    model.export(str(path), verbose=False)
    return path


def ensure_testdata(
    root: str | os.PathLike[str], only: Iterable[str] | None = None
) -> pathlib.Path:
    """``root`` once it holds a current tree (:func:`is_current`) with the entries ``only``
    (default: all): reused if it does, else replaced by one built in a subprocess
    (``python -m pyserving.testing.models``), so that the caller need not import TensorFlow.
    Returns ``root``.

    Raises:
        subprocess.CalledProcessError: the export failed.
    """
    target = pathlib.Path(root)
    names = list(ENTRIES if only is None else dict.fromkeys(only))
    if is_current(target, names):
        return target
    if target.is_dir():
        shutil.rmtree(target)
    command = [sys.executable, "-m", "pyserving.testing.models", str(target)]
    command += [f"--only={name}" for name in names]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m pyserving.testing.models DIR [--only NAME ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pyserving.testing.models",
        description="Export equivalents of TF Serving's test models into DIR (must not exist).",
    )
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--only", action="append", choices=sorted(ENTRIES), metavar="NAME")
    args = parser.parse_args(argv)
    build_testdata(args.dir, args.only)
    print(f"test models exported to {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
