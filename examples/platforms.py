"""Small models of every built-in platform, trained and exported in seconds (no downloads).

Each ``export_*`` function writes version ``version`` of one model under ``base`` (the
model's base path) and returns the version directory:

* :func:`export_sklearn_iris`: a scikit-learn logistic regression on iris (``model.joblib``);
* :func:`export_onnx_iris`: the same classifier converted with skl2onnx (``model.onnx``);
* :func:`export_xgboost_iris`, :func:`export_lightgbm_iris`: native boosters on iris
  (``model.ubj``, ``model.txt``);
* :func:`export_torch_iris`: a small MLP exported with ``torch.export`` (``model.pt2``);
* :func:`export_keras_iris`: a small Keras 3 classifier (``model.keras``);
* :func:`export_python_flowers`: ``examples/flowers_python/model.py`` beside a copy of the
  bundled flowers SavedModel: a feature dict in, species names out.

Run ``python examples/platforms.py DIR`` to write them all under ``DIR`` together with
``DIR/models.config``: ``examples/models.config`` (every model side by side, each platform
named; the same file is in the README) with its ``/models`` base paths under ``DIR``.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent


def export_sklearn_iris(base: pathlib.Path, version: int = 1) -> pathlib.Path:
    """A logistic regression on sklearn's bundled iris data, saved with joblib."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    out = base / str(version)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    return out


def export_onnx_iris(base: pathlib.Path, version: int = 1) -> pathlib.Path:
    """The same iris classifier converted to ONNX with skl2onnx (probabilities as a tensor)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    onnx_model = to_onnx(
        model,
        initial_types=[("inputs", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    out = base / str(version)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_model.SerializeToString())
    return out


def export_xgboost_iris(base: pathlib.Path, version: int = 1) -> pathlib.Path:
    """An XGBoost booster (multi:softprob) on iris, saved as UBJSON."""
    import xgboost as xgb
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=10)
    out = base / str(version)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.ubj"))
    return out


def export_lightgbm_iris(base: pathlib.Path, version: int = 1) -> pathlib.Path:
    """A LightGBM booster (multiclass) on iris, saved as text."""
    import lightgbm as lgb
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=10)
    out = base / str(version)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.txt"))
    return out


def export_torch_iris(base: pathlib.Path, version: int = 1) -> pathlib.Path:
    """A tiny MLP trained on iris in a few hundred full-batch steps, exported with
    ``torch.export`` (batch dimension dynamic) to ``model.pt2``."""
    import torch
    from sklearn.datasets import load_iris

    torch.manual_seed(0)
    x_np, y_np = load_iris(return_X_y=True)
    x = torch.tensor(x_np, dtype=torch.float32)
    y = torch.tensor(y_np)
    mean, std = x.mean(0), x.std(0)

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
            )

        def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.net((inputs - self.mean) / self.std)
            return {"classes": logits.argmax(dim=1), "scores": logits.softmax(dim=1)}

    model = Mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.net((x - mean) / std), y)
        loss.backward()
        optimizer.step()
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (x[:8],), dynamic_shapes={"inputs": {0: batch}})
    out = base / str(version)
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out / "model.pt2"))
    return out


def export_keras_iris(base: pathlib.Path, version: int = 1) -> pathlib.Path:
    """A small Keras 3 classifier on iris, saved as ``model.keras``."""
    import keras
    import numpy as np
    from sklearn.datasets import load_iris

    keras.utils.set_random_seed(0)
    x, y = load_iris(return_X_y=True)
    x = x.astype("float32")
    inputs = keras.Input(shape=(4,), name="inputs")
    normalized = keras.layers.Normalization()
    normalized.adapt(x)
    hidden = keras.layers.Dense(16, activation="relu")(normalized(inputs))
    scores = keras.layers.Dense(3, activation="softmax", name="scores")(hidden)
    model = keras.Model(inputs, scores)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(x, np.asarray(y), epochs=30, batch_size=150, verbose=0)
    out = base / str(version)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    return out


def export_python_flowers(base: pathlib.Path, version: int = 1) -> pathlib.Path:
    """The flowers SavedModel (``examples/flowers/1``) with ``flowers_python/model.py``."""
    out = base / str(version)
    shutil.copytree(HERE / "flowers" / "1", out, dirs_exist_ok=True)
    shutil.copy(HERE / "flowers_python" / "model.py", out / "model.py")
    return out


EXPORTS = {
    "iris_sklearn": export_sklearn_iris,
    "iris_onnx": export_onnx_iris,
    "iris_xgboost": export_xgboost_iris,
    "iris_lightgbm": export_lightgbm_iris,
    "iris_torch": export_torch_iris,
    "iris_keras": export_keras_iris,
    "flowers_python": export_python_flowers,
}


#: ``examples/models.config``: every example model side by side, under ``/models``.
CONFIG = HERE / "models.config"


def config_text(root: pathlib.Path) -> str:
    """``examples/models.config`` with its ``/models`` base paths moved under ``root``."""
    return CONFIG.read_text().replace('base_path: "/models/', f'base_path: "{root}/')


def write_all(root: pathlib.Path) -> pathlib.Path:
    """Export every model under ``root/NAME`` and write ``root/models.config``
    (``examples/models.config`` with base paths under ``root``)."""
    for name, export in EXPORTS.items():
        export(root / name)
    config = root / "models.config"
    config.write_text(config_text(root))
    return config


if __name__ == "__main__":
    print(write_all(pathlib.Path(sys.argv[1]).resolve()))
