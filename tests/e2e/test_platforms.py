"""Models of the ``python``, ``sklearn``, ``onnx``, ``xgboost``, ``lightgbm``, ``pytorch``
and ``keras`` platforms through one real server, beside a SavedModel, each platform
detected from the version directory's files."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving import codec
from tests.e2e.server import RunningServer, run_to_exit

pytestmark = pytest.mark.e2e

pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")
pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[2]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
#: The shared server's RAM budget: far above what the example models take, far below what a
#: version padded with a sparse file of :data:`HUGE_FILE_BYTES` is estimated to take.
MEMORY_BUDGET = 64 << 30
HUGE_FILE_BYTES = 128 << 30


def _examples() -> Any:
    spec = importlib.util.spec_from_file_location(
        "pyserving_examples", ROOT / "examples" / "platforms.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("platforms")
    _examples().write_all(root)
    # A standalone Python model, and models that fail to load.
    standalone = root / "echo" / "1"
    standalone.mkdir(parents=True)
    (standalone / "model.py").write_text(
        "import numpy as np\n"
        "class Model:\n"
        "    signature = {'inputs': {'x': ('float32', [-1])},\n"
        "                 'outputs': {'y': ('float32', [-1])}}\n"
        "    def load(self, path):\n"
        "        self.scale = 2.0\n"
        "    def predict(self, inputs):\n"
        "        x = inputs['x']\n"
        "        if (x < 0).any():\n"
        "            raise ValueError('x must not be negative')\n"
        "        if (x > 100).any():\n"
        "            raise RuntimeError('too big')\n"
        "        if (x == 7).any():\n"
        "            raise SystemExit(3)\n"
        "        return {'y': x * self.scale}\n"
    )
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.py").write_text("import no_such_module_anywhere\n")
    corrupt = root / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "model.joblib").write_bytes(b"this is not a pickle")
    nothing = root / "nothing" / "1"
    nothing.mkdir(parents=True)
    (nothing / "README").write_text("no model here\n")
    config = root / "models.config"
    text = config.read_text().rstrip().removesuffix("}")
    text += f'  config {{ name: "echo" base_path: "{root / "echo"}" }}\n'
    # A Python model without a signature: inputs and outputs by the names used.
    (root / "open" / "1").mkdir(parents=True)
    (root / "open" / "1" / "model.py").write_text(
        "import numpy as np\n"
        "class Model:\n"
        "    def predict(self, inputs):\n"
        "        x = inputs['x']\n"
        "        return {'doubled': x * 2, 'count': np.full(x.shape[:1], x.size)}\n"
    )
    text += f'  config {{ name: "open" base_path: "{root / "open"}" }}\n'
    # A TorchScript module taking integer token ids and a boolean mask, no declared dtypes.
    _write_lookup_module(root / "lookup_ts" / "1")
    text += f'  config {{ name: "lookup_ts" base_path: "{root / "lookup_ts"}" }}\n'
    config.write_text(text + "}\n")
    return root


def _write_lookup_module(version: pathlib.Path) -> None:
    import torch

    class Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(10, 2)
            with torch.no_grad():
                self.table.weight.copy_(torch.arange(20, dtype=torch.float32).reshape(10, 2))

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return (self.table(ids) * mask.unsqueeze(-1).to(torch.float32)).sum(dim=1)

    version.mkdir(parents=True)
    with warnings.catch_warnings():  # TorchScript is deprecated; its modules are served
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Lookup()), str(version / "model.pt"))


@pytest.fixture(scope="module")
def server(repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("platforms_server")
    srv = RunningServer(
        [
            f"--model_config_file={repo / 'models.config'}",
            "--file_system_poll_wait_seconds=0",
            # A corrupt version fails at once (no retries a minute apart).
            "--max_num_load_retries=0",
            f"--model_memory_budget_bytes={MEMORY_BUDGET}",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


def _status(server: RunningServer, name: str) -> dict[str, Any]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = stub.GetModelStatus(request, timeout=30)
    return {
        str(s.version): {"state": s.state, "error": s.status.error_message}
        for s in response.model_version_status
    }


def test_sklearn_predict_over_rest_row_and_columnar(server: RunningServer) -> None:
    response = server.client.post("/v1/models/iris_sklearn:predict", json={"instances": IRIS_ROWS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["classes"] for p in predictions] == [0, 2]
    assert all(abs(sum(p["scores"]) - 1) < 1e-4 for p in predictions)
    response = server.client.post("/v1/models/iris_sklearn:predict", json={"inputs": IRIS_ROWS})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["classes"] == [0, 2]


def test_sklearn_predict_over_grpc_and_metadata(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "iris_sklearn"
        request.inputs["inputs"].CopyFrom(
            codec.ndarray_to_tensor_proto(np.array(IRIS_ROWS, dtype=np.float32))
        )
        response = stub.Predict(request, timeout=30)
        classes = codec.tensor_proto_to_ndarray(response.outputs["classes"])
        assert classes.tolist() == [0, 2]
        meta = get_model_metadata_pb2.GetModelMetadataRequest()
        meta.model_spec.name = "iris_sklearn"
        meta.metadata_field.append("signature_def")
        answer = stub.GetModelMetadata(meta, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert [d.size for d in signature.inputs["inputs"].tensor_shape.dim] == [-1, 4]
    assert set(signature.outputs) == {"classes", "scores"}


def test_python_model_wraps_the_flowers_saved_model(server: RunningServer) -> None:
    body = {
        "inputs": {
            "sepal_length": [5.0, 6.6],
            "sepal_width": [3.4, 3.0],
            "petal_length": [1.5, 5.6],
            "petal_width": [0.25, 2.0],
        }
    }
    response = server.client.post("/v1/models/flowers_python:predict", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["species"] == ["setosa", "virginica"]
    body["inputs"]["petal_width"] = [-1.0, 2.0]
    response = server.client.post("/v1/models/flowers_python:predict", json=body)
    assert response.status_code == 400
    assert "must not be negative" in response.json()["error"]
    meta = server.client.get("/v1/models/flowers_python/metadata").json()
    inputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert set(inputs) == {"sepal_length", "sepal_width", "petal_length", "petal_width"}


def test_v2_infer_on_the_python_model(server: RunningServer) -> None:
    body = {
        "inputs": [
            {"name": n, "shape": [1], "datatype": "FP32", "data": [v]}
            for n, v in zip(
                ("sepal_length", "sepal_width", "petal_length", "petal_width"),
                (5.0, 3.4, 1.5, 0.25),
                strict=True,
            )
        ]
    }
    response = server.client.post("/v2/models/flowers_python/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["species"]["data"] == ["setosa"]
    meta = server.client.get("/v2/models/flowers_python").json()
    assert meta["platform"] == "python"
    assert server.client.get("/v2/models/iris_onnx").json()["platform"] == "onnxruntime_onnx"
    assert server.client.get("/v2/models/iris_sklearn").json()["platform"] == "sklearn"


def test_python_model_errors(server: RunningServer) -> None:
    ok = server.client.post("/v1/models/echo:predict", json={"inputs": {"x": [1.0, 2.0]}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"] == [2.0, 4.0]
    bad = server.client.post("/v1/models/echo:predict", json={"inputs": {"x": [-1.0]}})
    assert bad.status_code == 400 and "x must not be negative" in bad.json()["error"]
    crash = server.client.post("/v1/models/echo:predict", json={"inputs": {"x": [1000.0]}})
    assert crash.status_code == 500
    assert "RuntimeError: too big" in crash.json()["error"]
    # sys.exit() in model code is an error of the request like any other.
    exits = server.client.post("/v1/models/echo:predict", json={"inputs": {"x": [7.0]}})
    assert exits.status_code == 500 and "SystemExit: 3" in exits.json()["error"]
    again = server.client.post("/v1/models/echo:predict", json={"inputs": {"x": [3.0]}})
    assert again.status_code == 200


def test_load_errors_name_their_cause(repo: pathlib.Path) -> None:
    # (A model that fails at start-up stops the server, so these are loaded in process.)
    from pyserving.errors import InvalidArgument, NotFound
    from pyserving.platforms.registry import PlatformOptions, detect_platform, get_platform

    options = PlatformOptions()
    broken = get_platform("python").loader(str(repo / "broken" / "1"), options)
    with pytest.raises(InvalidArgument, match="No module named 'no_such_module_anywhere'"):
        broken.load()
    # sys.exit() while importing model.py (argparse reading the server's command line) or
    # in its load() is a load error too.
    for name, code in (
        ("exits_on_import", "import sys\nsys.exit(2)\n"),
        (
            "exits_in_load",
            (
                "import sys\nclass Model:\n    def load(self, path):\n        sys.exit('no')\n"
                "    def predict(self, inputs):\n        return inputs\n"
            ),
        ),
    ):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "1" / "model.py").write_text(code)
        exiting = get_platform("python").loader(str(repo / name / "1"), options)
        with pytest.raises(InvalidArgument, match="SystemExit"):
            exiting.load()
    corrupt = get_platform("sklearn").loader(str(repo / "corrupt" / "1"), options)
    with pytest.raises(InvalidArgument, match="Could not load the model"):
        corrupt.load()
    with pytest.raises(NotFound) as info:
        detect_platform(str(repo / "nothing" / "1"), options)
    assert "nor a model of any other installed platform" in info.value.message
    assert "sklearn: model.joblib or model.pkl" in info.value.message


def test_a_preprocess_that_returns_no_mapping_is_an_internal_error(repo: pathlib.Path) -> None:
    """The model's code broke its contract, not the request: INTERNAL, not INVALID_ARGUMENT."""

    from pyserving.errors import Internal
    from pyserving.platforms.registry import PlatformOptions, get_platform

    version = repo / "bad_preprocess" / "1"
    shutil.copytree(repo / "iris_sklearn" / "1", version)
    (version / "model.py").write_text(
        "class Model:\n    def preprocess(self, inputs):\n        return [inputs]\n"
    )
    loader = get_platform("python").loader(str(version), PlatformOptions())
    loader.load()
    try:
        rows = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
        with pytest.raises(Internal, match="preprocess returned list, not a mapping"):
            loader.servable().run("serving_default", {"inputs": rows})
    finally:
        loader.unload()


