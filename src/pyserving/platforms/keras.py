"""The ``keras`` platform: a Keras 3 model saved as ``model.keras``, served with Keras's own
backend (``KERAS_BACKEND``; TensorFlow's by default, which the base install has): no
SavedModel export needed.

Signature ``serving_default`` (method predict): the model's inputs by their names (the
``keras.Input(name=...)`` given), with their dtypes and shapes (``None`` dimensions as -1);
outputs by the model's ``output_names`` (a dict-returning model: its keys). A model with one
input takes it as an array, with several a dict by name. Requests the model cannot take
(shapes, dtypes) are INVALID_ARGUMENT with Keras's message.

RAM estimate: 1.2 x the size of ``model.keras`` plus a fixed overhead measured on the example
model (the backend's runtime itself, loaded for TensorFlow models anyway, is not counted).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from pyserving.core.loader import Loader
from pyserving.platforms.generic_estimate import MIB, estimate
from pyserving.platforms.registry import Platform, PlatformOptions

#: RAM a loaded version takes beyond its files' size (the example model's first load grew
#: the process by 5.16 MB; see docs/configuration.md, Model platforms).
OVERHEAD = int(5.4 * MIB)

MODEL_FILE = "model.keras"


def _spec(tensor: Any) -> Any:
    from pyserving.platforms.generic import TensorSpec

    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSpec(np.dtype(str(tensor.dtype)), shape)


def keras_servable(path: str, options: PlatformOptions) -> Any:
    """Load ``path``/model.keras (see the module docstring)."""
    from pyserving.errors import InvalidArgument
    from pyserving.platforms.generic import ModelServable, SignatureSpec, TensorSpec, require

    keras = require("keras", "keras")
    file = os.path.join(path, MODEL_FILE)
    if not zipfile.is_zipfile(file):
        # (Keras itself says "File not found" of a file that exists but is no archive.)
        raise InvalidArgument(
            f"Could not load the model at {path}: {MODEL_FILE} is not a Keras 3 model (a "
            ".keras file is a zip archive)"
        )
    model = keras.saving.load_model(file, compile=False)
    model_inputs = list(model.inputs)
    names = [str(getattr(t, "name", f"input_{i}")) for i, t in enumerate(model_inputs)]
    inputs = {name: _spec(t) for name, t in zip(names, model_inputs, strict=True)}
    output_names = [str(n) for n in getattr(model, "output_names", [])] or ["output"]
    model_outputs = list(getattr(model, "outputs", []) or [])
    outputs = {
        name: _spec(model_outputs[i]) if i < len(model_outputs) else TensorSpec(np.float32)
        for i, name in enumerate(output_names)
    }

    def run(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        args: Any = feeds[names[0]] if len(names) == 1 else {n: feeds[n] for n in names}
        try:
            result = model(args, training=False)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(" ".join(str(exc).split())) from None
        if isinstance(result, Mapping):
            items = list(result.items())
        elif isinstance(result, (list, tuple)):
            items = list(zip(output_names, result, strict=False))
        else:
            items = [(output_names[0], result)]
        return {str(k): keras.ops.convert_to_numpy(v) for k, v in items}

    return ModelServable(
        path,
        {"serving_default": SignatureSpec(inputs, outputs)},
        {"serving_default": run},
        backend="keras",
    )


class KerasPlatform(Platform):
    """Keras 3 ``.keras`` models."""

    name = "keras"
    markers = (MODEL_FILE,)
    priority = 25

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        from pyserving.platforms.generic import ModelLoader

        return ModelLoader(path, lambda: keras_servable(path, options), estimate(path, OVERHEAD))
