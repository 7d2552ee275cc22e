"""The Open Inference Protocol end to end: Triton's ``tritonclient`` (HTTP and gRPC) and
KServe's clients against the real server, over REST and gRPC.

One server for the module serves TF Serving's test models (``half_plus_two``;
``two_versions`` with versions 123 and 124 and the label ``stable``; the TF2 export) and the
bundled example (``flowers``). Two more, started beside it, serve ``half_plus_two`` with
batching: one on pyserving's HTTP/2 gRPC front end, one on grpcio's (``grpc.aio``, what
``--grpc_frontend=grpcio`` runs).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[2]
X = np.array([[1.0], [2.0], [5.0]], dtype=np.float32)
Y = X * 0.5 + 2


@dataclass
class Servers:
    main: RunningServer
    batching: RunningServer
    batching_grpcio: RunningServer
    models: pathlib.Path  # model directories the repository tests may load
    testdata: pathlib.Path

    @property
    def http(self) -> triton_http.InferenceServerClient:
        return triton_http.InferenceServerClient(f"127.0.0.1:{self.main.rest_port}")

    @property
    def grpc(self) -> triton_grpc.InferenceServerClient:
        return triton_grpc.InferenceServerClient(f"127.0.0.1:{self.main.grpc_port}")


@pytest.fixture(scope="module")
def servers(testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("v2")
    models = tmp / "models"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", models / "spare")
    config = tmp / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{ name: "half_plus_two" base_path: "{testdata / "saved_model_half_plus_two_cpu"}" }}
  config {{
    name: "two_versions"
    base_path: "{testdata / "saved_model_half_plus_two_2_versions"}"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 123 }}
  }}
  config {{ name: "tf2" base_path: "{testdata / "saved_model_half_plus_two_tf2_cpu"}" }}
  config {{ name: "flowers" base_path: "{ROOT / "examples" / "flowers"}" }}
}}"""
    )
    params = tmp / "batching.config"
    params.write_text(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 20000 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 100 }\n"
    )
    main = RunningServer(
        [f"--model_config_file={config}", "--max_num_load_retries=0"], tmp / "main.log"
    )
    batching_flags = [
        "--model_name=half_plus_two",
        f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        "--enable_batching",
        f"--batching_parameters_file={params}",
    ]
    batching = RunningServer(batching_flags, tmp / "batching.log")
    batching_grpcio = RunningServer(
        [*batching_flags, "--grpc_frontend=grpcio"], tmp / "batching-grpcio.log"
    )
    try:
        main.wait_ready()
        batching.wait_ready()
        batching_grpcio.wait_ready()
        yield Servers(main, batching, batching_grpcio, models, testdata)
    finally:
        assert main.stop() == 0, main.log()
        assert batching.stop() == 0, batching.log()
        assert batching_grpcio.stop() == 0, batching_grpcio.log()
    for server in (main, batching, batching_grpcio):
        assert "Traceback" not in server.log(), server.log()


def triton_input(module: object, array: np.ndarray, binary: bool = True, name: str = "x") -> object:
    tensor = module.InferInput(name, list(array.shape), "FP32")  # type: ignore[attr-defined]
    if module is triton_http:
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


# -- health and metadata ----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_health_and_metadata(servers: Servers, transport: str) -> None:
    client = getattr(servers, transport)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("half_plus_two")
    assert client.is_model_ready("two_versions", "124")
    assert client.is_model_ready("two_versions", "stable")
    assert not client.is_model_ready("two_versions", "7")
    assert not client.is_model_ready("no_such_model")
    server = (
        client.get_server_metadata(as_json=True)
        if transport == "grpc"
        else (client.get_server_metadata())
    )
    assert server["name"] == "pyserving"
    assert set(server["extensions"]) >= {"binary_tensor_data", "model_repository", "statistics"}
    meta = (
        client.get_model_metadata("two_versions", as_json=True)
        if transport == "grpc"
        else client.get_model_metadata("two_versions")
    )
    shape = [int(d) for d in meta["inputs"][0]["shape"]]
    assert meta["name"] == "two_versions"
    assert meta["versions"] == ["123", "124"]
    assert meta["platform"] == "tensorflow_savedmodel"
    assert (meta["inputs"][0]["name"], meta["inputs"][0]["datatype"], shape) == (
        "x",
        "FP32",
        [-1, 1],
    )
    assert meta["outputs"][0]["name"] == "y"