@pytest.mark.parametrize(
    ("returned", "outcome"),
    [
        ("x.astype(np.float64)", "float32"),  # cast to the declared dtype
        ("x.astype(np.int32)", "float32"),
        ("x.astype(object)", "float32"),  # numbers held as objects (pandas)
        ("np.array(['a'] * len(x))", "is object of shape [1]; its signature declares float of"),
        ("x.reshape(-1, 1)", "is float32 of shape [1,1]; its signature declares float of"),
        ("[[1.0, 2.0], [3.0]]", "The model's output 'y' is not a tensor"),
        ("[None] * len(x)", "A model output holds NoneType values"),
        ("np.array([{'a': 1}] * len(x))", "A model output holds dict values"),
    ],
)
def test_outputs_are_held_to_the_declared_signature(
    tmp_path: pathlib.Path, returned: str, outcome: str
) -> None:
    """What a model returns is cast to its declared dtype, or refused (INTERNAL: the model
    broke its signature, not the request) when it cannot be."""
    from pyserving.errors import Internal
    from pyserving.platforms.registry import PlatformOptions, get_platform

    version = tmp_path / "declared" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(
        "import numpy as np\n"
        "class Model:\n"
        "    signature = {'inputs': {'x': ('float32', [-1])},\n"
        "                 'outputs': {'y': ('float32', [-1])}}\n"
        "    def predict(self, inputs):\n"
        "        x = inputs['x']\n"
        f"        return {{'y': {returned}}}\n"
    )
    loader = get_platform("python").loader(str(version), PlatformOptions())
    loader.load()
    try:
        run = loader.servable().run
        x = np.array([2.0], np.float32)
        if outcome == "float32":
            y = run("serving_default", {"x": x})["y"]
            assert y.dtype == np.float32 and y.tolist() == [2.0]
        else:
            with pytest.raises(Internal) as info:
                run("serving_default", {"x": x})
            assert outcome in info.value.message
    finally:
        loader.unload()


