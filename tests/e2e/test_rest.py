"""The REST API end to end: the real command, real ports, an HTTP client, real SavedModels."""

from __future__ import annotations

import gzip
import json
import math
import pathlib
import shutil
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(
    testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("rest")
    # A copy of half_plus_two that tests may add versions to.
    live = tmp / "live"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", live)
    config = tmp / "models.config"
    config.write_text(
        f"""
model_config_list {{
  config {{ name: "default" base_path: "{testdata / "saved_model_half_plus_two_cpu"}"
           model_platform: "tensorflow" }}
  config {{ name: "tf2" base_path: "{testdata / "saved_model_half_plus_two_tf2_cpu"}" }}
  config {{ name: "half_plus_three" base_path: "{testdata / "saved_model_half_plus_three"}" }}
  config {{ name: "counter" base_path: "{testdata / "saved_model_counter"}" }}
  config {{ name: "matrix" base_path: "{testdata / "matrix_half_plus_two"}" }}
  config {{ name: "two" base_path: "{testdata / "saved_model_half_plus_two_2_versions"}"
           model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 123 }}
           version_labels {{ key: "canary" value: 124 }} }}
  config {{ name: "flowers" base_path: "{ROOT / "examples" / "flowers"}" }}
  config {{ name: "live" base_path: "{live}" }}
}}
"""
    )
    srv = RunningServer(
        [
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=1",
            "--load_retry_interval_micros=100000",
        ],
        tmp / "server.log",
    )
    srv.live_path = live  # type: ignore[attr-defined]
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


def post(server: RunningServer, path: str, body: object) -> tuple[int, dict]:
    r = server.client.post(path, content=json.dumps(body))
    return r.status_code, r.json()


# ----------------------------------------------------------------------------- predict


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_predict_row_format(server: RunningServer, model: str) -> None:
    status, body = post(server, f"/v1/models/{model}:predict", {"instances": [[2.0], [3.0], [4.0]]})
    assert status == 200, body
    assert body == {"predictions": [[3.0], [3.5], [4.0]]}


def test_predict_scalar_instances_like_tf_serving_docs(server: RunningServer) -> None:
    status, body = post(server, "/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]})
    assert status == 200, body
    assert body == {"predictions": [2.5, 3.0, 4.5]}


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_predict_columnar_format(server: RunningServer, model: str) -> None:
    status, body = post(server, f"/v1/models/{model}:predict", {"inputs": {"x": [[2.0], [3.0]]}})
    assert status == 200, body
    assert body == {"outputs": [[3.0], [3.5]]}
    status, body = post(server, f"/v1/models/{model}:predict", {"inputs": [[2.0], [3.0]]})
    assert status == 200, body
    assert body == {"outputs": [[3.0], [3.5]]}


def test_predict_whole_floats_keep_point_zero(server: RunningServer) -> None:
    r = server.client.post("/v1/models/default:predict", content=b'{"instances": [[2], [4]]}')
    assert r.status_code == 200
    assert r.content.replace(b" ", b"").replace(b"\n", b"") == b'{"predictions":[[3.0],[4.0]]}'


def test_predict_half_plus_three_tf1_graph(server: RunningServer) -> None:
    status, body = post(server, "/v1/models/half_plus_three:predict", {"instances": [[2.0], [3.0]]})
    assert status == 200, body
    assert body == {"predictions": [[4.0], [4.5]]}


def test_predict_counter_stateful_signatures(server: RunningServer) -> None:
    """The TF1 stateful counter: each incr_counter_by adds delta to the same variable."""
    url = "/v1/models/counter:predict"
    body = {"signature_name": "incr_counter_by", "inputs": {"delta": 2.0}}
    status, first = post(server, url, body)
    assert status == 200, first
    status, second = post(server, url, body)
    assert status == 200, second
    assert second["outputs"] == first["outputs"] + 2.0
    # As in TF Serving, a signature without inputs cannot be called over REST.
    status, error = post(server, url, {"signature_name": "get_counter", "inputs": {}})
    assert status == 400
    assert error == {"error": "Failed to get input map for signature: get_counter"}


def test_predict_matrix_model(server: RunningServer) -> None:
    x = [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]
    status, body = post(server, "/v1/models/matrix:predict", {"instances": x})
    assert status == 200, body
    assert body["predictions"] == [[[v / 2 + 2 for v in row] for row in x[0]]]


def test_predict_signature_name_and_versions_and_labels(server: RunningServer) -> None:
    for path in (
        "/v1/models/two/versions/123:predict",
        "/v1/models/two/labels/stable:predict",
        "/v1/models/two/labels/canary:predict",
        "/v1/models/two:predict",
    ):
        status, body = post(server, path, {"instances": [[2.0]]})
        assert status == 200, (path, body)
        assert body == {"predictions": [[3.0]]}


def test_predict_example_model_multiple_outputs(server: RunningServer) -> None:
    x = [[5.0, 3.4, 1.5, 0.25], [6.6, 3.0, 5.6, 2.0]]
    status, body = post(server, "/v1/models/flowers:predict", {"instances": x})
    assert status == 200, body
    preds = body["predictions"]
    assert [p["class_ids"] for p in preds] == [0, 2]
    assert all(math.isclose(sum(p["probabilities"]), 1.0, rel_tol=1e-4) for p in preds)
    assert abs(preds[1]["petal_area"] - 0.5 * 5.6 * 2.0) < 0.5


def test_gzip_request_body(server: RunningServer) -> None:
    r = server.client.post(
        "/v1/models/default:predict",
        content=gzip.compress(b'{"instances": [[2.0]]}'),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[3.0]]}


@pytest.mark.parametrize(
    ("encoding", "compress", "status"),
    [
        ("deflate", zlib.compress, 200),  # the zlib format (RFC 9110)
        ("deflate", lambda b: zlib.compress(b, wbits=-15), 200),  # raw deflate, as some send
        ("identity", lambda b: b, 200),
        ("utf-8", lambda b: b, 200),  # not a coding: ignored, as TF Serving ignores it
        ("br", lambda b: b, 400),
    ],
)
def test_deflate_request_bodies_and_unknown_encodings(
    server: RunningServer, encoding: str, compress: Any, status: int
) -> None:
    for path, body, answer in (
        ("/v1/models/default:predict", b'{"instances": [[2.0]]}', {"predictions": [[3.0]]}),
        (
            "/v2/models/default/infer",
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]}',
            None,
        ),
    ):
        r = server.client.post(path, content=compress(body), headers={"Content-Encoding": encoding})
        assert r.status_code == status, r.text
        if status != 200:
            assert r.json() == {
                "error": "Unsupported Content-Encoding: br (gzip and deflate are supported)"
            }
        elif answer is not None:
            assert r.json() == answer
        else:
            assert r.json()["outputs"][0]["data"] == [3.0]


