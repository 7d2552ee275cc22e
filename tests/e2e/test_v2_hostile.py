"""Hostile input against the Open Inference Protocol endpoints of the real server: random
V2 inference bodies (JSON and binary tensor data with any header length), random paths and
repository calls under ``/v2``, random gRPC ``ModelInferRequest`` messages.

One server for the module serves ``half_plus_two`` with 1 MiB limits on REST bodies and gRPC
messages. Properties (hypothesis, bounded example counts, no deadlines): a client's mistake
is a 4xx with ``{"error": "..."}`` (REST) or a client-error status (gRPC), never a 5xx or
INTERNAL; a 200 is a well-formed V2 answer; the server keeps serving and exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserving.server.v2.protos import MESSAGES
from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

LIMIT = 1 << 20
MODEL = "half_plus_two"
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "UINT64", "FP16", "FP32", "FP64", "BYTES"]


@pytest.fixture(scope="module")
def server(testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("v2_hostile")
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", tmp / MODEL)
    srv = RunningServer(
        [
            f"--model_name={MODEL}",
            f"--model_base_path={tmp / MODEL}",
            f"--rest_api_max_body_bytes={LIMIT}",
            f"--grpc_channel_arguments=grpc.max_receive_message_length={LIMIT}",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    try:
        yield srv
        r = srv.client.post(
            f"/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [2]}]},
        )
        assert r.json()["outputs"][0]["data"] == [3.0]
    finally:
        assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log(), srv.log()


def assert_v2_answer(r: httpx.Response) -> None:
    """A 4xx with ``{"error": str}``, or a well-formed 200."""
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 200:
        body = r.json()
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return
    length = r.headers.get("inference-header-content-length")
    document = json.loads(r.content[: int(length)] if length else r.content)
    assert isinstance(document, (dict, list)), document


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=20,
)
shapes = st.one_of(
    st.lists(st.integers(min_value=-2, max_value=4), max_size=4),
    st.lists(st.sampled_from([0, 1, 2**31, 2**62, 2**64]), max_size=3),
    json_values,
)
parameters = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "binary_data_size": st.one_of(st.integers(-4, 64), json_values),
            "binary_data": st.one_of(st.booleans(), json_values),
            "signature_name": st.one_of(st.sampled_from(["serving_default", "nope"]), json_values),
            "binary_data_output": st.one_of(st.booleans(), json_values),
        },
    ),
    json_values,
)
data = st.one_of(
    st.lists(st.floats(width=32, allow_nan=False), max_size=6),
    st.lists(st.lists(st.integers(-300, 300), max_size=3), max_size=3),
    st.lists(st.text(max_size=4), max_size=3),
    json_values,
)
input_tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["x", "y", ""]), json_values),
        "datatype": st.one_of(st.sampled_from(DATATYPES), json_values),
        "shape": shapes,
        "data": data,
        "parameters": parameters,
    },
)
infer_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"inputs": st.one_of(st.lists(input_tensors, max_size=3), json_values)},
        optional={
            "id": st.one_of(st.text(max_size=8), json_values),
            "parameters": parameters,
            "outputs": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.one_of(st.sampled_from(["y", "x"]), json_values)},
                        optional={"parameters": parameters},
                    ),
                    max_size=2,
                ),
                json_values,
            ),
        },
    ),
)
versions = st.one_of(st.sampled_from(["", "123", "7", "stable"]), st.text(min_size=1, max_size=6))


def _segment(text: str) -> str:
    """``text`` as one URL path segment (percent-encoded; the server sees it decoded)."""
    return urllib.parse.quote(text, safe="") or "_"


@SETTINGS
@given(body=infer_bodies, version=versions)
def test_random_infer_bodies(server: RunningServer, body: Any, version: str) -> None:
    path = f"/v2/models/{MODEL}" + (f"/versions/{_segment(version)}" if version else "")
    r = server.client.post(path + "/infer", content=json.dumps(body).encode())
    assert_v2_answer(r)


@SETTINGS
@given(
    body=infer_bodies,
    tail=st.binary(max_size=64),
    declared=st.one_of(
        st.none(),
        st.integers(-2, 300),
        # A header value with blanks at either end is one no HTTP client sends.
        st.text(alphabet="0123456789abcx -+.", max_size=5).filter(lambda t: t == t.strip()),
    ),
    exact=st.booleans(),
)
def test_random_binary_bodies(
    server: RunningServer, body: Any, tail: bytes, declared: Any, exact: bool
) -> None:
    header = json.dumps(body).encode()
    length = str(len(header)) if exact else ("" if declared is None else str(declared))
    headers = {"Inference-Header-Content-Length": length} if length else {}
    r = server.client.post(f"/v2/models/{MODEL}/infer", content=header + tail, headers=headers)
    assert_v2_answer(r)


def test_well_formed_binary_request_of_random_values(server: RunningServer) -> None:
    values = np.random.default_rng(0).standard_normal((5, 1)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [5, 1],
                    "parameters": {"binary_data_size": 20},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = server.client.post(
        f"/v2/models/{MODEL}/infer",
        content=header + values.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    length = int(r.headers["inference-header-content-length"])
    np.testing.assert_allclose(
        np.frombuffer(r.content[length:], np.float32).reshape(5, 1), values * 0.5 + 2
    )


@SETTINGS
@given(
    method=st.sampled_from(["GET", "POST"]),
    name=st.one_of(st.sampled_from([MODEL, "other", "stats"]), st.text(min_size=1, max_size=8)),
    version=versions,
    action=st.sampled_from(["", "/ready", "/infer", "/stats", "/load", "/unload", "/x"]),
    prefix=st.sampled_from(["/v2/models/", "/v2/repository/models/", "/v2/", "/v2/repository/"]),
    body=json_values,
)
def test_random_v2_paths(
    server: RunningServer,
    method: str,
    name: str,
    version: str,
    action: str,
    prefix: str,
    body: Any,
) -> None:
    if action == "/unload" and name == MODEL:
        name = "other"  # the module's model stays loaded
    path = prefix + _segment(name)
    if version and prefix == "/v2/models/":
        path += f"/versions/{_segment(version)}"
    path += action
    content = json.dumps(body).encode() if method == "POST" else None
    assert_v2_answer(server.client.request(method, path, content=content))


@SETTINGS
@given(
    tensors=st.lists(
        st.tuples(
            st.sampled_from(["x", "y", ""]),
            st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5)),
            st.lists(st.integers(-2, 2**40), max_size=3),
            st.one_of(st.none(), st.binary(max_size=32)),
            st.lists(st.floats(width=32, allow_nan=False), max_size=4),
        ),
        max_size=3,
    ),
    raw_extra=st.integers(0, 2),
    outputs=st.lists(st.sampled_from(["y", "x", "nope"]), max_size=2),
    version=versions,
)
def test_random_model_infer_messages(
    server: RunningServer,
    tensors: list[tuple[str, str, list[int], bytes | None, list[float]]],
    raw_extra: int,
    outputs: list[str],
    version: str,
) -> None:
    request = MESSAGES["ModelInferRequest"](model_name=MODEL, model_version=version)
    raw = any(t[3] is not None for t in tensors)
    for name, datatype, shape, content, floats in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(content or b"")
        else:
            tensor.contents.fp32_contents.extend(floats)
    for _ in range(raw_extra if raw else 0):
        request.raw_input_contents.append(b"\0")
    for name in outputs:
        request.outputs.add(name=name)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=MESSAGES["ModelInferResponse"].FromString,
        )
        try:
            response = call(request, timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
        else:
            assert response.model_name == MODEL