@pytest.mark.parametrize(
    "signature",
    [
        "{'inputs': ['x'], 'outputs': {}}",
        "{'inputs': {'x': ('notadtype', [-1])}, 'outputs': {}}",
        "{'inputs': {'x': ('float32', [-1], 'extra')}, 'outputs': {}}",
        "{'inputs': {'x': ('float32', ['a'])}, 'outputs': {}}",
        "{'outputs': {}}",
    ],
)
def test_a_malformed_signature_is_a_load_error_naming_it(
    tmp_path: pathlib.Path, signature: str
) -> None:
    from pyserving.errors import InvalidArgument
    from pyserving.platforms.registry import PlatformOptions, get_platform

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(
        f"class Model:\n    signature = {signature}\n"
        "    def predict(self, inputs):\n        return inputs\n"
    )
    loader = get_platform("python").loader(str(version), PlatformOptions())
    with pytest.raises(InvalidArgument) as info:
        loader.load()
    assert f"{version / 'model.py'}: Model.signature is not valid" in info.value.message


def test_the_platform_is_detected_from_the_files(repo: pathlib.Path) -> None:
    from pyserving.platforms.registry import PlatformOptions, detect_platform

    options = PlatformOptions()
    assert detect_platform(str(repo / "iris_sklearn" / "1"), options).name == "sklearn"
    assert detect_platform(str(repo / "flowers_python" / "1"), options).name == "python"
    flowers = detect_platform(str(repo / "flowers_python" / "1"), options, exclude=["python"])
    assert flowers.name == "tensorflow"


def test_a_directory_with_several_platforms_files_is_served_by_one_with_a_warning(
    repo: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pyserving.platforms.registry import PlatformOptions, detect_platform

    both = tmp_path / "both" / "1"
    shutil.copytree(repo / "iris_sklearn" / "1", both)
    shutil.copy(repo / "iris_onnx" / "1" / "model.onnx", both)
    with caplog.at_level("WARNING", logger="pyserving.platforms.registry"):
        assert detect_platform(str(both), PlatformOptions()).name == "onnx"
    assert f"The version directory {both} holds models of several platforms (onnx, sklearn)" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="pyserving.platforms.registry"):
        detect_platform(str(repo / "iris_sklearn" / "1"), PlatformOptions())
    assert "several platforms" not in caplog.text


