"""A Python model around the flowers SavedModel: four named measurements in, species out.

Copy this file into a version directory next to the flowers SavedModel's files (see
``examples/platforms.py``): pyserving loads the SavedModel with its own platform and runs
``preprocess`` before it and ``postprocess`` after it.
"""

from __future__ import annotations

import numpy as np

SPECIES = np.array(["setosa", "versicolor", "virginica"])
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class Model:
    signature = {
        "inputs": {name: ("float32", [-1]) for name in FEATURES},
        "outputs": {
            "species": ("string", [-1]),
            "probabilities": ("float32", [-1, 3]),
        },
    }

    def load(self, path: str) -> None:
        self.path = path

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = [np.asarray(inputs[name], dtype=np.float32).reshape(-1) for name in FEATURES]
        if len({len(c) for c in columns}) != 1:
            raise ValueError("every measurement needs the same number of values")
        if any((c < 0).any() for c in columns):
            raise ValueError("measurements must not be negative")
        return {"features": np.stack(columns, axis=1)}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "species": SPECIES[outputs["class_ids"]],
            "probabilities": outputs["probabilities"],
        }
