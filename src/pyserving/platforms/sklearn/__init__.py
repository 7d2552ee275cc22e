"""The ``sklearn`` platform: a fitted scikit-learn estimator in ``model.joblib`` (joblib) or
``model.pkl`` (pickle).

Loading a pickle runs code: only model directories the operator configured are read, and
they must be trusted as much as the server's own code.

Signature ``serving_default`` (method predict): input ``inputs``, float32 ``[-1, n]`` (``n``
is the estimator's ``n_features_in_`` when it has one; values are converted to float64 for
the estimator). Outputs: for a classifier, ``classes`` (``predict``: the class labels,
strings as DT_STRING, numbers as int64 or float32) and, when it has ``predict_proba``,
``scores`` (float32 ``[-1, n_classes]``, in the order of ``classes_``); for anything else,
``outputs`` (``predict``, float32).

TF Serving's Classify and Regress APIs (signatures ``classify``, for classifiers with
``predict_proba``: ``classes`` are the class labels as strings, ``scores`` their
probabilities; ``regress``, for other estimators) take ``tf.Example``s holding either one
value per feature name (``feature_names_in_``, for estimators fitted on a DataFrame) or a
feature ``inputs`` with all values in order.

RAM estimate: 1.2 x the file's size plus a fixed overhead measured on the example model.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pyserving.core.loader import Loader
from pyserving.errors import InvalidArgument
from pyserving.platforms.generic_estimate import MIB, estimate
from pyserving.platforms.registry import Platform, PlatformOptions

#: RAM a loaded version takes beyond its files' size (the example model's first load grew
#: the process by 9.88 MB; see docs/configuration.md, Model platforms).
OVERHEAD = int(10.4 * MIB)

MODEL_FILES = ("model.joblib", "model.pkl")


def _classes_dtype(classes: np.ndarray) -> Any:
    if classes.dtype.kind in "OSU":
        return str
    if classes.dtype.kind in "iub":
        return np.int64
    return np.float32


def load_estimator(path: str) -> Any:
    """Unpickle the estimator in the version directory ``path``."""
    for name in MODEL_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            if name.endswith(".joblib"):
                from pyserving.platforms.generic import require

                joblib = require("joblib", "sklearn")
                return joblib.load(file)
            import pickle

            with open(file, "rb") as f:
                return pickle.load(f)
    raise FileNotFoundError(f"none of {', '.join(MODEL_FILES)} in {path}")


def estimator_servable(path: str, estimator: Any, backend: str = "sklearn") -> Any:
    """A :class:`ModelServable` serving ``estimator`` (see the module docstring)."""
    from pyserving.platforms.generic import (
        ModelServable,
        SignatureSpec,
        TensorSpec,
        example_signatures,
    )

    if not callable(getattr(estimator, "predict", None)):
        raise InvalidArgument(
            f"The model at {path} is a {type(estimator).__name__}, not an estimator: it has "
            "no predict method"
        )
    n = getattr(estimator, "n_features_in_", None)
    inputs = {"inputs": TensorSpec(np.float32, (-1, int(n) if n is not None else -1))}
    classes = getattr(estimator, "classes_", None)
    width: tuple[int, ...] = ()  # a regressor's output shape beyond the batch
    if classes is not None:
        classes = np.asarray(classes)
        classes_dtype = _classes_dtype(classes)
        outputs = {"classes": TensorSpec(classes_dtype, (-1,))}
        has_proba = hasattr(estimator, "predict_proba")
        if has_proba:
            outputs["scores"] = TensorSpec(np.float32, (-1, len(classes)))

        def predict(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            x = np.asarray(feeds["inputs"], dtype=np.float64)
            labels = np.asarray(estimator.predict(x))
            result: dict[str, Any] = {
                "classes": labels if classes_dtype is str else labels.astype(classes_dtype)
            }
            if has_proba:
                result["scores"] = np.asarray(estimator.predict_proba(x), dtype=np.float32)
            return result

    else:
        # A multi-output regressor answers a row of values per row: its width, from one
        # prediction of zeros (unknown when that fails: the shape stays [-1]).
        if n is not None:
            try:
                width = np.asarray(estimator.predict(np.zeros((1, int(n))))).shape[1:]
            except Exception:
                width = ()
        outputs = {"outputs": TensorSpec(np.float32, (-1, *width))}

        def predict(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            x = np.asarray(feeds["inputs"], dtype=np.float64)
            return {"outputs": np.asarray(estimator.predict(x), dtype=np.float32)}

    signatures: dict[str, Any] = {"serving_default": SignatureSpec(inputs, outputs)}
    functions: dict[str, Any] = {"serving_default": predict}
    if n is not None:
        names = getattr(estimator, "feature_names_in_", None)
        if classes is not None and hasattr(estimator, "predict_proba"):
            extra, fns = example_signatures(
                int(n),
                None if names is None else [str(v) for v in names],
                [str(c) for c in classes],
                lambda x: estimator.predict_proba(np.asarray(x, dtype=np.float64)),
                None,
            )
        elif classes is None and int(np.prod(width)) == 1:  # Regress: one value per example
            extra, fns = example_signatures(
                int(n),
                None if names is None else [str(v) for v in names],
                None,
                None,
                lambda x: estimator.predict(np.asarray(x, dtype=np.float64)),
            )
        else:
            extra, fns = {}, {}
        signatures.update(extra)
        functions.update(fns)
    return ModelServable(path, signatures, functions, backend=backend)


class SklearnPlatform(Platform):
    """scikit-learn estimators (and other picklable objects with ``predict``)."""

    name = "sklearn"
    markers = MODEL_FILES
    priority = 60

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        from pyserving.platforms.generic import ModelLoader

        return ModelLoader(
            path, lambda: estimator_servable(path, load_estimator(path)), estimate(path, OVERHEAD)
        )