def test_onnx_predict_over_rest_and_grpc(server: RunningServer) -> None:
    response = server.client.post("/v1/models/iris_onnx:predict", json={"instances": IRIS_ROWS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == [0, 2]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "iris_onnx"
        request.inputs["inputs"].CopyFrom(
            codec.ndarray_to_tensor_proto(np.array(IRIS_ROWS, dtype=np.float32))
        )
        request.output_filter.append("probabilities")
        answer = stub.Predict(request, timeout=30)
    assert set(answer.outputs) == {"probabilities"}
    scores = codec.tensor_proto_to_ndarray(answer.outputs["probabilities"])
    assert scores.shape == (2, 3) and scores.argmax(axis=1).tolist() == [0, 2]


def test_onnx_request_errors_are_invalid_argument(server: RunningServer) -> None:
    response = server.client.post("/v1/models/iris_onnx:predict", json={"inputs": [1.0, 2.0]})
    assert response.status_code == 400, response.text
    assert "Invalid rank" in response.json()["error"]
    meta = server.client.get("/v1/models/iris_onnx/metadata").json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = signature["inputs"]["inputs"]["tensor_shape"]["dim"]
    assert [int(d["size"]) for d in dims] == [-1, 4]


def test_corrupt_onnx_file_is_a_load_error(tmp_path: pathlib.Path) -> None:
    from pyserving.errors import InvalidArgument
    from pyserving.platforms.registry import PlatformOptions, get_platform

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"\x08\x07truncated")
    loader = get_platform("onnx").loader(str(tmp_path / "1"), PlatformOptions())
    with pytest.raises(InvalidArgument, match="Could not load the model"):
        loader.load()


def test_a_model_above_the_memory_budget_is_not_loaded(
    repo: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # (A copy: the shared server's tests add versions to the example models.)
    shutil.copytree(repo / "iris_sklearn" / "1", tmp_path / "iris" / "1")
    result = run_to_exit(
        [
            "--model_name=iris",
            f"--model_base_path={tmp_path / 'iris'}",
            "--model_memory_budget_bytes=100",
            "--port=0",
        ]
    )
    assert result.returncode == 1, result.stderr
    assert "Insufficient resources to load servable iris version 1" in result.stderr


@pytest.mark.parametrize("name", ["iris_xgboost", "iris_lightgbm"])
def test_booster_predict_over_rest_and_grpc(server: RunningServer, name: str) -> None:
    response = server.client.post(f"/v1/models/{name}:predict", json={"instances": IRIS_ROWS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["classes"] for p in predictions] == [0, 2]
    assert all(abs(sum(p["scores"]) - 1) < 1e-4 for p in predictions)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.inputs["inputs"].CopyFrom(
            codec.ndarray_to_tensor_proto(np.array(IRIS_ROWS, dtype=np.float32))
        )
        answer = stub.Predict(request, timeout=30)
    assert codec.tensor_proto_to_ndarray(answer.outputs["classes"]).tolist() == [0, 2]
    bad = server.client.post(f"/v1/models/{name}:predict", json={"instances": [[1.0, 2.0]]})
    assert bad.status_code == 400 and "[-1, 4]" in bad.json()["error"]


@pytest.mark.parametrize(
    ("platform", "file"), [("xgboost", "model.ubj"), ("lightgbm", "model.txt")]
)
def test_corrupt_booster_file_is_a_load_error(
    tmp_path: pathlib.Path, platform: str, file: str
) -> None:
    from pyserving.errors import InvalidArgument
    from pyserving.platforms.registry import PlatformOptions, detect_platform

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / file).write_bytes(b"\x00\x01 not a booster")
    found = detect_platform(str(tmp_path / "1"), PlatformOptions())
    assert found.name == platform
    with pytest.raises(InvalidArgument, match="Could not load the model"):
        found.loader(str(tmp_path / "1"), PlatformOptions()).load()


def test_torch_export_predict_over_rest_and_grpc(server: RunningServer) -> None:
    response = server.client.post("/v1/models/iris_torch:predict", json={"instances": IRIS_ROWS})
    assert response.status_code == 200, response.text
    assert [p["classes"] for p in response.json()["predictions"]] == [0, 2]
    one = server.client.post("/v1/models/iris_torch:predict", json={"inputs": IRIS_ROWS[:1]})
    assert one.status_code == 200, one.text
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "iris_torch"
        request.inputs["inputs"].CopyFrom(
            codec.ndarray_to_tensor_proto(np.array(IRIS_ROWS, dtype=np.float32))
        )
        answer = stub.Predict(request, timeout=30)
    scores = codec.tensor_proto_to_ndarray(answer.outputs["scores"])
    assert scores.shape == (2, 3) and scores.argmax(axis=1).tolist() == [0, 2]
    bad = server.client.post("/v1/models/iris_torch:predict", json={"instances": [[1.0, 2.0]]})
    assert bad.status_code == 400, bad.text
    meta = server.client.get("/v1/models/iris_torch/metadata").json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["outputs"]) == {"classes", "scores"}
    assert signature["outputs"]["classes"]["dtype"] == "DT_INT64"


def test_keras_predict_over_rest_and_grpc(server: RunningServer) -> None:
    response = server.client.post("/v1/models/iris_keras:predict", json={"instances": IRIS_ROWS})
    assert response.status_code == 200, response.text
    scores = np.array(response.json()["predictions"])
    assert scores.shape == (2, 3) and scores.argmax(axis=1).tolist() == [0, 2]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "iris_keras"
        request.inputs["inputs"].CopyFrom(
            codec.ndarray_to_tensor_proto(np.array(IRIS_ROWS, dtype=np.float32))
        )
        answer = stub.Predict(request, timeout=30)
    assert codec.tensor_proto_to_ndarray(answer.outputs["scores"]).shape == (2, 3)
    bad = server.client.post("/v1/models/iris_keras:predict", json={"instances": [[1.0, 2.0]]})
    assert bad.status_code == 400 and "incompatible" in bad.json()["error"]


def test_the_readme_shows_the_examples_config() -> None:
    config = (ROOT / "examples" / "models.config").read_text()
    body = "\n".join(line for line in config.splitlines() if not line.startswith("#"))
    assert body in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("name", "labels"),
    [("iris_sklearn", ["0", "1", "2"]), ("iris_xgboost", ["0", "1", "2"]), ("iris_lightgbm", None)],
)
def test_classify_api_on_examples(server: RunningServer, name: str, labels: Any) -> None:
    if name == "iris_lightgbm":
        # LightGBM names the features it was trained without names Column_0..Column_3.
        examples = [{f"Column_{i}": v for i, v in enumerate(row)} for row in IRIS_ROWS]
    else:
        examples = [{"inputs": row} for row in IRIS_ROWS]
    body = {"signature_name": "classify", "examples": examples}
    response = server.client.post(f"/v1/models/{name}:classify", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    best = [max(result, key=lambda pair: pair[1])[0] for result in results]
    assert best == ["0", "2"]
    if labels is not None:
        assert [pair[0] for pair in results[0]] == labels
    bad = server.client.post(
        f"/v1/models/{name}:classify",
        json={"signature_name": "classify", "examples": [{"inputs": [1.0]}]},
    )
    assert bad.status_code == 400, bad.text


def test_python_model_without_a_signature_over_grpc(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "open"
        request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(np.array([1.0, 2.5])))
        answer = stub.Predict(request, timeout=30)
        assert codec.tensor_proto_to_ndarray(answer.outputs["doubled"]).tolist() == [2.0, 5.0]
        assert codec.tensor_proto_to_ndarray(answer.outputs["count"]).tolist() == [2, 2]
        request.output_filter.append("nope")
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_python_model_without_a_signature_over_rest(server: RunningServer) -> None:
    columnar = server.client.post("/v1/models/open:predict", json={"inputs": {"x": [1.0, 2.5]}})
    assert columnar.status_code == 200, columnar.text
    assert columnar.json()["outputs"] == {"doubled": [2.0, 5.0], "count": [2, 2]}
    rows = server.client.post("/v1/models/open:predict", json={"instances": [{"x": 1}, {"x": 2}]})
    assert rows.status_code == 200, rows.text
    assert [p["doubled"] for p in rows.json()["predictions"]] == [2, 4]
    missing = server.client.post("/v1/models/open:predict", json={"inputs": {"y": [1.0]}})
    assert missing.status_code == 500 and "KeyError" in missing.json()["error"]


def test_v2_infer_on_a_python_model_without_a_signature(server: RunningServer) -> None:
    """V2 inputs are taken by the names and datatypes the request gives, outputs are the
    names ``predict`` returns (all of them, or those the request asks for)."""
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.5]}]}
    response = server.client.post("/v2/models/open/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["doubled"]["data"] == [2.0, 5.0]
    assert outputs["doubled"]["datatype"] == "FP64"
    assert outputs["count"] == {"name": "count", "datatype": "INT64", "shape": [2], "data": [2, 2]}
    body["outputs"] = [{"name": "count"}]
    only = server.client.post("/v2/models/open/infer", json=body)
    assert only.status_code == 200, only.text
    assert [o["name"] for o in only.json()["outputs"]] == ["count"]
    body["outputs"] = [{"name": "nope"}]
    unknown = server.client.post("/v2/models/open/infer", json=body)
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"], unknown.text
    missing = server.client.post(
        "/v2/models/open/infer",
        json={"inputs": [{"name": "y", "shape": [1], "datatype": "INT32", "data": [1]}]},
    )
    assert missing.status_code == 500 and "KeyError" in missing.json()["error"], missing.text
    meta = server.client.get("/v2/models/open")
    assert meta.status_code == 200, meta.text
    assert meta.json()["inputs"] == [] and meta.json()["platform"] == "python"

    from pyserving.server.v2.protos import MESSAGES

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=MESSAGES["ModelInferResponse"].FromString,
        )
        request = MESSAGES["ModelInferRequest"](model_name="open", id="o")
        x = np.array([[1, 2, 3]], dtype=np.int32)
        request.inputs.add(name="x", datatype="INT32", shape=[1, 3])
        request.raw_input_contents.append(x.tobytes())
        answer = call(request, timeout=30)
        outputs = {o.name: i for i, o in enumerate(answer.outputs)}
        doubled = answer.outputs[outputs["doubled"]]
        assert doubled.datatype == "INT32" and list(doubled.shape) == [1, 3]
        raw = answer.raw_output_contents[outputs["doubled"]]
        assert np.frombuffer(raw, dtype=np.int32).tolist() == [2, 4, 6]
        count = np.frombuffer(answer.raw_output_contents[outputs["count"]], dtype=np.int64)
        assert count.tolist() == [3]
        text = MESSAGES["ModelInferRequest"](model_name="open")
        text.inputs.add(name="x", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"ab")
        answer = call(text, timeout=30)
        assert answer.outputs[0].name == "doubled"


