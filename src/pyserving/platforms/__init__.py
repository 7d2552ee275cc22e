"""Model platforms: one sub-package per platform, each providing a Loader and its servable.

``tensorflow`` serves SavedModels (the only platform TF Serving's ``model_platform`` accepts
by default). ``tflite`` serves ``model.tflite`` files for that same platform when
``--prefer_tflite_model`` is set. A platform package imports its runtime lazily at load time
where it can, so that importing :mod:`pyserving` stays cheap for code that never loads a
model.
"""
