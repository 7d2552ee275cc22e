"""The ``onnx`` platform: ``model.onnx`` run by onnxruntime on CPU (extra ``[onnx]``).

Signature ``serving_default`` (method predict): the graph's inputs and tensor outputs by
their ONNX names, with their dtypes and shapes (dynamic axes, named or not, as -1). Outputs
that are not tensors (sequences and maps, e.g. skl2onnx's ZipMap probabilities) are left out:
export classifiers with ``options={"zipmap": False}`` to serve their probabilities.

Threads: ``--tensorflow_intra_op_parallelism`` / ``--tensorflow_inter_op_parallelism`` (or
``--tensorflow_session_parallelism``) set onnxruntime's intra- and inter-op thread counts
(0 = onnxruntime's default). onnxruntime errors about the request (wrong rank or shape, a
bad value) are INVALID_ARGUMENT; others INTERNAL.

RAM estimate: 1.2 x the size of ``model.onnx`` plus a fixed overhead measured on the example model.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pyserving.core.loader import Loader
from pyserving.platforms.generic_estimate import MIB, estimate
from pyserving.platforms.registry import Platform, PlatformOptions

#: RAM a loaded version takes beyond its files' size (the example model's first load grew
#: the process by 8.67 MB; see docs/configuration.md, Model platforms).
OVERHEAD = int(9.1 * MIB)

MODEL_FILE = "model.onnx"

_ONNX_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": str,
}


def _shape(shape: Any) -> tuple[int, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _feed(value: np.ndarray, dtype: Any) -> np.ndarray:
    if dtype is str and value.dtype.kind in "OS":
        flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.ravel()]
        return np.array(flat, dtype=object).reshape(value.shape)
    return value


def onnx_servable(path: str, options: PlatformOptions) -> Any:
    """Load ``path``/model.onnx into a :class:`ModelServable`."""
    from pyserving.errors import Internal, InvalidArgument
    from pyserving.platforms.generic import ModelServable, SignatureSpec, TensorSpec, require

    ort = require("onnxruntime", "onnx")
    session_options = ort.SessionOptions()
    if options.intra_op_threads > 0:
        session_options.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads > 0:
        session_options.inter_op_num_threads = options.inter_op_threads
    session = ort.InferenceSession(
        os.path.join(path, MODEL_FILE), session_options, providers=["CPUExecutionProvider"]
    )
    inputs = {}
    for arg in session.get_inputs():
        if arg.type not in _ONNX_DTYPES:
            raise InvalidArgument(f"{MODEL_FILE} input {arg.name} has unsupported type {arg.type}")
        inputs[arg.name] = TensorSpec(_ONNX_DTYPES[arg.type], _shape(arg.shape))
    outputs = {
        arg.name: TensorSpec(_ONNX_DTYPES[arg.type], _shape(arg.shape))
        for arg in session.get_outputs()
        if arg.type in _ONNX_DTYPES
    }
    names = list(outputs)
    dtypes = {name: spec.dtype for name, spec in inputs.items()}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        values = {k: _feed(v, dtypes[k]) for k, v in feeds.items()}
        try:
            results = session.run(names, values)
        except Exception as exc:
            kind = type(exc).__name__
            text = " ".join(str(exc).split())
            if kind in ("InvalidArgument", "InvalidGraph") or "INVALID_ARGUMENT" in text:
                raise InvalidArgument(text) from None
            raise Internal(f"onnxruntime {kind}: {text}") from None
        return dict(zip(names, results, strict=True))

    return ModelServable(
        path,
        {"serving_default": SignatureSpec(inputs, outputs)},
        {"serving_default": run},
        backend="onnx",
    )


class OnnxPlatform(Platform):
    """ONNX models through onnxruntime."""

    name = "onnx"
    markers = (MODEL_FILE,)
    priority = 20

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        from pyserving.platforms.generic import ModelLoader

        return ModelLoader(path, lambda: onnx_servable(path, options), estimate(path, OVERHEAD))
