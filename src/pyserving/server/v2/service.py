"""The Open Inference Protocol's operations, whatever the transport.

:class:`V2Service` answers V2's health, metadata, inference, statistics and model-repository
calls over a :class:`~pyserving.server.service.ModelServing`: the REST routes
(``v2/rest.py``) and the gRPC servicer (``v2/grpc.py``) translate their wire format into
the dataclasses here and back, and nothing else.

How V2 names map onto the V1 model spec: ``model_version`` empty means the latest AVAILABLE
version; all decimal digits, that version number; anything else, a version label (so
``/v2/models/m/versions/stable`` is label ``stable``). A request's ``signature_name``
parameter picks the signature (default ``serving_default``).

Errors are mapped once, by :meth:`V2Service.error`, to what V2 clients expect:

* an unknown model, version or label: ``NotFound`` (404 / NOT_FOUND);
* a configured model (or known version) that is not AVAILABLE: ``Unavailable``
  (503 / UNAVAILABLE);
* an unknown signature: ``InvalidArgument`` (400), like every other malformed request;
* anything else keeps its code (a full batch queue stays UNAVAILABLE).

Inference is V1 predict's path (:meth:`ModelServing.bind`) with V2 decoding:
batching, metrics, handles and errors are shared. Thread-safe; the repository calls block
until the model set has settled (call them off any event loop).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorflow_serving.config import model_server_config_pb2

import pyserving
from pyserving.batching import settled_future
from pyserving.core.monitor import ManagerState
from pyserving.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServingError,
    Unavailable,
)
from pyserving.platforms.generic import is_open_signature
from pyserving.server.metrics import VersionStatistics
from pyserving.server.service import DEFAULT_SIGNATURE, ModelServing, ModelSpec, PredictResult
from pyserving.server.v2 import codec

SERVER_NAME = "pyserving"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics")
#: The platform V2 metadata reports for a SavedModel.
PLATFORM = "tensorflow_savedmodel"
#: The platform V2 metadata reports per servable ``backend`` (Triton's names where it has
#: them); backends not listed report their own name.
BACKEND_PLATFORMS = {
    "session": PLATFORM,
    "function": PLATFORM,
    "tflite": "tensorflow_tflite",
    "onnx": "onnxruntime_onnx",
    "pytorch": "pytorch_torch",
}

#: How an input's elements arrived.
RAW, JSON, CONTENTS = "raw", "json", "contents"


#: The answer to an output asking for Triton's classification extension (top classes as
#: "value:index" strings), which this server does not offer: an error, not the raw tensor.
CLASSIFICATION_REFUSED = (
    "output '{}' asks for the classification extension (class_count), which this server "
    "does not offer; request the output itself"
)


@dataclass(frozen=True)
class InputTensor:
    """One input as the request gave it: ``data`` is raw bytes (``form`` RAW), a JSON value
    (JSON) or an ``InferTensorContents`` message (CONTENTS). ``datatype`` and ``shape`` are
    unchecked values from the wire (checked against the signature when decoded)."""

    name: str
    datatype: Any
    shape: Any
    data: Any
    form: str


@dataclass(frozen=True)
class InferRequest:
    """A V2 inference request. ``outputs``: the outputs asked for, in order (empty: all)."""

    model_name: str
    model_version: str
    id: str
    inputs: Sequence[InputTensor]
    outputs: Sequence[str] = ()
    signature_name: str = ""


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class IndexEntry:
    """A model repository index entry (Triton's states: READY, LOADING, UNLOADING,
    UNAVAILABLE)."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass(frozen=True)
class ModelStatistics:
    name: str
    version: str
    counts: VersionStatistics = field(default_factory=VersionStatistics)


_INDEX_STATES = {
    ManagerState.START: "LOADING",
    ManagerState.LOADING: "LOADING",
    ManagerState.AVAILABLE: "READY",
    ManagerState.UNLOADING: "UNLOADING",
    ManagerState.END: "UNAVAILABLE",
}


def _version_spec(name: str, version: str, signature_name: str = "") -> ModelSpec:
    """The V1 model spec of a V2 name and version string."""
    if not version:
        return ModelSpec(name, None, None, signature_name)
    if version.isascii() and version.isdigit():
        number = int(version)
        if number > 2**63 - 1:
            raise NotFound(f"Model {name} has no version {version}")
        return ModelSpec(name, number, None, signature_name)
    return ModelSpec(name, None, version, signature_name)


