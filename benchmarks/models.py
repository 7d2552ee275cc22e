"""The benchmark workloads: the models, one request's rows, and the answers to expect.

Three workloads:

- ``half_plus_two``: TF Serving's own test model ``saved_model_half_plus_two_cpu``
  (``y = 0.5 x + 2``, one float in, one out) when TF Serving's test models are present (see
  :data:`TESTDATA`), else its equivalent from :mod:`pyserving.testing.models`, exported once
  into a cache directory. The model costs nothing, so this measures pure serving overhead.
- ``mlp``: a compute-bound multi-layer perceptron, 512 -> 2048 -> 2048 -> 512 (ReLU between
  layers, float32, about 6.3 million parameters), exported here with TF2
  ``tf.saved_model.save`` and a ``serving_default`` signature ``x`` [-1, 512] -> ``y``
  [-1, 512]. Its weights are drawn from a fixed NumPy seed, so the same model is exported on
  every machine and its answers can be computed in NumPy without TensorFlow. The export is
  done once into a cache directory (in a subprocess, so the caller need not import
  TensorFlow) and reused while its spec is unchanged.
- ``keras_iris``: a tiny Keras 3 classifier as Keras users export it (``model.export()``):
  iris's 4 floats in, 10 -> 10 hidden units (ReLU), 3 softmax probabilities out
  (``serving_default``: ``x`` [-1, 4] -> ``output_0`` [-1, 3]). Weights from a fixed NumPy
  seed, so its answers are computed in NumPy; exported like the MLP (subprocess, cached by
  spec). Such exports keep their variables only in the object graph, so pyserving serves
  them through ``tf.saved_model.load`` (``backend="function"``): this workload measures
  that path.

Other platforms (``--workloads`` of ``benchmarks.run``; not in its default run):

- ``mlp_onnx`` / ``mlp_torch``: the same MLP (same weights, same answers) as ``model.onnx``
  (a MatMul/Add/Relu graph, opset 17, dynamic batch) and as ``model.pt2``
  (``torch.export``, dynamic batch), input ``x``, output ``y``;
- ``iris_onnx`` / ``iris_torch``: an MLP of the shape of the iris example
  (``examples/platforms.py``'s PyTorch model: 4 -> 16 -> 3, ReLU), seeded weights, one row of
  iris measurements in, three scores out: serving overhead for those runtimes.

Run ``python -m benchmarks.models export DIR [--format tensorflow|onnx|pytorch|keras]
[--layers 512,2048,2048,512]`` to export an MLP (``keras``: the Keras iris classifier)
into ``DIR/1``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Where TF Serving's test models are looked for (the same default and variable as the tests
#: use); they are optional.
TESTDATA = pathlib.Path(
    os.environ.get(
        "PYSERVING_TESTDATA",
        pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "tfserving",
    )
)

#: Layer widths of the MLP: input, hidden..., output.
MLP_LAYERS = (512, 2048, 2048, 512)
#: Seed of the MLP's weights and of its request row.
MLP_SEED = 20240611
#: Layer widths of the iris-sized MLP (the shape of ``examples/platforms.py``'s iris MLP).
IRIS_LAYERS = (4, 16, 3)
#: One iris row (setosa).
IRIS_ROW = (5.1, 3.5, 1.4, 0.2)
#: Workloads of other platforms: name -> (format, layer widths).
PLATFORM_WORKLOADS: dict[str, tuple[str, tuple[int, ...]]] = {
    "mlp_onnx": ("onnx", MLP_LAYERS),
    "mlp_torch": ("pytorch", MLP_LAYERS),
    "iris_onnx": ("onnx", IRIS_LAYERS),
    "iris_torch": ("pytorch", IRIS_LAYERS),
}
#: Every workload name.
WORKLOADS = ("half_plus_two", "mlp", "keras_iris", *PLATFORM_WORKLOADS)
#: The file each export format writes into the version directory (``keras``: the Keras iris
#: classifier, exported with ``model.export()``).
FORMAT_FILES = {
    "tensorflow": "saved_model.pb",
    "onnx": "model.onnx",
    "pytorch": "model.pt2",
    "keras": "saved_model.pb",
}
#: The MLP's version directory name under its base path.
MLP_VERSION = "1"
_SPEC_FILE = "benchmark_spec.json"


@dataclass(frozen=True)
class Workload:
    """One model and the request sent to it.

    Attributes:
        name: the workload name (``half_plus_two``, ``mlp``, ``keras_iris``), also the
            served model name.
        base_path: the model's base path (holding version directories).
        input_name / output_name: the ``serving_default`` signature's input and output alias.
        rows: the rows of one request, float32, shape [rows, features].
        expected: what ``output_name`` must be for ``rows``.
        rtol / atol: tolerance when comparing an answer with ``expected``.
    """

    name: str
    base_path: pathlib.Path
    input_name: str
    output_name: str
    rows: np.ndarray
    expected: np.ndarray
    rtol: float = 1e-5
    atol: float = 1e-5

    @property
    def version_dir(self) -> pathlib.Path:
        """The one version directory (every workload has exactly one)."""
        versions = sorted(p for p in self.base_path.iterdir() if p.name.isdigit())
        return versions[-1]

    def payload(self) -> dict[str, Any]:
        """What the load generator needs (JSON-serializable): names, rows and the answer."""
        return {
            "model_name": self.name,
            "input_name": self.input_name,
            "output_name": self.output_name,
            # float64 values rounded to float32's precision print short in JSON.
            "rows": np.round(self.rows.astype(np.float64), 6).tolist(),
            "expected": self.expected.tolist(),
            "rtol": self.rtol,
            "atol": self.atol,
        }


def half_plus_two_base(models_dir: pathlib.Path) -> pathlib.Path:
    """The base path of ``saved_model_half_plus_two_cpu`` (one version, 123): TF Serving's
    under :data:`TESTDATA` when there, else the generated equivalent, exported into
    ``models_dir/testdata`` (in a subprocess, so this process need not import TensorFlow)
    unless a current export is there already."""
    from pyserving.testing import models as test_models

    base = TESTDATA / test_models.HALF_PLUS_TWO
    if base.is_dir():
        return base
    tree = test_models.ensure_testdata(models_dir / "testdata", [test_models.HALF_PLUS_TWO])
    return tree / test_models.HALF_PLUS_TWO


def half_plus_two(models_dir: pathlib.Path) -> Workload:
    """``saved_model_half_plus_two_cpu`` (see :func:`half_plus_two_base`) with one row
    ``x = [[2.0]]``."""
    x = np.array([[2.0]], np.float32)
    base = half_plus_two_base(models_dir)
    return Workload("half_plus_two", base, "x", "y", x, x * 0.5 + 2.0)


def mlp_weights(widths: tuple[int, ...] = MLP_LAYERS) -> list[tuple[np.ndarray, np.ndarray]]:
    """An MLP's (weight, bias) per layer: He-normal weights, small biases, fixed seed."""
    rng = np.random.RandomState(MLP_SEED)
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        layers.append((w, b))
    return layers


