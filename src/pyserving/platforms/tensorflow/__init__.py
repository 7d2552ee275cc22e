"""The TensorFlow SavedModel platform: :class:`SavedModelLoader` and :class:`SavedModelServable`."""

from pyserving.platforms.tensorflow.loader import SavedModelLoader, read_saved_model
from pyserving.platforms.tensorflow.servable import (
    INIT_OP_SIGNATURE_KEY,
    SavedModelServable,
)

__all__ = [
    "INIT_OP_SIGNATURE_KEY",
    "SavedModelLoader",
    "SavedModelServable",
    "read_saved_model",
]
