"""The V2 service, its REST routes and its gRPC servicer in process, over the real ServerCore,
source and manager with a fake platform (no TensorFlow run, no ports): names and versions,
error mapping, the model repository as config reloads, statistics."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from pyserving.config import ModelServerConfig, parse_text_proto
from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.core.manager import ManagerOptions
from pyserving.errors import Internal, InvalidArgument, NotFound, ServingError, Unavailable
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.grpc.calls import Call
from pyserving.server.metrics import ServerMetrics
from pyserving.server.rest import RestHandler, RestResponse
from pyserving.server.service import ModelServing
from pyserving.server.v2.grpc import V2GrpcService
from pyserving.server.v2.protos import MESSAGES


class HalfPlusTwo:
    """A servable with ``serving_default``: ``x`` FP32 [-1, 1] -> ``y`` = 0.5 x + 2."""

    def __init__(self) -> None:
        signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        for alias, target in (("x", signature.inputs), ("y", signature.outputs)):
            info = target[alias]
            info.name = f"{alias}:0"
            info.dtype = types_pb2.DT_FLOAT
            info.tensor_shape.dim.add(size=-1)
            info.tensor_shape.dim.add(size=1)
        self.signature_defs = {"serving_default": signature}
        self.meta_graph = meta_graph_pb2.MetaGraphDef()
        self.meta_graph.signature_def["serving_default"].CopyFrom(signature)

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        missing = set(self.signature_defs[signature_name].inputs) - set(inputs)
        if missing:
            raise InvalidArgument(f"missing inputs {sorted(missing)}")
        for key in output_keys or ():
            if key != "y":
                raise InvalidArgument(f"output tensor alias not found in signature: {key}")
        return {"y": inputs["x"] * 0.5 + 2}


class FakeLoader(Loader):
    def __init__(self, path: str) -> None:
        self.path = path
        self._servable: HalfPlusTwo | None = None

    def estimate_resources(self) -> ResourceEstimate:
        return ResourceEstimate(ram_bytes=1)

    def load(self) -> None:
        if pathlib.Path(self.path, "BROKEN").exists():
            raise Internal("this version does not load")
        self._servable = HalfPlusTwo()

    def unload(self) -> None:
        self._servable = None

    def servable(self) -> HalfPlusTwo:
        assert self._servable is not None
        return self._servable


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> pathlib.Path:
    for name, versions in {"m": [1, 2], "spare": [5], "broken": [3]}.items():
        for v in versions:
            (tmp_path / name / str(v)).mkdir(parents=True)
    (tmp_path / "broken" / "3" / "BROKEN").touch()
    return tmp_path


@pytest.fixture
def serving(repo: pathlib.Path) -> Iterator[ModelServing]:
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1, num_unload_threads=1, max_num_load_retries=0),
        file_system_poll_wait_seconds=0,
        platforms={"tensorflow": lambda model, id, path: FakeLoader(path)},
        settle_timeout=30,
    )
    metrics = ServerMetrics()
    with ServerCore(options, metrics) as core:
        config = ModelServerConfig()
        parse_text_proto(
            f'model_config_list {{ config {{ name: "m" base_path: "{repo / "m"}" '
            'model_version_policy { all {} } version_labels { key: "stable" value: 1 } } }',
            config,
            "tensorflow.serving.ModelServerConfig",
        )
        core.reload_config(config)
        yield ModelServing(core, metrics=metrics)


@pytest.fixture
def rest(serving: ModelServing) -> RestHandler:
    return RestHandler(serving)


def call(
    rest: RestHandler, method: str, path: str, body: Any = None, headers: Any = None
) -> RestResponse:
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return rest.handle(method, path, headers or {}, data)


def infer_body(rows: list[float], **extra: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": "FP32", "shape": [len(rows), 1], "data": rows}
    return {"inputs": [tensor], **extra}


def test_versions_and_labels(rest: RestHandler) -> None:
    for path, version in (
        ("/v2/models/m/infer", "2"),
        ("/v2/models/m/versions/1/infer", "1"),
        ("/v2/models/m/versions/stable/infer", "1"),
    ):
        r = call(rest, "POST", path, infer_body([2.0], id="i"))
        assert r.status == 200, r.body
        answer = json.loads(r.body)
        assert (answer["model_version"], answer["id"]) == (version, "i")
        assert answer["outputs"] == [
            {"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [3.0]}
        ]
    for path in ("/v2/models/m/versions/9/infer", "/v2/models/m/versions/beta/infer"):
        assert call(rest, "POST", path, infer_body([1.0])).status == 404
    assert call(rest, "POST", "/v2/models/none/infer", infer_body([1.0])).status == 404
    meta = json.loads(call(rest, "GET", "/v2/models/m").body)
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]


def test_binary_in_and_out(rest: RestHandler) -> None:
    rows = np.array([[1.0], [4.0]], np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 1],
                    "parameters": {"binary_data_size": 8},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = call(
        rest,
        "POST",
        "/v2/models/m/infer",
        header + rows.tobytes(),
        {b"inference-header-content-length": str(len(header)).encode()},
    )
    assert r.content_type == b"application/octet-stream"
    ((name, value),) = r.headers
    length = int(value)
    assert name == b"inference-header-content-length"
    assert json.loads(r.body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(r.body[length:], np.float32).tolist() == [2.5, 4.0]


def test_repository_and_unavailable_models(rest: RestHandler, repo: pathlib.Path) -> None:
    service = rest.v2.service
    assert call(rest, "POST", "/v2/repository/models/spare/load").status == 400
    assert call(rest, "POST", "/v2/repository/models/spare/unload").status == 404
    with pytest.raises(InvalidArgument, match="holds no version directory"):
        service.load("spare", {"base_path": str(repo)})
    service.load("spare", {"config": json.dumps({"base_path": str(repo / "spare")})})
    assert service.model_ready("spare")
    assert [(e.name, e.version, e.state) for e in service.repository_index()] == [
        ("m", "1", "READY"),
        ("m", "2", "READY"),
        ("spare", "5", "READY"),
    ]
    service.unload("spare")
    assert "spare" not in service.core.model_names()
    with pytest.raises(NotFound):
        service.model_ready("spare")
    service.load("spare", {"base_path": str(repo / "spare")})  # again, after its END states
    assert service.model_ready("spare")
    # A model that is configured but does not load is unavailable, not unknown.
    with pytest.raises(Unavailable, match="this version does not load"):
        service.load("broken", {"base_path": str(repo / "broken")})
    assert call(rest, "GET", "/v2/models/broken/ready").status == 503
    assert call(rest, "POST", "/v2/models/broken/infer", infer_body([1.0])).status == 503
    assert call(rest, "POST", "/v2/models/broken/versions/3/infer", infer_body([1.0])).status == 503
    assert call(rest, "GET", "/v2/health/ready").status == 503
    states = {(e.name, e.state) for e in service.repository_index()}
    assert ("broken", "UNAVAILABLE") in states
    assert ("broken", "UNAVAILABLE") not in {
        (e.name, e.state) for e in service.repository_index(ready_only=True)
    }
    service.unload("broken")
    assert call(rest, "GET", "/v2/health/ready").status == 200


def test_load_parameters_are_checked(rest: RestHandler, repo: pathlib.Path) -> None:
    service = rest.v2.service
    for parameters, text in (
        ({"file:1/model.savedmodel": b"..."}, "not supported"),
        ({"config": "{not json"}, "not a ModelConfig"),
        ({"config": json.dumps({"name": "other", "base_path": "/x"})}, "names model"),
        ({"base_path": 7}, "non-empty string"),
        ({"base_path": str(repo / "nowhere")}, "cannot be read"),
    ):
        with pytest.raises(InvalidArgument, match=text):
            service.load("spare", parameters)
    assert service.core.model_names() == ["m"]


def test_statistics_count_requests_rows_and_runs(rest: RestHandler) -> None:
    for rows in ([1.0], [1.0, 2.0, 3.0]):
        assert call(rest, "POST", "/v2/models/m/versions/1/infer", infer_body(rows)).status == 200
    bad = infer_body([1.0], outputs=[{"name": "nope"}])
    assert call(rest, "POST", "/v2/models/m/versions/1/infer", bad).status == 400
    stats = json.loads(call(rest, "GET", "/v2/models/m/versions/1/stats").body)["model_stats"]
    (one,) = stats
    assert (one["name"], one["version"]) == ("m", "1")
    assert one["inference_count"] == 4
    assert one["execution_count"] == 2
    assert one["inference_stats"]["success"]["count"] == 2
    assert one["inference_stats"]["fail"]["count"] == 1
    assert {b["batch_size"] for b in one["batch_stats"]} == {1, 3}
    every = json.loads(call(rest, "GET", "/v2/models/stats").body)["model_stats"]
    assert [(s["name"], s["version"]) for s in every] == [("m", "1"), ("m", "2")]
    assert call(rest, "GET", "/v2/models/none/stats").status == 404
    assert call(rest, "GET", "/v2/models/m/versions/7/stats").status == 404


def test_grpc_servicer(serving: ModelServing) -> None:
    servicer = V2GrpcService(serving)
    context = Call()
    request = MESSAGES["ModelInferRequest"](model_name="m", model_version="stable", id="g")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1])
    request.raw_input_contents.append(np.float32([1, 4]).tobytes())
    response = servicer.ModelInfer(request, context)
    assert (response.model_version, response.id) == ("1", "g")
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.5, 4.0]
    ready = servicer.ModelReady(MESSAGES["ModelReadyRequest"](name="none"), context)
    assert ready.ready is False
    for bad, code in (
        (MESSAGES["ModelInferRequest"](model_name="none"), "NOT_FOUND"),
        (_with_mixed_contents(), "INVALID_ARGUMENT"),
    ):
        with pytest.raises(ServingError) as info:
            servicer.ModelInfer(bad, context)
        assert info.value.grpc_code.name == code
    stats = servicer.ModelStatistics(MESSAGES["ModelStatisticsRequest"](name="m"), context)
    assert [s.version for s in stats.model_stats] == ["1", "2"]
    assert stats.model_stats[0].inference_count == 2


def _with_mixed_contents() -> Any:
    request = MESSAGES["ModelInferRequest"](model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    tensor.contents.fp32_contents.append(1.0)
    request.raw_input_contents.append(b"\0\0\0\0")
    return request


@pytest.mark.parametrize("frontend", ["http2", "grpcio"])
def test_every_grpc_front_end_serves_v2(serving: ModelServing, frontend: str) -> None:
    """tritonclient's gRPC client against each front end, in this process (the server's
    messages live in their own descriptor pool, tritonclient's in the default one)."""
    triton_grpc = pytest.importorskip("tritonclient.grpc")
    from pyserving.server.grpc import GrpcServerOptions, start_grpc_server

    options = GrpcServerOptions(port=0, grpcio=frontend != "http2", enable_profiler=False)
    with start_grpc_server(serving, options) as server:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("m", "stable")
        assert not client.is_model_ready("none")
        assert client.get_model_metadata("m").versions == ["1", "2"]
        x = triton_grpc.InferInput("x", [2, 1], "FP32")
        x.set_data_from_numpy(np.float32([[1], [4]]))
        result = client.infer("m", [x], model_version="1")
        assert result.as_numpy("y").tolist() == [[2.5], [4.0]]
        with pytest.raises(triton_grpc.InferenceServerException) as info:
            client.infer("none", [x])
        assert info.value.status() == "StatusCode.NOT_FOUND"
        client.close()
