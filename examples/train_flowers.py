"""Build, train, evaluate, export and inspect a small real model for pyserving.

The walkthrough every TF Serving user follows, end to end:

1. create a model: a small Keras network with two heads over four flower measurements
   (sepal length/width, petal length, petal width) — a 3-way species classifier and a
   regressor of the petal area;
2. train and evaluate it on a seeded synthetic data set (printed: accuracy and mean error);
3. save it as a versioned SavedModel under ``examples/flowers/<version>/`` with three
   signatures: ``serving_default`` (predict, a float tensor in), ``classify`` and ``regress``
   (serialized ``tf.Example`` protos in, TF Serving's Classify/Regress APIs);
4. inspect what was saved (``pyserving inspect examples/flowers``).

Run: ``python examples/train_flowers.py [--version N] [--export_dir examples/flowers]``.
Deterministic: the same seed gives the same data and (on CPU) the same weights.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

SPECIES = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# Mean and spread of each measurement per species (cm), like the classic iris measurements.
_MEANS = np.array(
    [[5.0, 3.4, 1.5, 0.25], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]], dtype=np.float32
)
_STDS = np.array(
    [[0.35, 0.38, 0.17, 0.10], [0.52, 0.31, 0.47, 0.20], [0.64, 0.32, 0.55, 0.27]],
    dtype=np.float32,
)


def make_data(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features [n, 4], species ids [n], petal area [n] (length x width x 0.5)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for species in range(len(SPECIES)):
        x = rng.normal(_MEANS[species], _STDS[species], size=(n_per_class, 4))
        xs.append(np.clip(x, 0.05, None))
        ys.append(np.full(n_per_class, species))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    area = (0.5 * x[:, 2] * x[:, 3]).astype(np.float32)
    order = rng.permutation(len(x))
    return x[order], y[order], area[order]


def build_model() -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(4,), name="features")
    hidden = tf.keras.layers.Dense(32, activation="relu", name="hidden1")(inputs)
    hidden = tf.keras.layers.Dense(16, activation="relu", name="hidden2")(hidden)
    species = tf.keras.layers.Dense(3, activation="softmax", name="species")(hidden)
    area = tf.keras.layers.Dense(1, name="area")(hidden)
    return tf.keras.Model(inputs, {"species": species, "area": area})


class FlowerModule(tf.Module):
    """What is exported: the trained weights as plain variables, and signatures in TF
    Serving's shapes. Plain variables (rather than the Keras objects) give a SavedModel whose
    graph restores its own weights, so any TF Serving-compatible server runs it in a session."""

    def __init__(self, model: tf.keras.Model, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.mean = tf.constant(mean, name="feature_mean")
        self.std = tf.constant(std, name="feature_std")
        self.weights = {
            layer: [
                tf.Variable(w, name=f"{layer}_{i}")
                for i, w in enumerate(model.get_layer(layer).get_weights())
            ]
            for layer in ("hidden1", "hidden2", "species", "area")
        }
        self.labels = tf.constant(SPECIES)

    def _dense(self, layer: str, x: tf.Tensor) -> tf.Tensor:
        kernel, bias = self.weights[layer]
        return tf.matmul(x, kernel) + bias

    def _forward(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = (features - self.mean) / self.std
        x = tf.nn.relu(self._dense("hidden1", x))
        x = tf.nn.relu(self._dense("hidden2", x))
        return tf.nn.softmax(self._dense("species", x)), self._dense("area", x)[:, 0]

    def _from_examples(self, serialized: tf.Tensor) -> tf.Tensor:
        spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in FEATURES}
        parsed = tf.io.parse_example(serialized, spec)
        return tf.stack([parsed[name] for name in FEATURES], axis=1)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
    def predict(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, area = self._forward(features)
        return {
            "probabilities": probabilities,
            "class_ids": tf.argmax(probabilities, axis=1),
            "petal_area": area,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, _ = self._forward(self._from_examples(inputs))
        batch = tf.shape(inputs)[0]
        classes = tf.tile(tf.expand_dims(self.labels, 0), [batch, 1])
        return {"classes": classes, "scores": probabilities}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        _, area = self._forward(self._from_examples(inputs))
        return {"outputs": area}


def train(
    seed: int = 7, epochs: int = 60
) -> tuple[tf.keras.Model, np.ndarray, np.ndarray, dict[str, float]]:
    """Train on standardized features; returns the model, the feature mean and std, and the
    test metrics."""
    tf.keras.utils.set_random_seed(seed)
    x_train, y_train, a_train = make_data(200, seed)
    x_test, y_test, a_test = make_data(50, seed + 1)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    model = build_model()
    model.compile(
        optimizer=tf.keras.optimizers.Adam(0.01),
        loss={"species": "sparse_categorical_crossentropy", "area": "mse"},
    )
    model.fit(
        (x_train - mean) / std,
        {"species": y_train, "area": a_train},
        epochs=epochs,
        batch_size=32,
        verbose=0,
    )
    out = model.predict((x_test - mean) / std, verbose=0)
    accuracy = float(np.mean(np.argmax(out["species"], axis=1) == y_test))
    mae = float(np.mean(np.abs(out["area"][:, 0] - a_test)))
    return model, mean, std, {"test_accuracy": accuracy, "test_area_mae_cm2": mae}


def export(module: FlowerModule, export_dir: pathlib.Path, version: int) -> pathlib.Path:
    target = export_dir / str(version)
    if target.exists():
        shutil.rmtree(target)
    tf.saved_model.save(
        module,
        str(target),
        signatures={
            "serving_default": module.predict,
            "classify": module.classify,
            "regress": module.regress,
        },
    )
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", default=str(pathlib.Path(__file__).parent / "flowers"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    model, mean, std, metrics = train(epochs=args.epochs)
    for name, value in metrics.items():
        print(f"{name}: {value:.4f}")
    module = FlowerModule(model, mean, std)
    x_check = make_data(50, 8)[0]
    exported = module.predict(tf.constant(x_check))["probabilities"].numpy()
    trained = model.predict((x_check - mean) / std, verbose=0)["species"]
    if not np.allclose(exported, trained, atol=1e-5):
        raise SystemExit("the exported module disagrees with the trained model")
    print(f"exported module matches the trained model on {len(x_check)} rows")
    path = export(module, pathlib.Path(args.export_dir), args.version)
    print(f"exported to {path}")
    print(f"inspect it with: pyserving inspect {path.parent}")


if __name__ == "__main__":
    main()
