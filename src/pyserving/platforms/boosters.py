"""The ``xgboost`` and ``lightgbm`` platforms: native gradient-boosted tree boosters.

* ``xgboost`` (extra ``[xgboost]``): ``model.ubj`` or ``model.json`` (``Booster.save_model``),
  loaded into an ``xgboost.Booster``;
* ``lightgbm`` (extra ``[lightgbm]``): ``model.txt`` (``Booster.save_model``), loaded into a
  ``lightgbm.Booster``.

Signature ``serving_default`` (method predict): input ``inputs``, float32 ``[-1, n]`` (``n``
is the booster's number of features). Classifiers (objectives ``binary:*``/``multi:*``,
``binary``/``multiclass*``) answer ``classes`` (int64 ``[-1]``, the most probable class) and
``scores`` (float32 ``[-1, n_classes]``, the classes' probabilities; a binary model's
``[1 - p, p]``; ``multi:softmax`` and ``binary:logitraw`` boosters' from their margins, as
``multi:softprob`` and ``binary:logistic`` predict them; ``binary:hinge``'s are 0 and 1);
anything else answers ``outputs`` (float32 ``[-1]``, the raw prediction).

TF Serving's Classify API (signature ``classify``: ``classes`` are the class indices as
strings, ``scores`` their probabilities) and Regress API (signature ``regress``, for other
objectives) take ``tf.Example``s holding one value per feature name the booster was trained
with, or a feature ``inputs`` with all values in order.

RAM estimate: 1.2 x the model file's size plus a fixed overhead measured on the example model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from pyserving.core.loader import Loader
from pyserving.platforms.generic_estimate import MIB, estimate
from pyserving.platforms.registry import Platform, PlatformOptions

#: RAM a loaded version takes beyond its files' size (the example models' first loads grew
#: the process by 1.55 MB and 1.27 MB; see docs/configuration.md, Model platforms).
XGBOOST_OVERHEAD = int(1.6 * MIB)
LIGHTGBM_OVERHEAD = int(1.3 * MIB)

XGBOOST_FILES = ("model.ubj", "model.json")
LIGHTGBM_FILES = ("model.txt",)


def booster_servable(
    path: str,
    backend: str,
    n_features: int,
    n_classes: int,
    predict: Callable[[np.ndarray], np.ndarray],
    feature_names: list[str] | None = None,
) -> Any:
    """A :class:`ModelServable` over ``predict(x) -> raw predictions``. ``n_classes`` is 0
    for regression (and ranking), 2 for binary, more for multi-class models."""
    from pyserving.platforms.generic import (
        ModelServable,
        SignatureSpec,
        TensorSpec,
        example_signatures,
    )

    inputs = {"inputs": TensorSpec(np.float32, (-1, n_features))}

    def class_scores(x: np.ndarray) -> np.ndarray:
        """Every class's probability, one row per row of ``x`` (a binary model predicts
        P(class 1) alone; a multi-class one of two classes, both)."""
        if len(x) == 0:
            return np.zeros((0, n_classes), np.float32)
        raw = np.asarray(predict(x), dtype=np.float32).reshape(len(x), -1)
        return np.concatenate([1 - raw, raw], axis=1) if raw.shape[1] == 1 else raw

    if n_classes >= 2:
        outputs = {
            "classes": TensorSpec(np.int64, (-1,)),
            "scores": TensorSpec(np.float32, (-1, n_classes)),
        }

        def run(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            x = np.asarray(feeds["inputs"], dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != n_features:
                raise ValueError(f"inputs must have shape [-1, {n_features}], not {list(x.shape)}")
            scores = class_scores(x)
            return {"classes": scores.argmax(axis=1).astype(np.int64), "scores": scores}

    else:
        outputs = {"outputs": TensorSpec(np.float32, (-1,))}

        def run(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            x = np.asarray(feeds["inputs"], dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != n_features:
                raise ValueError(f"inputs must have shape [-1, {n_features}], not {list(x.shape)}")
            if len(x) == 0:
                return {"outputs": np.zeros(0, np.float32)}
            return {"outputs": np.asarray(predict(x), dtype=np.float32).reshape(len(x))}

    signatures: dict[str, Any] = {"serving_default": SignatureSpec(inputs, outputs)}
    functions: dict[str, Any] = {"serving_default": run}
    if n_classes >= 2:
        extra, fns = example_signatures(
            n_features, feature_names, [str(i) for i in range(n_classes)], class_scores, None
        )
    else:
        extra, fns = example_signatures(n_features, feature_names, None, None, predict)
    signatures.update(extra)
    functions.update(fns)
    return ModelServable(path, signatures, functions, backend=backend)


def _first(path: str, names: tuple[str, ...]) -> str:
    for name in names:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            return file
    raise FileNotFoundError(f"none of {', '.join(names)} in {path}")


def xgboost_servable(path: str, options: PlatformOptions) -> Any:
    """Load an XGBoost booster from ``path``."""
    from pyserving.platforms.generic import require

    xgb = require("xgboost", "xgboost")
    booster = xgb.Booster(model_file=_first(path, XGBOOST_FILES))
    if options.intra_op_threads > 0:
        booster.set_param({"nthread": options.intra_op_threads})
    learner = json.loads(booster.save_config())["learner"]
    objective = str(learner["objective"]["name"])
    n_classes = 0
    if objective.startswith("multi:"):
        n_classes = int(learner["learner_model_param"]["num_class"])
    elif objective.startswith("binary:"):
        n_classes = 2

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(x))

    # Classifiers answer probabilities. Objectives whose prediction is something else get
    # them from the margin: multi:softmax predicts the class index (softmax of the margins
    # is multi:softprob's answer), binary:logitraw the margin itself (its logistic is
    # binary:logistic's). binary:hinge predicts 0 or 1, which stand as its scores.
    if objective == "multi:softmax":

        def predict(x: np.ndarray) -> np.ndarray:
            margin = np.asarray(booster.inplace_predict(x, predict_type="margin"), np.float64)
            exp = np.exp(margin - margin.max(axis=1, keepdims=True))
            return exp / exp.sum(axis=1, keepdims=True)

    elif objective == "binary:logitraw":

        def predict(x: np.ndarray) -> np.ndarray:
            margin = np.asarray(booster.inplace_predict(x, predict_type="margin"), np.float64)
            return 1.0 / (1.0 + np.exp(-margin))

    names = booster.feature_names
    return booster_servable(
        path, "xgboost", int(booster.num_features()), n_classes, predict, names and list(names)
    )


def lightgbm_servable(path: str, options: PlatformOptions) -> Any:
    """Load a LightGBM booster from ``path``."""
    from pyserving.platforms.generic import require

    lgb = require("lightgbm", "lightgbm")
    booster = lgb.Booster(model_file=_first(path, LIGHTGBM_FILES))
    objective = str(booster.dump_model(num_iteration=0).get("objective", "")).split()[0]
    n_classes = 0
    if objective.startswith("multiclass"):
        n_classes = int(booster.num_model_per_iteration())
    elif objective in ("binary", "cross_entropy"):
        n_classes = 2
    kwargs: dict[str, Any] = {}
    if options.intra_op_threads > 0:
        kwargs["num_threads"] = options.intra_op_threads

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(x, **kwargs))

    names = [str(n) for n in booster.feature_name()]
    return booster_servable(path, "lightgbm", int(booster.num_feature()), n_classes, predict, names)


class XGBoostPlatform(Platform):
    """XGBoost boosters."""

    name = "xgboost"
    markers = XGBOOST_FILES
    priority = 40

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        from pyserving.platforms.generic import ModelLoader

        return ModelLoader(
            path, lambda: xgboost_servable(path, options), estimate(path, XGBOOST_OVERHEAD)
        )


class LightGBMPlatform(Platform):
    """LightGBM boosters."""

    name = "lightgbm"
    markers = LIGHTGBM_FILES
    priority = 50

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        from pyserving.platforms.generic import ModelLoader

        return ModelLoader(
            path, lambda: lightgbm_servable(path, options), estimate(path, LIGHTGBM_OVERHEAD)
        )