# ------------------------------------------------------- every platform, one lifecycle

FLOWERS = {
    "sepal_length": [5.0, 6.6],
    "sepal_width": [3.4, 3.0],
    "petal_length": [1.5, 5.6],
    "petal_width": [0.25, 2.0],
}


@dataclass(frozen=True)
class Case:
    """One platform's example model: a request of two rows, the output telling the rows'
    classes apart and what it must say, and the file a corrupt copy overwrites."""

    model: str
    platform: str
    v2_platform: str
    inputs: dict[str, Any]  # input alias -> rows (float32)
    output: str  # the output compared with ``expected`` (``scores``: its argmax)
    expected: list[Any]
    model_file: str
    corrupt: bytes = b"\\x00\\x01\\x02 this is not a model \\xff"


IRIS_EXPECTED = [0, 2]
CASES = [
    Case("iris_sklearn", "sklearn", "sklearn", {"inputs": IRIS_ROWS}, "classes", IRIS_EXPECTED,
         "model.joblib"),
    Case("iris_onnx", "onnx", "onnxruntime_onnx", {"inputs": IRIS_ROWS}, "label", IRIS_EXPECTED,
         "model.onnx"),
    Case("iris_xgboost", "xgboost", "xgboost", {"inputs": IRIS_ROWS}, "classes", IRIS_EXPECTED,
         "model.ubj"),
    Case("iris_lightgbm", "lightgbm", "lightgbm", {"inputs": IRIS_ROWS}, "classes",
         IRIS_EXPECTED, "model.txt"),
    Case("iris_torch", "pytorch", "pytorch_torch", {"inputs": IRIS_ROWS}, "classes",
         IRIS_EXPECTED, "model.pt2"),
    Case("iris_keras", "keras", "keras", {"inputs": IRIS_ROWS}, "scores", IRIS_EXPECTED,
         "model.keras"),
    Case("flowers_python", "python", "python", FLOWERS, "species", ["setosa", "virginica"],
         "model.py", b"class Model(:\\n"),
]  # fmt: skip


