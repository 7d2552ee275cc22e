"""The ``tensorflow`` platform plugin: SavedModels, or ``model.tflite`` with
``--prefer_tflite_model`` (as TF Serving)."""

from __future__ import annotations

from pyserving.core.loader import Loader
from pyserving.platforms.registry import Platform, PlatformOptions

#: A version directory holding one of these is a complete SavedModel.
SAVED_MODEL_MARKERS: tuple[str, ...] = ("saved_model.pb", "saved_model.pbtxt")
TFLITE_MODEL_FILENAME = "model.tflite"


class TensorFlowPlatform(Platform):
    """SavedModels through :class:`SavedModelLoader`; with ``prefer_tflite_model`` and
    ``model.tflite`` in the version directory, :class:`TfLiteLoader`."""

    name = "tensorflow"
    markers = SAVED_MODEL_MARKERS
    priority = 10

    def version_markers(self, options: PlatformOptions) -> tuple[str, ...]:
        if options.prefer_tflite_model:
            return (*SAVED_MODEL_MARKERS, TFLITE_MODEL_FILENAME)
        return SAVED_MODEL_MARKERS

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        if options.prefer_tflite_model:
            from pyserving.platforms.tflite.loader import TfLiteLoader, has_tflite_model

            if has_tflite_model(path):
                return TfLiteLoader(
                    path, options.num_tflite_pools, options.num_tflite_interpreters_per_pool
                )
        from pyserving.platforms.tensorflow.loader import SavedModelLoader

        return SavedModelLoader(
            path,
            options.saved_model_tags,
            intra_op_threads=options.intra_op_threads,
            inter_op_threads=options.inter_op_threads,
            session_config=options.session_config,
        )