class V2Service:
    """V2's operations over ``serving`` (see the module docstring)."""

    def __init__(self, serving: ModelServing) -> None:
        self.serving = serving
        self.core = serving.core

    # -- errors --------------------------------------------------------------------------

    def error(self, exc: BaseException, name: str, version: str = "") -> BaseException:
        """``exc`` as V2 reports it (see the module docstring); not a ``ServingError``: as is."""
        if isinstance(exc, FailedPrecondition):
            return InvalidArgument(exc.message)
        if isinstance(exc, NotFound) and name in self.core.model_names():
            states = self.core.monitor.get_version_states(name)
            if not version or (version.isdigit() and int(version) in states):
                which = f"version {version} of model" if version else "model"
                return Unavailable(f"{which} '{name}' is not ready ({exc.message})")
        if (
            isinstance(exc, InvalidArgument)
            and version
            and exc.message.startswith("Unrecognized servable version label")
        ):
            return NotFound(exc.message)
        return exc

    # -- health and metadata -------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Every configured model has an AVAILABLE version."""
        core = self.core
        return all(core.manager.available_versions(n) for n in core.model_names())

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the version (or the latest) is AVAILABLE; ``NotFound`` for a model that
        is neither configured nor known."""
        try:
            spec = _version_spec(name, version)
            with self.core.handle(spec.name, spec.version, spec.label):
                return True
        except ServingError as exc:
            mapped = self.error(exc, name, version)
            if isinstance(mapped, Unavailable):
                return False
            raise mapped from None

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        """``(name, version, extensions)``."""
        return SERVER_NAME, pyserving.__version__, EXTENSIONS

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """The model's ``serving_default`` signature (or its only one) as V2 tensors."""
        try:
            spec = _version_spec(name, version)
            with self.core.handle(spec.name, spec.version, spec.label) as handle:
                signatures = handle.servable.signature_defs
                signature = signatures.get(DEFAULT_SIGNATURE)
                if signature is None and len(signatures) == 1:
                    signature = next(iter(signatures.values()))
                inputs: list[TensorMetadata] = []
                outputs: list[TensorMetadata] = []
                if signature is not None:
                    inputs = _tensors(signature.inputs)
                    outputs = _tensors(signature.outputs)
                backend = str(getattr(handle.servable, "backend", "session"))
                platform = BACKEND_PLATFORMS.get(backend, backend)
        except ServingError as exc:
            raise self.error(exc, name, version) from None
        versions = [str(v) for v in sorted(self.core.manager.available_versions(name))]
        return ModelMetadata(name, versions, platform, inputs, outputs)

    # -- inference -----------------------------------------------------------------------

    def infer_future(
        self, request: InferRequest, entrypoint: str = "GRPC"
    ) -> concurrent.futures.Future[PredictResult]:
        """Decode and run (or queue for its batch) ``request``; errors are the future's.
        Pass the future to :meth:`result` once done."""
        try:
            spec = _version_spec(request.model_name, request.model_version, request.signature_name)
            with self.serving.bind(spec, entrypoint=entrypoint) as model:
                signature = model.signature_def
                # A model that declares no signature: its inputs are the request's.
                known = None if is_open_signature(signature) else signature.inputs
                inputs = decode_inputs(request.inputs, known)
                return model.predict(inputs, tuple(request.outputs))
        except Exception as exc:
            return settled_future(exception=exc)

    def result(
        self, request: InferRequest, future: concurrent.futures.Future[PredictResult]
    ) -> InferResult:
        """The V2 answer of a finished :meth:`infer_future` (raises the mapped error)."""
        try:
            result = future.result()
        except ServingError as exc:
            raise self.error(exc, request.model_name, request.model_version) from None
        arrays = result.outputs
        names = request.outputs or list(arrays)
        outputs = []
        for name in names:
            array = arrays[name]
            outputs.append(OutputTensor(name, codec.datatype_of(array), array))
        return InferResult(result.id.name, str(result.id.version), request.id, outputs)

    # -- statistics ----------------------------------------------------------------------

    def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Counters of every version of every model (or of ``name``, or one version).

        A named model must be known (configured or with known versions; else ``NotFound``);
        a named version must be known (``NotFound``). Versions the server knows of but
        that served no request yet report zeros."""
        metrics = self.serving.metrics
        counted = metrics.version_statistics() if metrics is not None else {}
        keys: set[tuple[str, int]] = set()
        names = [name] if name else sorted(self.core.model_names())
        if (
            name
            and name not in self.core.model_names()
            and not self.core.monitor.get_version_states(name)
            and not any(key[0] == name for key in counted)
        ):
            raise NotFound(f"Unknown model '{name}'")
        for model in names:
            keys.update((model, v) for v in self.core.monitor.get_version_states(model))
        keys.update(key for key in counted if not name or key[0] == name)
        if version:
            spec = _version_spec(name, version) if name else None
            if spec is None or spec.version is None:
                raise InvalidArgument(f"Statistics need a version number, not {version!r}")
            keys = {key for key in keys if key[1] == spec.version}
            if not keys:
                raise NotFound(f"Model '{name}' has no version {version}")
        return [
            ModelStatistics(model, str(v), counted.get((model, v), VersionStatistics()))
            for model, v in sorted(keys)
        ]

    # -- model repository ----------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every configured model's known versions with their states (a configured model
        with none yet: one entry with an empty version, ``UNAVAILABLE``), and the models
        this API unloaded (one entry each, ``UNAVAILABLE``, reason ``unloaded``)."""
        entries: list[IndexEntry] = []
        configured = set(self.core.model_names())
        for name in sorted(configured | set(self.core.repository_unloaded)):
            if name not in configured:  # unloaded through this API
                if not ready_only:
                    entries.append(IndexEntry(name, "", "UNAVAILABLE", "unloaded"))
                continue
            states = self.core.monitor.get_version_states(name)
            if not states and not ready_only:
                entries.append(IndexEntry(name, "", "UNAVAILABLE", "no version found yet"))
            for version in sorted(states):
                state = states[version]
                entry = IndexEntry(
                    name,
                    str(version),
                    _INDEX_STATES[state.state],
                    state.error.message if state.error is not None else "",
                )
                if not ready_only or entry.state == "READY":
                    entries.append(entry)
        return entries

    def load(self, name: str, parameters: Mapping[str, Any]) -> None:
        """Load (or reload) ``name`` as a config reload would.

        ``parameters`` may give ``base_path`` (and ``model_platform``), or ``config``: JSON
        of TF Serving's ``ModelConfig`` (``base_path``, ``model_platform``,
        ``model_version_policy``, ``version_labels``...). A model not configured needs a
        ``base_path``. Returns once the model set has settled; ``Unavailable`` when the model
        then has no AVAILABLE version (it stays configured, as after a config reload)."""
        if not name:
            raise InvalidArgument("Load needs a model name")
        for key in parameters:
            if key.startswith("file:"):
                raise InvalidArgument(
                    f"Parameter {key!r}: model files in the request are not supported; give "
                    "the model's base_path"
                )
        config = self.core.config
        models = config.model_config_list.config
        current = next((m for m in models if m.name == name), None)
        if current is None:
            current = self.core.repository_unloaded.get(name)  # unloaded here: as it was
        model = model_server_config_pb2.ModelConfig()
        if current is not None:
            model.CopyFrom(current)
        text = parameters.get("config")
        if text is not None:
            model = _model_config(name, text)
        base_path = parameters.get("base_path")
        if base_path is not None:
            if not isinstance(base_path, str) or not base_path:
                raise InvalidArgument("Parameter 'base_path' must be a non-empty string")
            model.base_path = base_path
        platform = parameters.get("model_platform")
        if platform is not None:
            model.model_platform = str(platform)
        model.name = name
        if not model.base_path:
            raise InvalidArgument(
                f"Model '{name}' is not configured: load it with a 'base_path' parameter "
                '(or a "config" parameter holding its ModelConfig as JSON)'
            )
        _check_base_path(model.base_path)
        kept = [m for m in models if m.name != name]
        del models[:]
        models.extend([*kept, model])
        self.core.reload_config(config)
        self.core.repository_unloaded.pop(name, None)
        if not self.core.manager.available_versions(name):
            reasons = [
                s.error.message
                for s in self.core.monitor.get_version_states(name).values()
                if s.error is not None
            ]
            raise Unavailable(
                f"Model '{name}' did not become available" + (f": {reasons[-1]}" if reasons else "")
            )

    def unload(self, name: str) -> None:
        """Remove ``name`` from the model set (as a config reload without it); returns once
        it is unloaded. It stays in the repository index (``UNAVAILABLE``) and loads again
        by name with the config it had; unloading it again does nothing. ``NotFound`` for a
        model neither configured nor unloaded here."""
        config = self.core.config
        models = config.model_config_list.config
        current = next((m for m in models if m.name == name), None)
        if current is None:
            if name in self.core.repository_unloaded:
                return
            raise NotFound(f"Model '{name}' is not configured")
        remembered = model_server_config_pb2.ModelConfig()
        remembered.CopyFrom(current)
        kept = [m for m in models if m.name != name]
        del models[:]
        models.extend(kept)
        self.core.reload_config(config)
        self.core.repository_unloaded[name] = remembered


