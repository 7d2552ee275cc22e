"""The TFLite platform: ``model.tflite`` served by a pool of ``tf.lite.Interpreter``s.

Used for the ``tensorflow`` model platform when ``--prefer_tflite_model`` is set and a version
directory holds ``model.tflite`` (as TF Serving does). :class:`TfLiteLoader` and
:class:`TfLiteServable` follow the SavedModel platform's contracts, so the request path,
batching and warmup treat both alike.
"""

from pyserving.platforms.tflite.loader import (
    TFLITE_MODEL_FILENAME,
    TfLiteLoader,
    has_tflite_model,
    model_signatures,
    read_signature_defs,
)
from pyserving.platforms.tflite.servable import InterpreterPool, TfLiteRunner, TfLiteServable

__all__ = [
    "TFLITE_MODEL_FILENAME",
    "InterpreterPool",
    "TfLiteLoader",
    "TfLiteRunner",
    "TfLiteServable",
    "has_tflite_model",
    "model_signatures",
    "read_signature_defs",
]