def _answer(case: Case, outputs: dict[str, Any]) -> list[Any]:
    """What ``case.output`` says about the two rows (class indices or names)."""
    values = np.asarray(outputs[case.output])
    if case.output == "scores":
        return values.argmax(axis=1).tolist()
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


def _rest_answer(case: Case, body: dict[str, Any]) -> list[Any]:
    outputs = body["outputs"]
    return _answer(case, outputs if isinstance(outputs, dict) else {case.output: outputs})


def _predict_request(case: Case) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = case.model
    for alias, rows in case.inputs.items():
        array = np.array(rows, dtype=np.float32)
        request.inputs[alias].CopyFrom(codec.ndarray_to_tensor_proto(array))
    return request


def _grpc_answer(case: Case, response: predict_pb2.PredictResponse) -> list[Any]:
    outputs = {k: codec.tensor_proto_to_ndarray(v) for k, v in response.outputs.items()}
    return _answer(case, outputs)


def _v2_inputs(case: Case) -> list[dict[str, Any]]:
    inputs = []
    for alias, rows in case.inputs.items():
        array = np.array(rows, dtype=np.float32)
        data = array.ravel().tolist()
        inputs.append({"name": alias, "shape": list(array.shape), "datatype": "FP32", "data": data})
    return inputs


@pytest.mark.parametrize("case", CASES, ids=[c.platform for c in CASES])
def test_predict_and_metadata_over_rest_grpc_and_v2(server: RunningServer, case: Case) -> None:
    """Every platform's example model: V1 predict over REST (columnar and rows) and gRPC,
    V2 infer over REST, and the same signature in V1 metadata (REST and gRPC) and V2."""
    columnar = server.client.post(f"/v1/models/{case.model}:predict", json={"inputs": case.inputs})
    assert columnar.status_code == 200, columnar.text
    assert _rest_answer(case, columnar.json()) == case.expected
    aliases = list(case.inputs)
    rows = [
        dict(zip(aliases, values, strict=True)) if len(aliases) > 1 else values[0]
        for values in zip(*case.inputs.values(), strict=True)
    ]
    by_row = server.client.post(f"/v1/models/{case.model}:predict", json={"instances": rows})
    assert by_row.status_code == 200, by_row.text
    assert len(by_row.json()["predictions"]) == 2
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(_predict_request(case), timeout=30)
        assert _grpc_answer(case, answer) == case.expected
        assert answer.model_spec.name == case.model and answer.model_spec.version.value >= 1
        meta = get_model_metadata_pb2.GetModelMetadataRequest()
        meta.model_spec.name = case.model
        meta.metadata_field.append("signature_def")
        grpc_meta = stub.GetModelMetadata(meta, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    grpc_meta.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert sorted(signature.inputs) == sorted(aliases)
    assert case.output in signature.outputs
    assert all(signature.inputs[a].dtype == 1 for a in aliases)  # DT_FLOAT
    rest_meta = server.client.get(f"/v1/models/{case.model}/metadata").json()
    rest_signature = rest_meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(rest_signature["inputs"]) == sorted(aliases)
    assert sorted(rest_signature["outputs"]) == sorted(signature.outputs)
    v2_meta = server.client.get(f"/v2/models/{case.model}").json()
    assert v2_meta["platform"] == case.v2_platform
    assert sorted(t["name"] for t in v2_meta["inputs"]) == sorted(aliases)
    v2 = server.client.post(
        f"/v2/models/{case.model}/infer",
        json={"inputs": _v2_inputs(case), "outputs": [{"name": case.output}]},
    )
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    values = np.array(output["data"], dtype=object if output["datatype"] == "BYTES" else None)
    assert _answer(case, {case.output: values.reshape(output["shape"])}) == case.expected


class Hammer:
    """A REST and a gRPC client predicting ``case``'s rows in a loop until stopped, each
    answer checked; the gRPC client records which version answered."""

    def __init__(self, server: RunningServer, case: Case) -> None:
        self.server = server
        self.case = case
        self.failures: list[str] = []
        self.counts = {"REST": 0, "gRPC": 0}
        self.versions: list[int] = []  # the version of each gRPC answer, in order
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._rest, name=f"hammer-rest-{case.model}"),
            threading.Thread(target=self._grpc, name=f"hammer-grpc-{case.model}"),
        ]

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _fail(self, what: str) -> None:
        if len(self.failures) < 10:
            self.failures.append(what)

    def _rest(self) -> None:
        body = {"inputs": self.case.inputs}
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"/v1/models/{self.case.model}:predict", json=body)
                    if (
                        r.status_code != 200
                        or _rest_answer(self.case, r.json()) != self.case.expected
                    ):
                        self._fail(f"REST {r.status_code}: {r.text}")
                except httpx.HTTPError as exc:
                    self._fail(f"REST {exc!r}")
                self.counts["REST"] += 1

    def _grpc(self) -> None:
        request = _predict_request(self.case)
        with grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                try:
                    response = stub.Predict(request, timeout=30)
                    self.versions.append(response.model_spec.version.value)
                    if _grpc_answer(self.case, response) != self.case.expected:
                        self._fail(f"gRPC answer: {response}")
                except grpc.RpcError as exc:
                    self._fail(f"gRPC {exc.code()}: {exc.details()}")  # type: ignore[attr-defined]
                self.counts["gRPC"] += 1