def _tensors(tensor_map: Any) -> list[TensorMetadata]:
    return [
        TensorMetadata(
            alias,
            codec.tf_datatype(tensor_map[alias].dtype),
            codec.metadata_shape(tensor_map[alias]),
        )
        for alias in sorted(tensor_map)
    ]


def _model_config(name: str, text: Any) -> model_server_config_pb2.ModelConfig:
    if not isinstance(text, str):
        raise InvalidArgument("Parameter 'config' must be a string holding JSON")
    model = model_server_config_pb2.ModelConfig()
    try:
        json_format.Parse(text, model, ignore_unknown_fields=False)
    except (json_format.ParseError, json.JSONDecodeError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"Parameter 'config' is not a ModelConfig in JSON: {exc}") from None
    if model.name and model.name != name:
        raise InvalidArgument(f"Parameter 'config' names model {model.name!r}, not {name!r}")
    return model


def _check_base_path(base_path: str) -> None:
    """A local base path must be a directory with at least one version directory (a load
    would otherwise wait for a version forever); remote paths (``scheme://``) are left to
    their source."""
    if "://" in base_path:
        return
    try:
        children = os.listdir(base_path)
    except OSError as exc:
        raise InvalidArgument(f"base_path {base_path!r} cannot be read: {exc.strerror}") from None
    if not any(
        c.isascii() and c.isdigit() and os.path.isdir(os.path.join(base_path, c)) for c in children
    ):
        raise InvalidArgument(
            f"base_path {base_path!r} holds no version directory (a directory named by a "
            "version number)"
        )