# ----------------------------------------------------------------------------- classify/regress


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_classify_and_regress(server: RunningServer, model: str) -> None:
    status, body = post(
        server,
        f"/v1/models/{model}:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]},
    )
    assert status == 200, body
    assert body == {"results": [3.0, 4.0]}
    status, body = post(
        server,
        f"/v1/models/{model}:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
    )
    assert status == 200, body
    assert body["results"][0][0][1] == 3.0


def test_regress_with_context(server: RunningServer) -> None:
    status, body = post(
        server,
        "/v1/models/default:regress",
        {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}, {}]},
    )
    assert status == 200, body
    assert body == {"results": [3.0, 3.0]}


def test_example_model_classify_and_regress(server: RunningServer) -> None:
    example = {"sepal_length": 6.6, "sepal_width": 3.0, "petal_length": 5.6, "petal_width": 2.0}
    status, body = post(
        server, "/v1/models/flowers:classify", {"signature_name": "classify", "examples": [example]}
    )
    assert status == 200, body
    labels = [label for label, _score in body["results"][0]]
    assert labels == ["setosa", "versicolor", "virginica"]
    best = max(body["results"][0], key=lambda pair: pair[1])
    assert best[0] == "virginica"
    status, body = post(
        server, "/v1/models/flowers:regress", {"signature_name": "regress", "examples": [example]}
    )
    assert status == 200, body
    assert abs(body["results"][0] - 5.6) < 0.5


# ----------------------------------------------------------------------------- status and metadata