def _wait_until(predicate: Any, what: str, timeout: float = 120.0) -> Any:
    """Poll ``predicate`` (observable state: model status, answers seen) until it returns
    something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _versions(server: RunningServer, model: str) -> dict[int, dict[str, Any]]:
    response = server.client.get(f"/v1/models/{model}")
    assert response.status_code == 200, response.text
    return {int(s["version"]): s for s in response.json()["model_version_status"]}


def _publish(server: RunningServer, repo: pathlib.Path, case: Case, version: int) -> pathlib.Path:
    """Rename the staging copy made by :func:`_staging` to ``version`` (atomic, as a
    deployment tool does) and have the server poll the base path (it does not poll
    periodically). Returns the version directory."""
    base = repo / case.model
    staging = base / f".staging-{version}"
    target = base / str(version)
    staging.rename(target)
    response = server.client.post(f"/v2/repository/models/{case.model}/load", json={})
    assert response.status_code == 200, response.text
    return target


def _staging(repo: pathlib.Path, case: Case, version: int) -> pathlib.Path:
    """A copy of version 1 of ``case``'s model under a name the server ignores."""
    staging = repo / case.model / f".staging-{version}"
    shutil.copytree(repo / case.model / "1", staging)
    return staging


@pytest.mark.parametrize("case", CASES, ids=[c.platform for c in CASES])
def test_version_lifecycle_under_load(
    server: RunningServer, repo: pathlib.Path, case: Case
) -> None:
    """While a REST and a gRPC client keep predicting, every request succeeding:

    1. version 2 (a copy of 1) is published: it loads, version 1 is unloaded after it
       (availability-preserving), and the answers switch to version 2 for good;
    2. version 3 with a corrupt model file fails its load with a precise error in its
       status, and version 2 keeps serving;
    3. version 4, whose files are estimated above the RAM budget, is refused
       (RESOURCE_EXHAUSTED) without being loaded, and version 2 keeps serving.
    """
    with Hammer(server, case) as hammer:
        _wait_until(lambda: hammer.counts["REST"] and hammer.versions, "the first answers")
        assert set(hammer.versions) == {1}
        # 1. A new version swaps in.
        _staging(repo, case, 2)
        _publish(server, repo, case, 2)

        def swapped() -> bool:
            states = _versions(server, case.model)
            return states.get(2, {}).get("state") == "AVAILABLE" and (
                states.get(1, {}).get("state") in (None, "END")
            )

        _wait_until(swapped, "version 2 to replace version 1")
        _wait_until(lambda: hammer.versions[-1] == 2, "an answer from version 2")
        # 2. A corrupt version fails to load; version 2 keeps serving.
        corrupt = _staging(repo, case, 3)
        (corrupt / case.model_file).write_bytes(case.corrupt)
        _publish(server, repo, case, 3)
        state = _wait_until(
            lambda: (s := _versions(server, case.model).get(3)) and s["state"] == "END" and s,
            "version 3 to fail",
        )
        assert state["status"]["error_code"] == "INVALID_ARGUMENT", state
        message = state["status"]["error_message"]
        if case.platform == "python":
            assert "Could not import" in message and "SyntaxError" in message, message
        else:
            assert f"Could not load the model at {repo / case.model / '3'}" in message, message
        if case.platform == "keras":  # (Keras itself says "File not found")
            assert "model.keras is not a Keras 3 model" in message, message
        assert _versions(server, case.model)[2]["state"] == "AVAILABLE"
        # 3. A version over the memory budget is refused; version 2 keeps serving.
        huge = _staging(repo, case, 4)
        with open(huge / "padding.bin", "wb") as f:
            f.truncate(HUGE_FILE_BYTES)  # sparse: no disk used, 1.2 x its size estimated
        _publish(server, repo, case, 4)
        state = _wait_until(
            lambda: (s := _versions(server, case.model).get(4)) and s["state"] == "END" and s,
            "version 4 to be refused",
        )
        assert state["status"]["error_code"] == "RESOURCE_EXHAUSTED", state
        assert (
            f"Insufficient resources to load servable {case.model} version 4"
            in state["status"]["error_message"]
        )
        assert _versions(server, case.model)[2]["state"] == "AVAILABLE"
        seen = len(hammer.versions)
        _wait_until(lambda: len(hammer.versions) > seen, "an answer after the refusal")
    assert hammer.failures == []
    assert hammer.counts["REST"] > 0 and hammer.counts["gRPC"] > 0
    # Answers switched from version 1 to version 2 once, never back.
    assert hammer.versions == sorted(hammer.versions) and hammer.versions[-1] == 2
    assert f"Loading servable version {{name: {case.model} version: 4}}" not in server.log()


