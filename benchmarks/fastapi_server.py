"""The baseline: the FastAPI + uvicorn server a user would write instead, for a TensorFlow,
ONNX or PyTorch model.

``python -m benchmarks.fastapi_server --port P --model_name NAME --model_base_path PATH``
serves ``POST /v1/models/NAME:predict`` with TF Serving's row format (``{"instances": [...]}``
in, ``{"predictions": [...]}`` out) for the newest version under ``PATH``, run the way each
runtime's documentation shows:

* ``saved_model.pb``: loaded with ``tf.saved_model.load`` and called through its
  ``serving_default`` signature function;
* ``model.onnx``: an onnxruntime ``InferenceSession`` on the CPU provider (default session
  options), ``session.run(None, {input: x})``;
* ``model.pt2``: ``torch.export.load(...).module()`` called under ``torch.inference_mode()``
  (default thread count), ``torch.from_numpy`` in, ``.numpy()`` out.

It is written the straightforward way: a Pydantic request model, a plain ``def`` endpoint
(FastAPI runs it on its thread pool, so the event loop is not blocked by the model), NumPy
in, ``.tolist()`` out, FastAPI's default JSON response, one uvicorn worker (uvloop and
httptools, as ``uvicorn`` picks them when installed). The only change from uvicorn's
defaults is that the access log is off, as pyserving has none. It also answers
``GET /v1/models/NAME`` so readiness can be polled as with pyserving.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel


class PredictRequest(BaseModel):
    """TF Serving's row-format request body."""

    instances: list[Any]


def _latest_version(base_path: pathlib.Path) -> pathlib.Path:
    versions = sorted(
        (p for p in base_path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    if not versions:
        raise SystemExit(f"no version directory under {base_path}")
    return versions[-1]


#: ``run(x) -> {output name: array}``, the input's NumPy dtype.
Runner = tuple[Callable[[Any], dict[str, Any]], Any]


def _tensorflow(version: pathlib.Path) -> Runner:
    import tensorflow as tf

    model = tf.saved_model.load(str(version))
    predict_fn = model.signatures["serving_default"]
    _args, kwargs = predict_fn.structured_input_signature
    (input_name, input_spec), *_ = kwargs.items()

    def run(x: Any) -> dict[str, Any]:
        outputs = predict_fn(**{input_name: tf.constant(x)})
        return {name: value.numpy() for name, value in outputs.items()}

    return run, input_spec.dtype.as_numpy_dtype


def _onnx(version: pathlib.Path) -> Runner:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(x: Any) -> dict[str, Any]:
        return dict(zip(names, session.run(None, {input_name: x}), strict=True))

    return run, np.float32


def _torch(version: pathlib.Path) -> Runner:
    import numpy as np
    import torch

    module = torch.export.load(str(version / "model.pt2")).module()

    def run(x: Any) -> dict[str, Any]:
        with torch.inference_mode():
            result = module(torch.from_numpy(x))
        if isinstance(result, dict):
            return {name: value.numpy() for name, value in result.items()}
        return {"output": result.numpy()}

    return run, np.float32


def build_app(model_name: str, base_path: pathlib.Path) -> Any:
    """The FastAPI application serving ``model_name`` from ``base_path``."""
    import numpy as np
    from fastapi import FastAPI, HTTPException

    version = _latest_version(base_path)
    if (version / "model.onnx").is_file():
        run, dtype = _onnx(version)
    elif (version / "model.pt2").is_file():
        run, dtype = _torch(version)
    else:
        run, dtype = _tensorflow(version)

    app = FastAPI()

    # response_model=None: the answer goes through FastAPI's default JSON encoding, as it does
    # for an endpoint written without a return annotation.
    @app.get(f"/v1/models/{model_name}", response_model=None)
    def status() -> dict[str, Any]:
        return {
            "model_version_status": [
                {"version": version.name, "state": "AVAILABLE", "status": {"error_code": "OK"}}
            ]
        }

    @app.post(f"/v1/models/{model_name}:predict", response_model=None)
    def predict(request: PredictRequest) -> dict[str, Any]:
        try:
            x = np.asarray(request.instances, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        outputs = run(x)
        output_names = sorted(outputs)
        if len(output_names) == 1:
            return {"predictions": outputs[output_names[0]].tolist()}
        columns = {name: outputs[name].tolist() for name in output_names}
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
        return {"predictions": rows}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fastapi_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import uvicorn

    app = build_app(args.model_name, args.model_base_path)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
