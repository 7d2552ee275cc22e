"""Loads ``model.tflite`` from one version directory into a :class:`TfLiteServable`.

This is what TF Serving does with ``--prefer_tflite_model`` when a version directory holds
``model.tflite`` (``saved_model_bundle_factory.cc``, ``tflite_session.cc``):

* The file is read whole and verified by building an interpreter from it; a file that is not
  a valid TFLite flatbuffer (half copied, truncated, another format) fails the load with
  ``DATA_LOSS``, any other interpreter failure (an op the interpreter lacks) with
  ``FAILED_PRECONDITION``. Nothing is left loaded after a failure.
* **SignatureDefs.** When the model carries TFLite's ``signature_defs_metadata`` (a FlexBuffer
  map from signature key to a serialized ``SignatureDef``, written by TFLite's
  ``SetSignatureDefMap``), those signatures are served as stored, except that each tensor
  name is checked against the model's input (or output) tensors and, when it is not one of
  them, replaced by its legacy TFLite form without the ``:N`` suffix (``tflite_input:0`` ->
  ``tflite_input``); a name that matches neither fails the load.
* Otherwise the model gets TF Serving's default signature: ``serving_default``, method
  ``tensorflow/serving/predict``, one input per input tensor and one output per output tensor
  of the model, each keyed by the tensor's name without a ``:N`` suffix (the full name when
  two tensors would share that key), with the tensor's name, dtype and shape (its dimensions
  as allocated, e.g. ``[1,1]``: TFLite has no unknown dimensions there). TFLite's own
  signature runners (``get_signature_list``) are not used, as in TF Serving.
* ``num_pools`` x ``interpreters_per_pool`` interpreters are built (see
  :mod:`pyserving.platforms.tflite.servable`); each runs one request at a time.

The RAM estimate is TF Serving's default rule applied to what is loaded: 1.2 x the size of
``model.tflite``, times the number of interpreters (each may hold its own packed weights and
tensor arena).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from tensorflow.core.protobuf import meta_graph_pb2

from pyserving.codec import DEFAULT_SIGNATURE_KEY, datatype_for_numpy
from pyserving.core.loader import (
    DISK_SIZE_RAM_MULTIPLIER,
    HeldServableLoader,
    ResourceEstimate,
)
from pyserving.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ServingError,
)
from pyserving.platforms.tflite.servable import (
    InterpreterPool,
    TfLiteServable,
    new_interpreter,
)

_log = logging.getLogger(__name__)

#: The file TF Serving serves from a version directory with ``--prefer_tflite_model``.
TFLITE_MODEL_FILENAME = "model.tflite"

#: The TFLite metadata entry holding SignatureDefs (``kSignatureDefsMetadataName``).
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"

PREDICT_METHOD_NAME = "tensorflow/serving/predict"

_DT_STRING = 7


def has_tflite_model(path: str | os.PathLike[str]) -> bool:
    """True when the version directory ``path`` holds ``model.tflite``."""
    return os.path.isfile(os.path.join(path, TFLITE_MODEL_FILENAME))


def read_signature_defs(model: bytes) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs stored in ``model``'s ``signature_defs_metadata`` ({} without one).

    Raises:
        InvalidArgument: the metadata entry exists but does not decode
            (``Invalid SignatureDefs found in TfLite model: ...``).
    """
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        root = schema.Model.GetRootAsModel(model, 0)
        data = None
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            if entry.Name() == SIGNATURE_DEFS_METADATA.encode():
                data = root.Buffers(entry.Buffer()).DataAsNumpy()
                break
    except Exception as exc:
        raise InvalidArgument(
            f"Invalid SignatureDefs found in TfLite model: {type(exc).__name__}: {exc}"
        ) from None
    if data is None:
        return {}
    signatures: dict[str, meta_graph_pb2.SignatureDef] = {}
    try:
        if isinstance(data, int):  # flatbuffers' answer for an empty buffer
            raise ValueError("the metadata buffer is empty")
        entries = flexbuffers.GetRoot(bytes(data.tobytes())).AsMap
        for key, value in zip(entries.Keys, entries.Values, strict=True):
            serialized = value.AsBlob if value.IsBlob else value.AsStringBytes
            signature = meta_graph_pb2.SignatureDef()
            signature.ParseFromString(bytes(serialized))
            signatures[str(key.AsKey)] = signature
    except Exception as exc:
        raise InvalidArgument(
            f"Invalid SignatureDefs found in TfLite model: {type(exc).__name__}: {exc}"
        ) from None
    return signatures


