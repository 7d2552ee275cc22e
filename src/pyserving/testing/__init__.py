"""Helpers for pyserving's tests and benchmarks: test models exported with the installed
TensorFlow (:mod:`pyserving.testing.models`)."""