def decode_inputs(
    inputs: Sequence[InputTensor], signature_inputs: Any | None
) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, each checked against its signature tensor.

    ``InvalidArgument`` for an input the signature does not have, an input given twice, and
    every datatype, shape or data error of :mod:`codec` (a decoded input never holds more
    elements than the request carried). Missing inputs are reported by the predict path, as
    for V1. ``signature_inputs`` None (a model without a declared signature): every input is
    taken with the datatype and shape the request gives."""
    arrays: dict[str, np.ndarray] = {}
    for tensor in inputs:
        name = tensor.name
        if signature_inputs is None:
            if type(name) is not str or not name:
                raise InvalidArgument(f"invalid inference input name {name!r}")
            info = None
        else:
            info = signature_inputs.get(name) if type(name) is str else None
        if info is None and signature_inputs is not None:
            raise InvalidArgument(
                f"unexpected inference input {name!r}: the signature's inputs are "
                f"{sorted(signature_inputs)}"
            )
        if name in arrays:
            raise InvalidArgument(f"input {name!r} is given twice")
        _dtype, shape, count = codec.check_header(name, tensor.datatype, tensor.shape, info)
        if tensor.form == RAW:
            arrays[name] = codec.from_raw(name, tensor.datatype, shape, count, tensor.data)
        elif tensor.form == JSON:
            arrays[name] = codec.from_json(name, tensor.datatype, shape, count, tensor.data)
        else:
            arrays[name] = codec.from_contents(name, tensor.datatype, shape, count, tensor.data)
    return arrays


__all__ = [
    "CONTENTS",
    "EXTENSIONS",
    "JSON",
    "RAW",
    "IndexEntry",
    "InferRequest",
    "InferResult",
    "InputTensor",
    "ModelMetadata",
    "ModelStatistics",
    "OutputTensor",
    "TensorMetadata",
    "V2Service",
    "decode_inputs",
]