def test_metadata_of_the_example(servers: Servers) -> None:
    meta = servers.http.get_model_metadata("flowers", "1")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "class_ids", "datatype": "INT64", "shape": [-1]},
        {"name": "petal_area", "datatype": "FP32", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]


def test_rest_health_answers(servers: Servers) -> None:
    client = servers.main.client
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/half_plus_two/ready").status_code == 200
    assert client.get("/v2/models/no_such_model/ready").status_code == 404
    assert client.get("/v2/models/no_such_model").status_code == 404
    assert client.get("/v2/models/two_versions/versions/9").status_code == 404


# -- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer(servers: Servers, binary: bool) -> None:
    client = servers.http
    output = triton_http.InferRequestedOutput("y", binary_data=binary)
    result = client.infer(
        "half_plus_two", [triton_input(triton_http, X, binary)], outputs=[output], request_id="r1"
    )
    np.testing.assert_allclose(result.as_numpy("y"), Y)
    response = result.get_response()
    assert response["id"] == "r1"
    assert response["model_version"] == "123"


def test_http_async_infer_and_versions(servers: Servers) -> None:
    client = servers.http
    pending = [
        client.async_infer("two_versions", [triton_input(triton_http, X)], model_version=v)
        for v in ("123", "124", "stable", "")
    ]
    results = [p.get_result() for p in pending]
    for result in results:
        np.testing.assert_allclose(result.as_numpy("y"), Y)
    assert [r.get_response()["model_version"] for r in results] == ["123", "124", "123", "124"]
    # The TF2 export's signature takes shape [1].
    tf2 = client.infer("tf2", [triton_input(triton_http, X[0])])
    np.testing.assert_allclose(tf2.as_numpy("y"), Y[0])


def test_grpc_infer(servers: Servers) -> None:
    client = servers.grpc
    result = client.infer(
        "half_plus_two", [triton_input(triton_grpc, X)], request_id="g1", model_version="123"
    )
    np.testing.assert_allclose(result.as_numpy("y"), Y)
    assert result.get_response().id == "g1"
    # async_infer with a callback.
    done = threading.Event()
    answers: list[object] = []

    def callback(result: object, error: object) -> None:
        answers.append(error or result)
        done.set()

    client.async_infer("tf2", [triton_input(triton_grpc, X[0])], callback)
    assert done.wait(30)
    np.testing.assert_allclose(answers[0].as_numpy("y"), Y[0])  # type: ignore[attr-defined]


def test_example_model_outputs_match_v1(servers: Servers) -> None:
    features = np.array([[5.0, 3.4, 1.5, 0.25], [6.6, 3.0, 5.6, 2.0]], dtype=np.float32)
    v1 = servers.main.client.post(
        "/v1/models/flowers:predict", json={"instances": features.tolist()}
    ).json()["predictions"]
    for client, module in ((servers.http, triton_http), (servers.grpc, triton_grpc)):
        outputs = [module.InferRequestedOutput(n) for n in ("probabilities", "class_ids")]
        result = client.infer(
            "flowers", [triton_input(module, features, name="features")], outputs=outputs
        )
        assert result.as_numpy("class_ids").tolist() == [row["class_ids"] for row in v1]
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), [row["probabilities"] for row in v1], rtol=1e-6
        )
        assert result.as_numpy("petal_area") is None  # not requested


def test_rest_json_forms(servers: Servers) -> None:
    client = servers.main.client
    nested = {
        "id": "n",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 1], "data": [[1], [2], [5]]}],
        "outputs": [{"name": "y"}],
    }
    r = client.post("/v2/models/half_plus_two/infer", json=nested)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model_name": "half_plus_two",
        "model_version": "123",
        "id": "n",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 1], "data": [2.5, 3.0, 4.5]}],
    }
    by_signature = {
        "parameters": {"signature_name": "serving_default"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [4]}],
    }
    r = client.post("/v2/models/two_versions/versions/stable/infer", json=by_signature)
    assert r.json()["outputs"][0]["data"] == [4.0]


