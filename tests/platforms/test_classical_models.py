"""Boosters and scikit-learn models: XGBoost and LightGBM classifiers answer every class's
probability, whatever their objective predicts, and the class they predict; empty batches
answer empty outputs; a pickle that is no estimator is a load error; a multi-output
regressor's signature has its width."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from pyserving.platforms.registry import PlatformOptions, get_platform

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


def _iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data.astype(np.float32), data.target


def _train_xgboost(path: pathlib.Path, objective: str, binary: bool) -> tuple[object, np.ndarray]:
    x, y = _iris()
    if binary:
        y = (y == 2).astype(int)
    params: dict[str, object] = {"objective": objective, "max_depth": 2, "seed": 0}
    if not binary:
        params["num_class"] = 3
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=5)
    path.mkdir(parents=True)
    booster.save_model(str(path / "model.json"))
    return booster, x


def _serve(path: pathlib.Path, platform: str) -> object:
    loader = get_platform(platform).loader(str(path), PlatformOptions())
    loader.load()
    return loader


@pytest.mark.parametrize(
    ("objective", "binary", "reference"),
    [
        ("multi:softprob", False, None),
        ("multi:softmax", False, "multi:softprob"),
        ("binary:logistic", True, None),
        # (Trained as binary:logistic its trees would differ: each objective starts from
        # its own base score. Its probabilities are the logistic of its margins.)
        ("binary:logitraw", True, "margin"),
    ],
)
def test_xgboost_classifiers_answer_probabilities(
    tmp_path: pathlib.Path, objective: str, binary: bool, reference: str | None
) -> None:
    booster, x = _train_xgboost(tmp_path / objective / "1", objective, binary)
    if reference == "margin":
        margin = np.asarray(booster.inplace_predict(x, predict_type="margin"), np.float64)
        want = (1 / (1 + np.exp(-margin))).astype(np.float32)
    else:
        # The same trees trained with the objective that predicts probabilities.
        probabilities_booster, _ = _train_xgboost(
            tmp_path / "reference" / objective / "1", reference or objective, binary
        )
        want = np.asarray(probabilities_booster.inplace_predict(x), np.float32)
    if binary:
        want = np.stack([1 - want, want], axis=1)
    loader = _serve(tmp_path / objective / "1", "xgboost")
    try:
        out = loader.servable().run("serving_default", {"inputs": x})  # type: ignore[attr-defined]
        np.testing.assert_allclose(out["scores"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-5)
        # The class is the one the booster itself predicts.
        if objective == "multi:softmax":
            np.testing.assert_array_equal(out["classes"], booster.inplace_predict(x))
        elif objective == "binary:logitraw":
            margin = booster.inplace_predict(x, predict_type="margin")
            np.testing.assert_array_equal(out["classes"], (margin > 0).astype(np.int64))
        empty = loader.servable().run(  # type: ignore[attr-defined]
            "serving_default", {"inputs": np.zeros((0, 4), np.float32)}
        )
        assert empty["scores"].shape == (0, 3 if not binary else 2)
        assert empty["classes"].shape == (0,)
    finally:
        loader.unload()  # type: ignore[attr-defined]


def test_xgboost_hinge_classes_are_the_boosters(tmp_path: pathlib.Path) -> None:
    booster, x = _train_xgboost(tmp_path / "hinge" / "1", "binary:hinge", True)
    loader = _serve(tmp_path / "hinge" / "1", "xgboost")
    try:
        out = loader.servable().run("serving_default", {"inputs": x})  # type: ignore[attr-defined]
        np.testing.assert_array_equal(out["classes"], booster.inplace_predict(x).astype(np.int64))
    finally:
        loader.unload()  # type: ignore[attr-defined]


def test_empty_batches_of_lightgbm_and_regressors(tmp_path: pathlib.Path) -> None:
    x, y = _iris()
    classifier = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1}, lgb.Dataset(x, y), 5
    )
    (tmp_path / "lgb" / "1").mkdir(parents=True)
    classifier.save_model(str(tmp_path / "lgb" / "1" / "model.txt"))
    regressor = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, label=y), 3)
    (tmp_path / "reg" / "1").mkdir(parents=True)
    regressor.save_model(str(tmp_path / "reg" / "1" / "model.json"))
    empty = np.zeros((0, 4), np.float32)
    for path, platform, shapes in (
        (tmp_path / "lgb" / "1", "lightgbm", {"classes": (0,), "scores": (0, 3)}),
        (tmp_path / "reg" / "1", "xgboost", {"outputs": (0,)}),
    ):
        loader = _serve(path, platform)
        try:
            out = loader.servable().run(  # type: ignore[attr-defined]
                "serving_default", {"inputs": empty}
            )
            assert {k: v.shape for k, v in out.items()} == shapes
        finally:
            loader.unload()  # type: ignore[attr-defined]


def test_a_pickle_that_is_not_an_estimator_is_a_load_error(tmp_path: pathlib.Path) -> None:
    import joblib

    from pyserving.errors import InvalidArgument

    (tmp_path / "m" / "1").mkdir(parents=True)
    joblib.dump({"not": "an estimator"}, tmp_path / "m" / "1" / "model.joblib")
    loader = get_platform("sklearn").loader(str(tmp_path / "m" / "1"), PlatformOptions())
    with pytest.raises(InvalidArgument, match="is a dict, not an estimator"):
        loader.load()


def test_a_multi_output_regressors_outputs_have_its_width(tmp_path: pathlib.Path) -> None:
    import joblib
    from sklearn.linear_model import LinearRegression

    x, _ = _iris()
    regressor = LinearRegression().fit(x[:, :2], x[:, 2:])  # two outputs
    (tmp_path / "m" / "1").mkdir(parents=True)
    joblib.dump(regressor, tmp_path / "m" / "1" / "model.joblib")
    loader = _serve(tmp_path / "m" / "1", "sklearn")
    try:
        servable = loader.servable()  # type: ignore[attr-defined]
        [dim_batch, dim_width] = (
            servable.signature_defs["serving_default"].outputs["outputs"].tensor_shape.dim
        )
        assert (dim_batch.size, dim_width.size) == (-1, 2)
        out = servable.run("serving_default", {"inputs": x[:3, :2]})
        np.testing.assert_allclose(out["outputs"], regressor.predict(x[:3, :2]), rtol=1e-5)
        # The Regress API answers one value per example: not offered for two outputs.
        assert "regress" not in servable.signature_defs
    finally:
        loader.unload()  # type: ignore[attr-defined]


def test_a_multi_class_booster_of_two_classes_answers_both(tmp_path: pathlib.Path) -> None:
    x, y = _iris()
    y = (y == 2).astype(int)
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 2, "max_depth": 2},
        xgb.DMatrix(x, label=y),
        num_boost_round=3,
    )
    (tmp_path / "m" / "1").mkdir(parents=True)
    booster.save_model(str(tmp_path / "m" / "1" / "model.json"))
    loader = _serve(tmp_path / "m" / "1", "xgboost")
    try:
        out = loader.servable().run("serving_default", {"inputs": x})  # type: ignore[attr-defined]
        np.testing.assert_allclose(out["scores"], booster.inplace_predict(x), rtol=1e-6)
        assert out["scores"].shape == (len(x), 2)
    finally:
        loader.unload()  # type: ignore[attr-defined]


def test_a_regressor_of_one_column_keeps_its_regress_signature(tmp_path: pathlib.Path) -> None:
    import joblib
    from sklearn.linear_model import LinearRegression

    x, _ = _iris()
    regressor = LinearRegression().fit(x[:, :3], x[:, 3:])  # y as a column: (n, 1)
    (tmp_path / "m" / "1").mkdir(parents=True)
    joblib.dump(regressor, tmp_path / "m" / "1" / "model.joblib")
    loader = _serve(tmp_path / "m" / "1", "sklearn")
    try:
        assert "regress" in loader.servable().signature_defs  # type: ignore[attr-defined]
    finally:
        loader.unload()  # type: ignore[attr-defined]