def mlp_forward(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The MLP in NumPy (float32): dense layers with ReLU between them, linear output."""
    h = x.astype(np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def mlp_parameters() -> int:
    """Number of parameters of the MLP."""
    return sum(a * b + b for a, b in itertools.pairwise(MLP_LAYERS))


def _spec_digest(fmt: str = "tensorflow", widths: tuple[int, ...] = MLP_LAYERS) -> str:
    if fmt == "keras":
        spec: dict[str, Any] = {"layers": KERAS_IRIS_LAYERS, "seed": KERAS_IRIS_SEED, "format": 1}
        return hashlib.sha256(json.dumps({"model": "keras_iris", **spec}).encode()).hexdigest()[:16]
    spec = {"layers": widths, "seed": MLP_SEED, "format": 1}
    if fmt != "tensorflow":
        spec["runtime"] = fmt
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def _publish(base_path: pathlib.Path, write: Any, fmt: str, widths: tuple[int, ...]) -> None:
    """``write(staging_dir)`` into a staging directory, then rename it to the version."""
    base_path.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=base_path))
    try:
        write(staging)
        target = base_path / MLP_VERSION
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    (base_path / _SPEC_FILE).write_text(json.dumps({"digest": _spec_digest(fmt, widths)}))


def export_onnx(base_path: pathlib.Path, widths: tuple[int, ...] = MLP_LAYERS) -> None:
    """Export the MLP of ``widths`` as ``base_path/1/model.onnx`` (imports onnx)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = mlp_weights(widths)
    nodes, initializers = [], []
    h = "x"
    for i, (w, b) in enumerate(layers):
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"]))
        out = "y" if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}" if out != "y" else "y"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        h = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", widths[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    _publish(
        base_path,
        lambda d: (d / "model.onnx").write_bytes(model.SerializeToString()),
        "onnx",
        widths,
    )


def export_torch(base_path: pathlib.Path, widths: tuple[int, ...] = MLP_LAYERS) -> None:
    """Export the MLP of ``widths`` with ``torch.export`` as ``base_path/1/model.pt2``
    (dynamic batch; imports torch)."""
    import torch

    layers = mlp_weights(widths)

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linears = torch.nn.ModuleList()
            for w, b in layers:
                linear = torch.nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    linear.weight.copy_(torch.from_numpy(w.T.copy()))
                    linear.bias.copy_(torch.from_numpy(b))
                self.linears.append(linear)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = x
            for i, linear in enumerate(self.linears):
                h = linear(h)
                if i < len(self.linears) - 1:
                    h = torch.relu(h)
            return {"y": h}

    model = Mlp().eval()
    example = torch.zeros(2, widths[0])
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    _publish(
        base_path, lambda d: torch.export.save(program, str(d / "model.pt2")), "pytorch", widths
    )


def export_mlp(base_path: pathlib.Path) -> None:
    """Export the MLP as a TF2 SavedModel into ``base_path/1`` (imports TensorFlow)."""
    import tensorflow as tf

    layers = mlp_weights()

    class MLP(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="mlp")
            self.weights_ = [tf.Variable(w, name=f"w{i}") for i, (w, _) in enumerate(layers)]
            self.biases_ = [tf.Variable(b, name=f"b{i}") for i, (_, b) in enumerate(layers)]

        @tf.function(input_signature=[tf.TensorSpec([None, MLP_LAYERS[0]], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            h = x
            last = len(self.weights_) - 1
            for i, (w, b) in enumerate(zip(self.weights_, self.biases_, strict=True)):
                h = tf.nn.bias_add(tf.matmul(h, w), b)
                if i < last:
                    h = tf.nn.relu(h)
            return {"y": h}

    module = MLP()

    def write(staging: pathlib.Path) -> None:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})

    _publish(base_path, write, "tensorflow", MLP_LAYERS)


def ensure_mlp(
    base_path: pathlib.Path, fmt: str = "tensorflow", widths: tuple[int, ...] = MLP_LAYERS
) -> pathlib.Path:
    """Export the MLP of ``widths`` in ``fmt`` into ``base_path`` unless an export of the
    same spec is there already.

    The export runs in a subprocess (``python -m benchmarks.models export``) so that this
    process does not import TensorFlow (or onnx, torch). Returns ``base_path``.
    """
    spec = base_path / _SPEC_FILE
    done = (base_path / MLP_VERSION / FORMAT_FILES[fmt]).is_file()
    if done and spec.is_file():
        try:
            if json.loads(spec.read_text()).get("digest") == _spec_digest(fmt, widths):
                return base_path
        except (OSError, ValueError):
            pass
    root = pathlib.Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.models",
            "export",
            str(base_path),
            f"--format={fmt}",
            f"--layers={','.join(map(str, widths))}",
        ],
        check=True,
        cwd=root,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    return base_path


def mlp(base_path: pathlib.Path) -> Workload:
    """The MLP workload (exported into ``base_path`` if needed) with one request row."""
    ensure_mlp(base_path)
    rng = np.random.RandomState(MLP_SEED + 1)
    # Three decimals keep the JSON request short (about 3.5 KB) and exact in float32 terms.
    x = np.round(rng.uniform(-1.0, 1.0, (1, MLP_LAYERS[0])), 3).astype(np.float32)
    expected = mlp_forward(x, mlp_weights())
    return Workload("mlp", base_path, "x", "y", x, expected, rtol=1e-3, atol=1e-3)


def platform_workload(name: str, models_dir: pathlib.Path) -> Workload:
    """A workload of :data:`PLATFORM_WORKLOADS` (exported into ``models_dir/name`` if
    needed) with one request row: random for the big MLP, :data:`IRIS_ROW` for the iris-sized
    one."""
    fmt, widths = PLATFORM_WORKLOADS[name]
    base = ensure_mlp(models_dir / name, fmt, widths)
    if widths == IRIS_LAYERS:
        x = np.array([IRIS_ROW], dtype=np.float32)
    else:
        rng = np.random.RandomState(MLP_SEED + 1)
        x = np.round(rng.uniform(-1.0, 1.0, (1, widths[0])), 3).astype(np.float32)
    expected = mlp_forward(x, mlp_weights(widths))
    return Workload(name, base, "x", "y", x, expected, rtol=1e-3, atol=1e-3)


#: Layer widths of the Keras iris classifier: input, hidden..., classes.
KERAS_IRIS_LAYERS = (4, 10, 10, 3)
#: Seed of its weights.
KERAS_IRIS_SEED = 20261207


def keras_iris_weights() -> list[tuple[np.ndarray, np.ndarray]]:
    """The classifier's (kernel, bias) per layer: Glorot-uniform kernels, small biases."""
    rng = np.random.RandomState(KERAS_IRIS_SEED)
    layers = []
    for fan_in, fan_out in itertools.pairwise(KERAS_IRIS_LAYERS):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        layers.append((w, b))
    return layers


def keras_iris_forward(x: np.ndarray) -> np.ndarray:
    """The classifier in NumPy: ReLU hidden layers, softmax output."""
    logits = mlp_forward(x, keras_iris_weights())
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


def export_keras_iris(base_path: pathlib.Path) -> None:
    """Export the classifier with Keras's ``model.export()`` into ``base_path/1``."""
    from pyserving.testing import models as test_models

    base_path.mkdir(parents=True, exist_ok=True)
    target = base_path / MLP_VERSION
    if target.exists():
        shutil.rmtree(target)
    test_models.export_keras_classifier(target, keras_iris_weights())
    (base_path / _SPEC_FILE).write_text(json.dumps({"digest": _spec_digest("keras")}))


def keras_iris(base_path: pathlib.Path) -> Workload:
    """The Keras iris workload (exported into ``base_path`` if needed), one iris row."""
    ensure_mlp(base_path, "keras", KERAS_IRIS_LAYERS)
    x = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    return Workload("keras_iris", base_path, "x", "output_0", x, keras_iris_forward(x))


def workload(name: str, models_dir: pathlib.Path) -> Workload:
    """The workload ``name`` (one of :data:`WORKLOADS`), its model exported under
    ``models_dir`` when needed."""
    if name == "half_plus_two":
        return half_plus_two(models_dir)
    if name == "mlp":
        return mlp(models_dir / "mlp")
    if name == "keras_iris":
        return keras_iris(models_dir / "keras_iris")
    return platform_workload(name, models_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.models export DIR [--format F] [--layers W,...]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="export an MLP into DIR/1")
    export.add_argument("dir", type=pathlib.Path)
    export.add_argument("--format", choices=sorted(FORMAT_FILES), default="tensorflow")
    export.add_argument("--layers", default=",".join(map(str, MLP_LAYERS)))
    args = parser.parse_args(argv)
    if args.command == "export":
        widths = tuple(int(w) for w in args.layers.split(","))
        if args.format == "keras":
            export_keras_iris(args.dir.resolve())
        elif args.format == "onnx":
            export_onnx(args.dir.resolve(), widths)
        elif args.format == "pytorch":
            export_torch(args.dir.resolve(), widths)
        elif widths != MLP_LAYERS:
            parser.error("the TensorFlow export has the MLP's layers only")
        else:
            export_mlp(args.dir.resolve())
        print(f"exported a {args.format} model to {args.dir / MLP_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