def test_rest_json_non_finite_numbers(servers: Servers) -> None:
    """NaN and the infinities read and written as bare tokens, as Triton does (strict JSON
    has no such numbers; ``null`` would lose them): by a raw HTTP client and by Triton's."""
    client = servers.main.client
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 1], '
        b'"data": [NaN, Infinity, -Infinity, 1]}]}'
    )
    r = client.post("/v2/models/half_plus_two/infer", content=body)
    assert r.status_code == 200, r.text
    assert b'"data":[NaN,Infinity,-Infinity,2.5]' in r.content
    data = json.loads(r.content)["outputs"][0]["data"]
    assert np.isnan(data[0]) and data[1:] == [float("inf"), float("-inf"), 2.5]
    x = np.array([[np.nan], [np.inf], [-np.inf], [1.0]], dtype=np.float32)
    inputs = [triton_http.InferInput("x", [4, 1], "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=False)
    outputs = [triton_http.InferRequestedOutput("y", binary_data=False)]
    result = servers.http.infer("half_plus_two", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("y"), x * 0.5 + 2)
    # Still JSON or nothing: the tokens do not make a broken body readable.
    for broken in (b'{"inputs": [NaN', b'{"inputs": [{"name": "x", "data": [nan]}]}'):
        r = client.post("/v2/models/half_plus_two/infer", content=broken)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("Request body is not valid JSON"), r.text


def test_rest_binary_request_and_response(servers: Servers) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [3, 1],
                    "parameters": {"binary_data_size": 12},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    r = servers.main.client.post(
        "/v2/models/half_plus_two/infer",
        content=header + X.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    document = json.loads(r.content[:length])
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 12}
    np.testing.assert_array_equal(np.frombuffer(r.content[length:], np.float32).reshape(3, 1), Y)


def test_grpc_typed_contents(servers: Servers) -> None:
    """A request with typed contents is answered with typed contents."""
    from pyserving.server.v2.protos import MESSAGES

    channel = grpc.insecure_channel(f"127.0.0.1:{servers.main.grpc_port}")
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=MESSAGES["ModelInferResponse"].FromString,
    )
    request = MESSAGES["ModelInferRequest"](model_name="half_plus_two", id="t")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[3, 1])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 5.0])
    response = call(request, timeout=30)
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.fp32_contents) == [2.5, 3.0, 4.5]
    assert list(response.outputs[0].shape) == [3, 1]
    assert response.id == "t" and response.model_version == "123"
    channel.close()


# -- errors ---------------------------------------------------------------------------------


def infer_status(servers: Servers, body: object, model: str = "half_plus_two") -> tuple[int, str]:
    r = servers.main.client.post(f"/v2/models/{model}/infer", json=body)
    return r.status_code, r.json().get("error", "")


def tensor(**fields: object) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0], **fields}]}


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (tensor(datatype="FP64"), 400, "datatype is FP64, the model expects FP32"),
        (tensor(datatype="FLOAT"), 400, "invalid datatype"),
        (tensor(shape=[2, 1]), 400, "holds 2 elements"),
        (tensor(shape=[1, 2], data=[1.0, 2.0]), 400, "does not match the model's [-1,1]"),
        (tensor(shape=[-1, 1]), 400, "non-negative"),
        (tensor(data=["a"]), 400, "must be numbers"),
        (tensor(name="z"), 400, "unexpected inference input"),
        ({"inputs": []}, 400, "non-empty list"),
        ({**tensor(), "outputs": [{"name": "nope"}]}, 400, "nope"),
        ({**tensor(), "parameters": {"signature_name": "nope"}}, 400, "nope"),
    ],
)
def test_rest_infer_errors(servers: Servers, body: object, status: int, text: str) -> None:
    got, message = infer_status(servers, body)
    assert (got, text in message) == (status, True), message


