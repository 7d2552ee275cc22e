"""ONNX outputs are answered as the model computes them, whatever shapes onnxruntime reports
for them (unknown: ``[]``; a batch of 1 fixed at export while the model takes any)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from pyserving.platforms.registry import PlatformOptions, get_platform

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _model(path: pathlib.Path, output_shape: list[int] | None) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
    if output_shape is None:  # a Reshape to a shape known only at run time
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
        initializers = [shape]
    else:
        nodes = [helper.make_node("Relu", ["x"], ["y"])]
        initializers = []
    graph = helper.make_graph(nodes, "g", [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.mkdir(parents=True)
    onnx.save(model, str(path / "model.onnx"))


@pytest.mark.parametrize(
    ("output_shape", "want"),
    [
        (None, [[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]),
        ([1, 3], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
    ],
)
def test_outputs_are_not_held_to_reported_shapes(
    tmp_path: pathlib.Path, output_shape: list[int] | None, want: list[list[float]]
) -> None:
    _model(tmp_path / "m" / "1", output_shape)
    loader = get_platform("onnx").loader(str(tmp_path / "m" / "1"), PlatformOptions())
    loader.load()
    try:
        x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
        out = loader.servable().run("serving_default", {"x": x})
        assert out["y"].tolist() == want
    finally:
        loader.unload()