def test_model_status(server: RunningServer) -> None:
    r = server.client.get("/v1/models/default")
    assert r.status_code == 200
    assert r.json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    r = server.client.get("/v1/models/two/versions/124")
    assert [s["version"] for s in r.json()["model_version_status"]] == ["124"]
    r = server.client.get("/v1/models/two/labels/stable")  # labels list every version
    assert [s["version"] for s in r.json()["model_version_status"]] == ["123", "124"]
    r = server.client.get("/v1/models/two")
    assert [s["version"] for s in r.json()["model_version_status"]] == ["123", "124"]


def test_list_models_gives_every_model_with_its_version_states(server: RunningServer) -> None:
    for path in ("/v1/models", "/v1/models/", "/V1/Models"):
        r = server.client.get(path)
        assert r.status_code == 200, r.text
        models = r.json()["models"]
        names = [m["name"] for m in models]
        assert names == sorted(names)
        assert {"default", "tf2", "two", "flowers", "live"} <= set(names)
        by_name = {m.pop("name"): m for m in models}
        # Each entry is exactly what GET /v1/models/{name} answers for that model.
        for name in ("default", "two", "flowers"):
            assert by_name[name] == server.client.get(f"/v1/models/{name}").json()
        two = by_name["two"]["model_version_status"]
        assert [(v["version"], v["state"]) for v in two] == [
            ("123", "AVAILABLE"),
            ("124", "AVAILABLE"),
        ]
    r = server.client.post("/v1/models", content=b"{}")
    assert r.status_code == 400 and "Malformed request" in r.json()["error"]


