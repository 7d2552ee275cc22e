"""The dashboard's "try it" request: a predict body for a loaded version.

From the version's first recorded warmup request when it has one
(``assets.extra/tf_serving_warmup_requests``, a PredictLog: a real request, so a real
answer), else built from its predict signature: every input as a tensor of its dtype and
shape, unknown dimensions as 1, filled with ones (``""`` for strings, ``true`` for bools).
The body is TF Serving's columnar REST format (``{"signature_name": ..., "inputs": {...}}``),
sent by the page to the ordinary ``:predict`` endpoint.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import numpy as np

from pyserving.server.service import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

#: A warmup request larger than this (as JSON text, roughly) is not offered; the signature's
#: example is, instead.
MAX_EXAMPLE_ELEMENTS = 4096

_PREDICT_METHOD = "tensorflow/serving/predict"


def example_request(servable: Any) -> dict[str, Any]:
    """``{"source": "warmup"|"signature"|"none", "signature_name": str, "body": dict,
    "note": str}`` for ``servable`` (one whose ``signature_defs`` maps names to
    SignatureDefs; ``path``, when present, is its version directory)."""
    path = getattr(servable, "path", None)
    if isinstance(path, str):
        try:
            from_warmup = _from_warmup(path)
        except Exception as exc:  # a bad file already failed the load; never fail here
            log.debug("warmup example of %s not usable: %s", path, exc)
            from_warmup = None
        if from_warmup is not None:
            return from_warmup
    signatures = getattr(servable, "signature_defs", {}) or {}
    name, signature = _predict_signature(signatures)
    if signature is None:
        return {
            "source": "none",
            "signature_name": "",
            "body": {"inputs": {}},
            "note": "No predict signature: write the request by hand.",
        }
    if not signature.inputs:
        return {
            "source": "none",
            "signature_name": name,
            "body": {"signature_name": name, "inputs": {}},
            "note": "The model declares no inputs: name them as it expects.",
        }
    inputs = {alias: _example_value(signature.inputs[alias]) for alias in sorted(signature.inputs)}
    return {
        "source": "signature",
        "signature_name": name,
        "body": {"signature_name": name, "inputs": inputs},
        "note": "Built from the signature: unknown dimensions as 1, values as ones.",
    }


def _predict_signature(signatures: Any) -> tuple[str, Any]:
    if DEFAULT_SIGNATURE in signatures:
        return DEFAULT_SIGNATURE, signatures[DEFAULT_SIGNATURE]
    for name in sorted(signatures):
        if signatures[name].method_name in ("", _PREDICT_METHOD):
            return name, signatures[name]
    for name in sorted(signatures):
        return name, signatures[name]
    return "", None


def _example_value(tensor_info: Any) -> Any:
    from pyserving.codec.dtypes import numpy_dtype

    shape: list[int] = []
    if not tensor_info.tensor_shape.unknown_rank:
        shape = [d.size if d.size > 0 else 1 for d in tensor_info.tensor_shape.dim]
    if int(np.prod(shape, dtype=np.int64)) > MAX_EXAMPLE_ELEMENTS:
        shape = [1] * len(shape)
    try:
        dtype = numpy_dtype(tensor_info.dtype)
    except Exception:
        dtype = np.dtype(np.float32)
    if dtype.kind in ("S", "U", "O"):
        return np.full(shape, "", dtype=object).tolist()
    if dtype.kind == "b":
        return np.ones(shape, dtype=bool).tolist()
    if dtype.kind == "c":
        return np.ones(shape, dtype=np.float32).tolist()
    return np.ones(shape, dtype=dtype).tolist()


def _from_warmup(path: str) -> dict[str, Any] | None:
    from pyserving.codec.tensor_proto import tensor_proto_to_ndarray
    from pyserving.warmup import load_warmup_records

    for record in load_warmup_records(path):
        if record.WhichOneof("log_type") != "predict_log":
            continue
        request = record.predict_log.request
        inputs: dict[str, Any] = {}
        elements = 0
        for alias in sorted(request.inputs):
            array = tensor_proto_to_ndarray(request.inputs[alias])
            elements += int(array.size)
            if elements > MAX_EXAMPLE_ELEMENTS:
                return None
            inputs[alias] = _json_value(array)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        return {
            "source": "warmup",
            "signature_name": name,
            "body": {"signature_name": name, "inputs": inputs},
            "note": "The version's first warmup request.",
        }
    return None


def _json_value(array: np.ndarray) -> Any:
    if array.dtype.kind in ("S", "O"):

        def text(value: Any) -> Any:
            if isinstance(value, bytes):
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(value).decode("ascii")}
            return value

        flat = [text(v) for v in array.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()
