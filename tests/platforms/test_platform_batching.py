"""Server-side batching over models of the non-TensorFlow platforms: concurrent requests are
merged into one call of the model and each gets its own rows back."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import pathlib
import sys
import threading
from typing import Any

import numpy as np
import pytest

from pyserving.batching import BatchingLoader, BatchingOptions
from pyserving.platforms.registry import PlatformOptions, detect_platform

pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
pytest.importorskip("xgboost")

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.0, 3.4, 1.5, 0.25], [6.6, 3.0, 5.6, 2.0]],
    dtype=np.float32,
)


def _examples() -> Any:
    spec = importlib.util.spec_from_file_location(
        "pyserving_examples_batching", ROOT / "examples" / "platforms.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("export", "output"),
    [
        ("export_sklearn_iris", "classes"),
        ("export_onnx_iris", "label"),
        ("export_xgboost_iris", "classes"),
    ],
)
def test_concurrent_requests_are_merged(tmp_path: pathlib.Path, export: str, output: str) -> None:
    path = str(getattr(_examples(), export)(tmp_path / "m"))
    inner = detect_platform(path, PlatformOptions()).loader(path, PlatformOptions())
    batches: list[int] = []
    # The batch closes when it is full (four requests), long before its timeout.
    options = BatchingOptions(max_batch_size=len(ROWS), batch_timeout_micros=60_000_000)
    loader = BatchingLoader(inner, options, lambda sig, rows, padded, queued: batches.append(rows))
    loader.load()
    try:
        servable = loader.servable()
        start = threading.Barrier(len(ROWS))

        def call(i: int) -> Any:
            start.wait()
            return servable.run("serving_default", {"inputs": ROWS[i : i + 1]})[output]

        with concurrent.futures.ThreadPoolExecutor(len(ROWS)) as pool:
            results = list(pool.map(call, range(len(ROWS))))
    finally:
        loader.unload()
    assert [r.tolist() for r in results] == [[0], [2], [0], [2]]
    assert batches == [len(ROWS)]


def test_a_python_model_batches_the_tensors_preprocess_produced(tmp_path: pathlib.Path) -> None:
    """Batching wraps the SavedModel inside a Python model: each request is preprocessed on
    its own (named measurements -> a features tensor), the batch merges those tensors, and
    each request gets its own species back."""
    path = str(_examples().export_python_flowers(tmp_path / "flowers"))
    loader = detect_platform(path, PlatformOptions()).loader(path, PlatformOptions())
    batches: list[int] = []
    options = BatchingOptions(max_batch_size=len(ROWS), batch_timeout_micros=60_000_000)
    assert loader.wrap_inner(  # type: ignore[attr-defined]
        lambda inner: BatchingLoader(inner, options, lambda s, rows, p, q: batches.append(rows))
    )
    loader.load()
    try:
        servable = loader.servable()
        start = threading.Barrier(len(ROWS))
        names = ("sepal_length", "sepal_width", "petal_length", "petal_width")

        def call(i: int) -> Any:
            start.wait()
            inputs = {n: ROWS[i, j : j + 1] for j, n in enumerate(names)}
            return servable.run("serving_default", inputs)["species"]

        with concurrent.futures.ThreadPoolExecutor(len(ROWS)) as pool:
            species = [r.tolist() for r in pool.map(call, range(len(ROWS)))]
    finally:
        loader.unload()
    assert species == [[b"setosa"], [b"virginica"], [b"setosa"], [b"virginica"]]
    assert batches == [len(ROWS)]