def test_rest_not_found_and_binary_errors(servers: Servers) -> None:
    assert infer_status(servers, tensor(), "no_such_model")[0] == 404
    client = servers.main.client
    r = client.post("/v2/models/two_versions/versions/99/infer", json=tensor())
    assert r.status_code == 404
    header = json.dumps(
        tensor(data=None)
        | {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    for extra, declared in ((b"\0" * 8, len(header)), (b"\0" * 4, len(header) + 99)):
        r = client.post(
            "/v2/models/half_plus_two/infer",
            content=header + extra,
            headers={"Inference-Header-Content-Length": str(declared)},
        )
        assert r.status_code == 400, r.text


def test_grpc_errors(servers: Servers) -> None:
    client = servers.grpc
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", [triton_input(triton_grpc, X)])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    bad = triton_grpc.InferInput("x", [3, 2], "FP32")
    bad.set_data_from_numpy(np.zeros((3, 2), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("half_plus_two", [bad])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


# -- statistics and the model repository -------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_statistics(servers: Servers, transport: str) -> None:
    client = getattr(servers, transport)
    module = triton_http if transport == "http" else triton_grpc
    stats = lambda: client.get_inference_statistics(  # noqa: E731
        "two_versions", "123", **_as_json(transport)
    )["model_stats"]
    before = stats()
    client.infer("two_versions", [triton_input(module, X)], model_version="123")
    after = stats()
    count = lambda stats, key: int(stats[0].get(key, 0))  # noqa: E731
    assert count(after, "inference_count") == count(before, "inference_count") + 3
    assert count(after, "execution_count") == count(before, "execution_count") + 1
    every = client.get_inference_statistics(**_as_json(transport))["model_stats"]
    assert {(s["name"], s["version"]) for s in every} >= {("two_versions", "123"), ("tf2", "123")}


def _as_json(transport: str) -> dict[str, bool]:
    return {"as_json": True} if transport == "grpc" else {}


def grpc_repository_index(rpc: triton_grpc.InferenceServerClient) -> set[tuple[str, str, str]]:
    """``(name, version, state)`` of every entry of gRPC RepositoryIndex."""
    answer = rpc.get_model_repository_index(as_json=True)
    return {(m["name"], m.get("version", ""), m.get("state", "")) for m in answer["models"]}


def test_repository_load_and_unload(servers: Servers) -> None:
    http, rpc = servers.http, servers.grpc
    index = {(m["name"], m.get("version"), m["state"]) for m in http.get_model_repository_index()}
    assert ("half_plus_two", "123", "READY") in index
    # gRPC RepositoryIndex lists the same entries as REST's.
    assert grpc_repository_index(rpc) == {(n, v or "", s) for n, v, s in index}
    # A name not configured needs its base path.
    with pytest.raises(InferenceServerException) as info:
        http.load_model("spare")
    assert info.value.status() == "400"
    http.load_model("spare", config=json.dumps({"base_path": str(servers.models / "spare")}))
    assert http.is_model_ready("spare")
    np.testing.assert_allclose(rpc.infer("spare", [triton_input(triton_grpc, X)]).as_numpy("y"), Y)
    rpc.unload_model("spare")
    assert not http.is_model_ready("spare")
    # An unloaded model stays in the index, and loads again by name (Triton's repository
    # extension: the index lists the models the Load API can load).
    spare = [m for m in http.get_model_repository_index() if m["name"] == "spare"]
    assert [(m.get("version", ""), m["state"], m["reason"]) for m in spare] == [
        ("", "UNAVAILABLE", "unloaded")
    ]
    assert ("spare", "", "UNAVAILABLE") in grpc_repository_index(rpc)
    rpc.load_model("spare")
    assert rpc.is_model_ready("spare")
    assert ("spare", "123", "READY") in grpc_repository_index(rpc)
    http.unload_model("spare")
    http.unload_model("spare")  # already unloaded: nothing to do
    http.load_model("spare")
    assert http.is_model_ready("spare")
    http.unload_model("spare")
    with pytest.raises(InferenceServerException) as info:
        http.unload_model("never_configured")
    assert info.value.status() == "404"


def test_the_classification_extension_is_refused_not_ignored(servers: Servers) -> None:
    """An output asking for Triton's classification extension (``class_count``) gets an
    error: the server does not offer it, and answering the raw tensor instead would give
    the client another datatype and shape than it asked for."""
    for module, client in ((triton_http, servers.http), (triton_grpc, servers.grpc)):
        output = module.InferRequestedOutput("y", class_count=1)  # type: ignore[attr-defined]
        with pytest.raises(InferenceServerException) as info:
            client.infer("half_plus_two", [triton_input(module, X)], outputs=[output])
        assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        assert "classification extension" in str(info.value.message())
        # The server keeps serving.
        answer = client.infer("half_plus_two", [triton_input(module, X)])
        np.testing.assert_allclose(answer.as_numpy("y"), Y)


def test_labels_of_a_model_loaded_again_after_an_unload(servers: Servers) -> None:
    """Loading a model again with version labels waits for its new versions before giving
    the labels (its old versions' END states are not the new ones)."""
    client = servers.main.client
    config = json.dumps(
        {"base_path": str(servers.models / "spare"), "version_labels": {"stable": 123}}
    )
    for _ in range(2):
        r = client.post(
            "/v2/repository/models/labelled/load", json={"parameters": {"config": config}}
        )
        assert r.status_code == 200, r.text
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]}
        answer = client.post("/v2/models/labelled/versions/stable/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [3.0]
        assert client.post("/v2/repository/models/labelled/unload").status_code == 200


def test_model_that_fails_to_load_is_unavailable(servers: Servers) -> None:
    client = servers.main.client
    base_path = str(servers.testdata / "bad_half_plus_two")
    r = client.post(
        "/v2/repository/models/broken/load", json={"parameters": {"base_path": base_path}}
    )
    assert r.status_code == 503, r.text
    try:
        assert client.get("/v2/models/broken/ready").status_code == 503
        assert infer_status(servers, tensor(), "broken")[0] == 503
        assert client.get("/v2/health/ready").status_code == 503
        states = {m["name"]: m["state"] for m in servers.http.get_model_repository_index()}
        assert states["broken"] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException) as info:
            servers.grpc.infer("broken", [triton_input(triton_grpc, X)])
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        assert client.post("/v2/repository/models/broken/unload").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


# -- batching and KServe's clients ------------------------------------------------------


@pytest.mark.parametrize("frontend", ["http2", "grpcio"])
def test_batching_applies_to_v2(servers: Servers, frontend: str) -> None:
    server = servers.batching if frontend == "http2" else servers.batching_grpcio
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert client.is_model_ready("half_plus_two")
    assert client.get_model_metadata("half_plus_two").inputs[0].name == "x"
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.rest_port}", concurrency=8)
    done = threading.Semaphore(0)
    answers: list[object] = []

    def callback(result: object, error: object) -> None:
        answers.append(error or result)
        done.release()

    rows = np.array([[1.0]], dtype=np.float32)
    for _ in range(16):
        client.async_infer("half_plus_two", [triton_input(triton_grpc, rows)], callback)
    pending = [
        http.async_infer("half_plus_two", [triton_input(triton_http, rows)]) for _ in range(8)
    ]
    for result in [p.get_result() for p in pending]:
        np.testing.assert_allclose(result.as_numpy("y"), [[2.5]])
    for _ in range(16):
        assert done.acquire(timeout=30)
    for answer in answers:
        np.testing.assert_allclose(answer.as_numpy("y"), [[2.5]])  # type: ignore[attr-defined]
    stats = http.get_inference_statistics("half_plus_two")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 24
    assert stats["execution_count"] < 24  # requests shared model runs
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"])


def test_kserve_clients(servers: Servers) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "e2e" / "v2_kserve_check.py"),
            f"http://127.0.0.1:{servers.main.rest_port}",
            f"127.0.0.1:{servers.main.grpc_port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode == 77:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