def _float_info(name: str, dims: list[int]) -> dict:
    """A float TensorInfo in TF Serving's REST metadata form."""
    shape = {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
    return {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": name}


def test_metadata(server: RunningServer) -> None:
    # TF Serving's recorded answers are compared in test_tfserving_models.py
    r = server.client.get("/v1/models/default/metadata")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    assert list(body["metadata"]) == ["signature_def"]
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    assert signatures["serving_default"] == {
        "inputs": {"x": _float_info("x:0", [-1, 1])},
        "outputs": {"y": _float_info("y:0", [-1, 1])},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    assert signatures["classify_x_to_y"]["inputs"]["inputs"] == {
        "dtype": "DT_STRING",
        "tensor_shape": {"dim": [], "unknown_rank": True},
        "name": "tf_example:0",
    }
    assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"
    assert server.client.get("/v1/models/default/versions/123/metadata").json() == body


def test_metadata_two_versions(server: RunningServer) -> None:
    body = server.client.get("/v1/models/two/versions/124/metadata").json()
    assert body["model_spec"] == {"name": "two", "signature_name": "", "version": "124"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["classify_x2_to_y3"]["outputs"]["scores"] == _float_info("y3:0", [-1, 1])


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "payload", "status", "fragment"),
    [
        ("/v1/models/default:predict", b"{not json", 400, ""),
        ("/v1/models/default:predict", b"[1, 2]", 400, ""),
        ("/v1/models/default:predict", b'{"instances": [[1.0]], "inputs": [[1.0]]}', 400, ""),
        ("/v1/models/default:predict", b'{"signature_name": "serving_default"}', 400, ""),
        ("/v1/models/default:predict", b'{"instances": [[1.0], [1.0, 2.0]]}', 400, ""),
        ("/v1/models/default:predict", b'{"instances": [["a"]]}', 400, ""),
        (
            "/v1/models/default:predict",
            b'{"inputs": {"nope": [[1.0]]}}',
            400,
            "Missing named input: x",
        ),
        (
            "/v1/models/default:predict",
            b'{"signature_name": "zzz", "instances": [[1.0]]}',
            400,
            'Serving signature name: "zzz" not found in signature def',
        ),
        (
            "/v1/models/counter:predict",
            b'{"signature_name": "incr_counter_by", "instances": [{"delta": 1.5}]}',
            400,
            "",
        ),
        (
            "/v1/models/nope:predict",
            b'{"instances": [[1.0]]}',
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "/v1/models/default/versions/5:predict",
            b'{"instances": [[1.0]]}',
            404,
            "Servable not found for request: Specific(default, 5)",
        ),
        ("/v1/models/two/labels/beta:predict", b'{"instances": [[1.0]]}', 400, "beta"),
        ("/v1/models/default:frobnicate", b"{}", 400, "Malformed request"),
        ("/v1/models/default:regress", b'{"examples": "nope"}', 400, ""),
        # A string tensor of more dimensions than TensorFlow converts from NumPy (it
        # would crash the process), and one of as many as it converts.
        (
            "/v1/models/default:predict",
            b'{"signature_name": "classify_x_to_y", "inputs": '
            + b"[" * 33
            + b'"a"'
            + b"]" * 33
            + b"}",
            400,
            "Input 'inputs' is a string tensor of 33 dimensions; at most 32 are supported",
        ),
        (
            "/v1/models/default:predict",
            b'{"signature_name": "classify_x_to_y", "inputs": '
            + b"[" * 32
            + b'"a"'
            + b"]" * 32
            + b"}",
            400,
            "Expected serialized to be a scalar or vector",
        ),
    ],
)
def test_error_paths(
    server: RunningServer, path: str, payload: bytes, status: int, fragment: str
) -> None:
    r = server.client.post(path, content=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"], body
    assert fragment in body["error"]
    # The server keeps serving after every error.
    status_ok, ok = post(server, "/v1/models/default:predict", {"instances": [[2.0]]})
    assert status_ok == 200 and ok == {"predictions": [[3.0]]}


@pytest.mark.parametrize(
    ("method", "path", "status", "fragment"),
    [
        # Escapes in a model name or label are decoded after the route matched: the name
        # may hold "/" or ":" (TF Serving's routing).
        ("GET", "/v1/models/%64efault", 200, "AVAILABLE"),
        ("GET", "/v1/models/a%2Fb", 404, "Could not find any versions of model a/b"),
        ("GET", "/v1/models/default%3Apredict", 404, "versions of model default:predict"),
        ("POST", "/v1/models/default%3Apredict:predict", 404, "Latest(default:predict)"),
        ("POST", "/v1/models/two/labels/%73table:predict", 200, "predictions"),
        # Nowhere else: escaped versions, verbs and path segments do not route.
        ("GET", "/v1/models/two/versions/%31%32%33", 400, "Malformed request"),
        ("GET", "/v1/models/default/%6Detadata", 400, "Malformed request"),
        ("POST", "/v1/models/default%3apredict", 400, "Malformed request"),
        # Versions are ASCII digits.
        ("GET", "/v1/models/two/versions/%EF%BC%91%EF%BC%92%EF%BC%93", 400, "Malformed"),
        ("GET", "/v1/models/two/versions/%D9%A1%D9%A2%D9%A3", 400, "Malformed request"),
    ],
)
def test_paths_route_as_sent_and_names_are_decoded(
    server: RunningServer, method: str, path: str, status: int, fragment: str
) -> None:
    body = b'{"instances": [[1.0]]}' if method == "POST" else None
    r = server.client.request(method, path, content=body)
    assert r.status_code == status, r.text
    assert fragment in r.text


def test_status_of_unknown_model(server: RunningServer) -> None:
    r = server.client.get("/v1/models/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "Could not find any versions of model nope"}


def test_gzip_body_that_is_not_gzip(server: RunningServer) -> None:
    r = server.client.post(
        "/v1/models/default:predict", content=b"plain", headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 400
    assert "gzip" in r.json()["error"]


# ----------------------------------------------------------------------------- live repository


def test_corrupt_new_version_is_an_error_and_old_keeps_serving(
    server: RunningServer, testdata: pathlib.Path
) -> None:
    live: pathlib.Path = server.live_path  # type: ignore[attr-defined]
    shutil.copytree(testdata / "bad_half_plus_two" / "00000123", live / "00000200")
    deadline = time.monotonic() + 60
    versions: dict[str, dict] = {}
    while time.monotonic() < deadline:
        r = server.client.get("/v1/models/live")
        versions = {s["version"]: s for s in r.json()["model_version_status"]}
        if versions.get("200", {}).get("state") == "END":
            break
        time.sleep(0.2)
    bad = versions["200"]
    assert bad["state"] == "END"
    assert bad["status"]["error_code"] != "OK" and bad["status"]["error_message"]
    status, body = post(server, "/v1/models/live:predict", {"instances": [[2.0]]})
    assert status == 200 and body == {"predictions": [[3.0]]}