def test_torchscript_inputs_take_the_request_dtypes(server: RunningServer) -> None:
    """A TorchScript module declares no dtypes: JSON integers are int64 and booleans bool over
    REST, gRPC and V2 requests give theirs (int32 here); float ids are the module's error."""
    ids, mask = [[1, 2, 3], [4, 5, 6]], [[True, True, False], [True, False, False]]
    expected = [[6.0, 8.0], [8.0, 9.0]]
    flat = {"ids": np.ravel(ids).tolist(), "mask": np.ravel(mask).tolist()}
    rest = server.client.post(
        "/v1/models/lookup_ts:predict", json={"inputs": {"ids": ids, "mask": mask}}
    )
    assert rest.status_code == 200, rest.text
    assert rest.json()["outputs"] == expected
    rows = [{"ids": i, "mask": m} for i, m in zip(ids, mask, strict=True)]
    by_row = server.client.post("/v1/models/lookup_ts:predict", json={"instances": rows})
    assert by_row.status_code == 200, by_row.text
    assert by_row.json()["predictions"] == expected
    floats = server.client.post(
        "/v1/models/lookup_ts:predict", json={"inputs": {"ids": [[1.5]], "mask": [[True]]}}
    )
    assert floats.status_code == 400 and "Long, Int" in floats.json()["error"], floats.text
    strings = server.client.post(
        "/v1/models/lookup_ts:predict", json={"inputs": {"ids": [["a"]], "mask": [[True]]}}
    )
    assert strings.status_code == 400, strings.text
    assert strings.json()["error"] == "Input 'ids' holds strings, which PyTorch tensors cannot"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "lookup_ts"
        request.inputs["ids"].CopyFrom(codec.ndarray_to_tensor_proto(np.array(ids, np.int32)))
        request.inputs["mask"].CopyFrom(codec.ndarray_to_tensor_proto(np.array(mask)))
        answer = stub.Predict(request, timeout=30)
    assert codec.tensor_proto_to_ndarray(answer.outputs["output"]).tolist() == expected
    v2 = server.client.post(
        "/v2/models/lookup_ts/infer",
        json={
            "inputs": [
                {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": flat["ids"]},
                {"name": "mask", "shape": [2, 3], "datatype": "BOOL", "data": flat["mask"]},
            ]
        },
    )
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["datatype"] == "FP32" and output["data"] == np.ravel(expected).tolist()
    meta = server.client.get("/v1/models/lookup_ts/metadata").json()
    inputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["ids"]["dtype"] == "DT_INVALID"