def legacy_tensor_name(name: str) -> str:
    """A TF tensor name as early TFLite converters wrote it: without its ``:N`` suffix."""
    return name.split(":", 1)[0]


def _tensor_map(details: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Tensor name -> detail; ``AlreadyExists`` when two tensors share a name (TF Serving's
    ``GetTensorInfoMap``)."""
    tensors: dict[str, dict[str, Any]] = {}
    for detail in details:
        name = str(detail["name"])
        if name in tensors:
            raise AlreadyExists(f"{kind} tensor name: {name} has multiple indices")
        tensors[name] = detail
    return tensors


def tensor_info(detail: Mapping[str, Any]) -> meta_graph_pb2.TensorInfo:
    """The ``TensorInfo`` TF Serving reports for a TFLite tensor: its name, dtype and the
    dimensions it is allocated with.

    Raises:
        Internal: a dtype TensorFlow has no DataType for (``Unknown TfLite type: ...``).
    """
    import numpy as np

    info = meta_graph_pb2.TensorInfo(name=str(detail["name"]))
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "OSU":
        info.dtype = _DT_STRING
    else:
        try:
            info.dtype = datatype_for_numpy(dtype)
        except ServingError:
            raise Internal(f"Unknown TfLite type: {dtype}") from None
    for size in detail["shape"]:
        info.tensor_shape.dim.add().size = int(size)
    return info


def model_signatures(
    stored: Mapping[str, meta_graph_pb2.SignatureDef],
    inputs: Mapping[str, Mapping[str, Any]],
    outputs: Mapping[str, Mapping[str, Any]],
) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The signatures a TFLite model is served with (see the module docstring).

    Args:
        stored: the SignatureDefs of the model's metadata (see :func:`read_signature_defs`).
        inputs / outputs: tensor name -> interpreter tensor detail, for the model's input
            and output tensors.

    Raises:
        Internal: a stored signature names a tensor that is not one of the model's inputs
            (outputs), with either name form.
    """
    if stored:
        signatures: dict[str, meta_graph_pb2.SignatureDef] = {}
        for key, original in stored.items():
            signature = meta_graph_pb2.SignatureDef()
            signature.CopyFrom(original)
            for kind, infos, tensors in (
                ("input", signature.inputs, inputs),
                ("output", signature.outputs, outputs),
            ):
                for alias, info in infos.items():
                    if info.name in tensors:
                        continue
                    legacy = legacy_tensor_name(info.name)
                    if legacy not in tensors:
                        raise Internal(
                            f"Signature {kind} {alias} references an unknown tensor: "
                            f"Unknown tensor '{info.name}'."
                        )
                    info.name = legacy
            signatures[key] = signature
        return signatures
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD_NAME)
    for infos, tensors in ((signature.inputs, inputs), (signature.outputs, outputs)):
        for key, name in default_signature_keys(tensors).items():
            infos[key].CopyFrom(tensor_info(tensors[name]))
    return {DEFAULT_SIGNATURE_KEY: signature}


def default_signature_keys(names: Iterable[str]) -> dict[str, str]:
    """Signature key -> tensor name for the default signature: each tensor name without its
    ``:N`` suffix, as TF Serving does, except that tensors whose short names would collide
    (``PartitionedCall:0``, ``PartitionedCall:1``: the outputs of a model converted from a
    TF2 function) keep their full names, where TF Serving would keep only the last one."""
    names = sorted(names)
    short = [legacy_tensor_name(n) for n in names]
    counts = Counter(short)
    return {
        (key if counts[key] == 1 else name): name for key, name in zip(short, names, strict=True)
    }


class TfLiteLoader(HeldServableLoader):
    """Loader for ``model.tflite`` in one version directory.

    Args:
        path: the version directory (``base_path/<version>``).
        num_pools / interpreters_per_pool: ``--num_tflite_pools`` and
            ``--num_tflite_interpreters_per_pool``; their product (each counted as at least
            1) is the number of interpreters, hence of requests running at once.

    Not thread-safe (the manager never calls one loader's methods concurrently).
    """

    def __init__(self, path: str, num_pools: int = 1, interpreters_per_pool: int = 1) -> None:
        self.path = str(path)
        self.model_path = os.path.join(self.path, TFLITE_MODEL_FILENAME)
        self.num_interpreters = max(1, num_pools) * max(1, interpreters_per_pool)
        self._estimate: ResourceEstimate | None = None
        self._servable: TfLiteServable | None = None

    def __repr__(self) -> str:
        return f"TfLiteLoader(path={self.path!r}, interpreters={self.num_interpreters})"

    def estimate_resources(self) -> ResourceEstimate:
        """1.2 x the size of ``model.tflite`` x the number of interpreters, computed once
        (0 when the file cannot be read: the load then fails)."""
        if self._estimate is None:
            try:
                size = os.stat(self.model_path).st_size
            except OSError:
                size = 0
            self._estimate = ResourceEstimate(
                ram_bytes=int(size * DISK_SIZE_RAM_MULTIPLIER * self.num_interpreters)
            )
        return self._estimate

    def load(self) -> None:
        """Read, verify and serve the model. Raises a ``ServingError`` on failure (see the
        module docstring), leaving nothing loaded."""
        if self._servable is not None:
            raise FailedPrecondition(f"{self!r} is already loaded")
        model = self._read()
        try:
            first = new_interpreter(model)
        except (ValueError, RuntimeError) as exc:
            text = " ".join(str(exc).split())
            if "not a valid Flatbuffer" in text:
                raise DataLoss(f"{self.model_path} is not a valid TFLite model: {text}") from None
            raise FailedPrecondition(
                f"Cannot build a TFLite interpreter from {self.model_path}: {text}"
            ) from None
        inputs = _tensor_map(first.get_input_details(), "Input")
        outputs = _tensor_map(first.get_output_details(), "Output")
        stored = read_signature_defs(model)
        if not stored:
            _log.info(
                "%s has no SignatureDefs; serving the default signature built from its tensors",
                self.model_path,
            )
        signatures = model_signatures(stored, inputs, outputs)
        made = [first]

        def factory() -> Any:
            # The interpreter built to read the model serves as the pool's first.
            return made.pop() if made else new_interpreter(model)

        try:
            pool = InterpreterPool(factory, self.num_interpreters)
        except (ValueError, RuntimeError) as exc:
            raise FailedPrecondition(
                f"Cannot build a TFLite interpreter from {self.model_path}: {exc}"
            ) from None
        self._servable = TfLiteServable(
            self.path,
            self.model_path,
            signatures,
            pool,
            {name: int(d["index"]) for name, d in inputs.items()},
            {name: int(d["index"]) for name, d in outputs.items()},
        )

    def _read(self) -> bytes:
        try:
            with open(self.model_path, "rb") as f:
                model = f.read()
        except FileNotFoundError:
            raise NotFound(f"Could not find {TFLITE_MODEL_FILENAME} in {self.path}") from None
        except OSError as exc:
            raise DataLoss(f"Cannot read {self.model_path}: {exc}") from None
        if not model:
            raise DataLoss(f"{self.model_path} is empty")
        return model

