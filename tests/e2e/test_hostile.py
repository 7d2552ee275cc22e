"""Hostile input against the real server: random JSON bodies and TensorProtos, oversized and
compressed bodies, names built to escape the model repository.

One server for the module (REST and gRPC on loopback) serves ``half_plus_two`` (TF Serving's
``saved_model_half_plus_two_cpu``) from a repository directory; next to that directory, outside
it, lies another SavedModel (``outside``) that no request may reach. The server runs with a
1 MiB limit on REST bodies and on gRPC messages so the limits can be tested cheaply.

Properties (hypothesis, bounded example counts, no deadlines): a client's mistake is answered
with a 4xx (REST) or a client-error status (gRPC), never a 5xx/INTERNAL; the server never
crashes or hangs (every request has a timeout, and the server answers a normal request and
exits 0 on SIGTERM at the end). Bodies include raw bytes that are not UTF-8 inside JSON
strings and keys; gRPC messages whose string fields are not UTF-8 cannot be decoded and get
gRPC's answer for that, INTERNAL naming the bad UTF-8.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

LIMIT = 1 << 20
MODEL = "half_plus_two"
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: What a client mistake may be answered with over gRPC.
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass
class Env:
    server: RunningServer
    repo: pathlib.Path
    outside: pathlib.Path
    channel: grpc.Channel

    @property
    def predict_stub(self) -> Any:
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @property
    def model_stub(self) -> Any:
        return model_service_pb2_grpc.ModelServiceStub(self.channel)

    def healthy(self) -> bool:
        r = self.server.client.post(
            f"/v1/models/{MODEL}:predict", content=b'{"instances": [[2.0]]}'
        )
        return self.server.process.poll() is None and r.json() == {"predictions": [[3.0]]}


@pytest.fixture(scope="module")
def env(testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("hostile")
    repo = tmp / "models"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", repo / MODEL)
    outside = tmp / "outside"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", outside)
    srv = RunningServer(
        [
            f"--model_name={MODEL}",
            f"--model_base_path={repo / MODEL}",
            f"--rest_api_max_body_bytes={LIMIT}",
            f"--grpc_channel_arguments=grpc.max_receive_message_length={LIMIT}",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    channel = grpc.insecure_channel(
        f"localhost:{srv.grpc_port}", options=[("grpc.max_send_message_length", -1)]
    )
    env = Env(srv, repo, outside, channel)
    try:
        yield env
        assert env.healthy()
    finally:
        channel.close()
        assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log(), srv.log()


def assert_client_error_or_ok(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    if r.status_code != 200:
        assert set(body) == {"error"} and isinstance(body["error"], str), body


# ---------------------------------------------------------------------------- REST bodies

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.fixed_dictionaries({"b64": st.text(max_size=12)}),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
float_rows = st.lists(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=3),
    max_size=4,
)
signature_names = st.one_of(
    st.sampled_from(
        ["", "serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x2_to_y3", "nope"]
    ),
    st.text(max_size=16),
    json_values,
)
request_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"instances": st.one_of(float_rows, json_values)},
        optional={"signature_name": signature_names, "inputs": json_values},
    ),
    st.fixed_dictionaries(
        {"inputs": st.one_of(float_rows, st.fixed_dictionaries({"x": float_rows}), json_values)},
        optional={"signature_name": signature_names},
    ),
    st.fixed_dictionaries(
        {"examples": st.one_of(st.lists(st.dictionaries(st.text(max_size=4), json_values)))},
        optional={"signature_name": signature_names, "context": json_values},
    ),
)


@SETTINGS
@given(
    body=request_bodies,
    verb=st.sampled_from(["predict", "classify", "regress"]),
    ascii_only=st.booleans(),
    compress=st.booleans(),
)
def test_random_json_bodies_get_answers_never_server_errors(
    env: Env, body: Any, verb: str, ascii_only: bool, compress: bool
) -> None:
    text = json.dumps(body, allow_nan=True, ensure_ascii=ascii_only)
    payload = text.encode("utf-8", "surrogatepass")  # lone surrogates make invalid UTF-8
    headers = {}
    if compress:
        payload = gzip.compress(payload)
        headers["Content-Encoding"] = "gzip"
    r = env.server.client.post(f"/v1/models/{MODEL}:{verb}", content=payload, headers=headers)
    assert_client_error_or_ok(r)


@SETTINGS
@given(
    payload=st.one_of(
        st.binary(max_size=200),
        st.text(alphabet='[]{}":,0123456789.eE+-tfnaulsrNIiy \\', max_size=60).map(str.encode),
    ),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "GZIP", ""]),
)
def test_random_bytes_get_answers_never_server_errors(
    env: Env, payload: bytes, encoding: str | None
) -> None:
    headers = {} if encoding is None else {"Content-Encoding": encoding}
    r = env.server.client.post(f"/v1/models/{MODEL}:predict", content=payload, headers=headers)
    assert_client_error_or_ok(r)


# Raw bytes inside JSON strings and keys, as a fuzzer mutating valid bodies leaves them: bytes
# that are not UTF-8 (lone continuation bytes, overlong and surrogate encodings, truncated
# sequences), escapes of lone surrogates, and anything else.
RAW = "\ue000"  # stands for raw bytes until the body is serialized
raw_bytes = st.one_of(
    st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=4).map(bytes),
    st.sampled_from(
        [
            b"\x8d",
            b"\xff\xfe",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xed\xb2\x8d",
            b"\xf4\x90\x80\x80",
            b"\xe2\x82",
            b"\xef\xbb\xbf",
            b"\\udc8d",
            b"\\ud800",
            b"\\ud83d\\ude00",
            "é".encode(),
        ]
    ),
    st.binary(min_size=1, max_size=3),
)
plain_text = st.text(alphabet=st.characters(blacklist_characters=RAW + "\\"), max_size=4)
raw_strings = st.lists(st.one_of(plain_text, st.just(RAW)), min_size=1, max_size=3).map("".join)
raw_keys = st.one_of(st.sampled_from(["x", "y", "inputs", "b64"]), raw_strings)
raw_leaves = st.one_of(
    st.floats(width=32, allow_nan=False),
    st.integers(-5, 5),
    raw_strings,
    st.fixed_dictionaries({"b64": raw_strings}),
)
raw_signatures = st.one_of(
    st.sampled_from(["", "serving_default", "classify_x_to_y", "regress_x_to_y"]), raw_strings
)
raw_predict_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "instances": st.lists(
                st.one_of(
                    st.lists(raw_leaves, min_size=1, max_size=2),
                    raw_leaves,
                    st.dictionaries(raw_keys, st.lists(raw_leaves, max_size=2), max_size=2),
                ),
                min_size=1,
                max_size=3,
            )
        },
        optional={"signature_name": raw_signatures},
    ),
    st.fixed_dictionaries(
        {
            "inputs": st.one_of(
                st.dictionaries(raw_keys, st.lists(raw_leaves, max_size=2), max_size=2),
                st.lists(raw_leaves, max_size=3),
            )
        },
        optional={"signature_name": raw_signatures},
    ),
)
raw_examples = st.dictionaries(
    raw_keys, st.one_of(raw_leaves, st.lists(raw_leaves, max_size=3)), max_size=3
)
raw_example_bodies = st.fixed_dictionaries(
    {"examples": st.lists(raw_examples, min_size=1, max_size=3)},
    optional={"context": raw_examples, "signature_name": raw_signatures},
)


@st.composite
def bodies_with_raw_bytes(draw: st.DrawFn, verb: str) -> bytes:
    """A JSON body for ``verb`` whose strings and keys hold raw bytes."""
    body = draw(raw_predict_bodies if verb == "predict" else raw_example_bodies)
    ascii_only = draw(st.booleans())
    # (lone surrogates from the text strategy become more bytes that are not UTF-8)
    text = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    parts = text.split(b"\\ue000" if ascii_only else RAW.encode())
    fills = draw(st.lists(raw_bytes, min_size=len(parts) - 1, max_size=len(parts) - 1))
    out = parts[0]
    for fill, part in zip(fills, parts[1:], strict=True):
        out += fill + part
    return out


@SETTINGS
@given(data=st.data(), verb=st.sampled_from(["predict", "classify", "regress"]))
def test_raw_bytes_in_json_strings_and_keys_are_never_server_errors(
    env: Env, data: st.DataObject, verb: str
) -> None:
    """Feature names, input names, signature names, string values and base64 text holding
    bytes that are not UTF-8: a 4xx naming the problem or an answer, never a 5xx."""
    payload = data.draw(bodies_with_raw_bytes(verb))
    r = env.server.client.post(f"/v1/models/{MODEL}:{verb}", content=payload)
    assert_client_error_or_ok(r)


@pytest.mark.parametrize("verb", ["classify", "regress"])
@pytest.mark.parametrize(
    "body",
    [
        b'{"examples": [{"\x8d": 2.0}]}',
        b'{"examples": [{"x": 2.0, "\xff\xfe": [1, 2]}]}',
        b'{"context": {"\xed\xa0\x80": "a"}, "examples": [{"x": 2.0}]}',
        b'{"examples": [{"\\udc8d": 2.0}]}',
    ],
    ids=["continuation-byte", "invalid-bytes", "surrogate-bytes", "lone-surrogate-escape"],
)
def test_feature_names_that_are_not_utf8_are_400(env: Env, verb: str, body: bytes) -> None:
    """A tf.Example feature name must be a string: a 400 naming the bad encoding (this was a
    500 'Internal error: UnicodeEncodeError')."""
    r = env.server.client.post(f"/v1/models/{MODEL}:{verb}", content=body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert message.startswith("Feature: \\x") and message.endswith(
        "has a name that is not valid UTF-8 (invalid encoding in string)"
    ), message


@pytest.mark.parametrize("value", [b"\xff", b"\xff\xfe\x8d", b"\xed\xa0\x80"], ids=range(3))
def test_model_errors_quoting_bytes_that_are_not_utf8(env: Env, value: bytes) -> None:
    """A string that is not a tf.Example fed to a signature parsing one: TensorFlow's error
    quotes the bytes, and as they are not UTF-8 it raises UnicodeDecodeError instead of its
    error (this was a 500). A 400 / INVALID_ARGUMENT with the bytes written as \\xNN."""
    body = b'{"signature_name": "classify_x_to_y", "instances": ["' + value + b'"]}'
    r = env.server.client.post(f"/v1/models/{MODEL}:predict", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("Could not parse example input, value: '\\x")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify_x_to_y"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([value], dtype=tf.string))
    with pytest.raises(grpc.RpcError) as info:
        env.predict_stub.Predict(request, timeout=30)
    error: Any = info.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith("Could not parse example input, value: '\\x")


@pytest.mark.parametrize(
    "document",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"instances": ' + b"[" * 5000 + b"1.0" + b"]" * 5000 + b"}",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"instances": [[NaN], [Infinity], [-Infinity]]}',
        b'{"instances": [[1e400]]}',
        b'{"instances": [[' + b"9" * 5000 + b"]]}",
        b'{"instances": [["\xff\xfe"]]}',
        b'{"instances": [[1.0]], "signature_name": "\\ud800"}',
        b'{"instances": [' + b"[1.0]," * 100_000 + b"[1.0]]}",
    ],
    ids=[
        "deep-list",
        "deep-instances",
        "deep-object",
        "non-finite",
        "overflow",
        "long-number",
        "bad-utf8",
        "lone-surrogate",
        "many-rows",
    ],
)
def test_extreme_documents(env: Env, document: bytes) -> None:
    r = env.server.client.post(f"/v1/models/{MODEL}:predict", content=document)
    assert_client_error_or_ok(r)


# ---------------------------------------------------------------------------- size limits


def test_body_over_the_limit_is_413(env: Env) -> None:
    body = b'{"instances": [' + b"[1.0]," * (LIMIT // 6) + b"[1.0]]}"
    assert len(body) > LIMIT
    r = env.server.client.post(f"/v1/models/{MODEL}:predict", content=body)
    assert r.status_code == 413
    assert r.json() == {
        "error": f"Request body exceeds the limit of {LIMIT} bytes (--rest_api_max_body_bytes)"
    }

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as it streams
        for _ in range(4):
            yield b" " * (LIMIT // 2)

    r = env.server.client.post(f"/v1/models/{MODEL}:predict", content=chunks())
    assert r.status_code == 413
    assert env.healthy()  # the same keep-alive connection serves on


def test_gzip_bomb_is_413(env: Env) -> None:
    bomb = gzip.compress(b" " * (64 << 20), compresslevel=1)
    assert len(bomb) < LIMIT
    r = env.server.client.post(
        f"/v1/models/{MODEL}:predict", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 413
    assert r.json() == {
        "error": f"Decompressed request body exceeds the limit of {LIMIT} bytes "
        "(--rest_api_max_body_bytes)"
    }


def test_grpc_message_over_the_limit_is_refused_by_grpc(env: Env) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((LIMIT // 4 + 1, 1), np.float32)))
    with pytest.raises(grpc.RpcError) as info:
        env.predict_stub.Predict(request, timeout=30)
    error: Any = info.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"Received message larger than max ({request.ByteSize()} vs. {LIMIT})" in (
        error.details()
    )


def test_tiny_grpc_request_for_a_huge_tensor_is_refused(env: Env) -> None:
    """One float value and the shape [2^40, 1]: TF's fill rule would make it 4 TiB."""
    for dtype, field in ((types_pb2.DT_FLOAT, "float_val"), (types_pb2.DT_STRING, "string_val")):
        proto = tensor_pb2.TensorProto(dtype=dtype)
        proto.tensor_shape.dim.add(size=2**40)
        proto.tensor_shape.dim.add(size=1)
        getattr(proto, field).append(b"x" if dtype == types_pb2.DT_STRING else 1.0)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["x"].CopyFrom(proto)
        with pytest.raises(grpc.RpcError) as info:
            env.predict_stub.Predict(request, timeout=30)
        error: Any = info.value
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "tensor parsing error: x"
    assert env.healthy()


# ---------------------------------------------------------------------------- gRPC tensors


@st.composite
def tensor_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    known = [v for v in types_pb2.DataType.values() if v != types_pb2.DT_INVALID]
    dtype = draw(st.one_of(st.sampled_from(known), st.integers(min_value=0, max_value=300)))
    proto = tensor_pb2.TensorProto(dtype=dtype)
    if draw(st.booleans()):
        proto.tensor_shape.unknown_rank = draw(st.booleans())
    dims = draw(
        st.lists(st.one_of(st.integers(-2, 4), st.integers(-(2**63), 2**63 - 1)), max_size=4)
    )
    for size in dims:
        proto.tensor_shape.dim.add(size=size, name=draw(st.text(max_size=3)))
    fill = draw(st.sampled_from(["content", "typed", "none"]))
    if fill == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    elif fill == "typed":
        field = draw(
            st.sampled_from(
                [
                    "float_val",
                    "double_val",
                    "int_val",
                    "int64_val",
                    "bool_val",
                    "string_val",
                    "half_val",
                    "scomplex_val",
                    "dcomplex_val",
                    "uint32_val",
                    "uint64_val",
                ]
            )
        )
        values = {
            "float_val": st.floats(allow_nan=True, allow_infinity=True, width=32),
            "double_val": st.floats(allow_nan=True, allow_infinity=True),
            "scomplex_val": st.floats(width=32),
            "dcomplex_val": st.floats(),
            "int_val": st.integers(-(2**31), 2**31 - 1),
            "half_val": st.integers(-(2**31), 2**31 - 1),
            "int64_val": st.integers(-(2**63), 2**63 - 1),
            "bool_val": st.booleans(),
            "string_val": st.binary(max_size=16),
            "uint32_val": st.integers(0, 2**32 - 1),
            "uint64_val": st.integers(0, 2**64 - 1),
        }[field]
        getattr(proto, field).extend(draw(st.lists(values, max_size=8)))
    proto.version_number = draw(st.integers(0, 3))
    return proto


@SETTINGS
@given(
    inputs=st.dictionaries(
        st.one_of(st.just("x"), st.text(max_size=8)), tensor_protos(), max_size=3
    ),
    name=st.one_of(st.just(MODEL), st.text(max_size=12)),
    signature=st.one_of(
        st.sampled_from(["", "serving_default", "classify_x_to_y"]), st.text(max_size=8)
    ),
    version=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    output_filter=st.lists(st.one_of(st.just("y"), st.text(max_size=4)), max_size=2),
)
def test_random_tensor_protos_get_client_errors_never_internal(
    env: Env,
    inputs: dict[str, tensor_pb2.TensorProto],
    name: str,
    signature: str,
    version: int | None,
    output_filter: list[str],
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.output_filter.extend(output_filter)
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    try:
        env.predict_stub.Predict(request, timeout=30)
    except grpc.RpcError as exc:
        error: Any = exc
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details())


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@SETTINGS
@given(
    field=st.sampled_from(["name", "signature", "input", "output_filter", "feature"]),
    raw=st.one_of(
        st.binary(min_size=4, max_size=4),
        st.sampled_from([b"\xff\xfe\x8d\x80", b"\xed\xa0\x80a", b"\xc0\xafab", "éé".encode()]),
    ),
)
def test_grpc_string_fields_that_are_not_utf8(env: Env, field: str, raw: bytes) -> None:
    """proto3 string fields (model and signature names, input keys, output filters, feature
    names of tf.Examples) holding bytes that are not UTF-8: the message cannot be decoded,
    which gRPC answers with INTERNAL (as grpc's C++ server under TF Serving does), naming the
    bad UTF-8. Valid bytes there get an answer or a client error."""
    placeholder = "QQQQ"
    request: Any
    if field == "feature":
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = "classify_x_to_y"
        example = request.input.example_list.examples.add()
        example.features.feature[placeholder].float_list.value.append(2.0)
        method = "Classify"
    else:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = placeholder if field == "name" else MODEL
        if field == "signature":
            request.model_spec.signature_name = placeholder
        if field == "output_filter":
            request.output_filter.append(placeholder)
        key = placeholder if field == "input" else "x"
        request.inputs[key].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        method = "Predict"
    payload = request.SerializeToString().replace(placeholder.encode(), raw)
    call = env.channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")
    try:
        call(payload, timeout=30)
    except grpc.RpcError as exc:
        error: Any = exc
        if _is_utf8(raw):
            assert error.code() in CLIENT_ERRORS, (error.code(), error.details())
        else:
            assert error.code() is grpc.StatusCode.INTERNAL, (error.code(), error.details())
            assert "bad UTF-8" in error.details(), error.details()
    else:
        assert _is_utf8(raw)


# ---------------------------------------------------------------------------- names and paths


def raw_request(env: Env, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send one request line byte for byte (no client-side normalization of the path)."""
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", env.server.rest_port), timeout=30) as s:
        s.sendall(request)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


ESCAPES = [
    "..",
    "%2e%2e",
    "%2E%2E",
    "..%2F..%2Foutside",
    "%2e%2e%2foutside",
    "..%2Foutside",
    "..%5C..%5Coutside",
    "%2F..%2F..%2Fetc%2Fpasswd",
    "....%2F%2F....%2F%2Foutside",
    "outside%00",
    "%00",
    "half_plus_two%00..%2F..%2Foutside",
    "%252e%252e%252foutside",
    "%c0%ae%c0%ae%2foutside",
    "a" * 8000,
]


@pytest.mark.parametrize("name", ESCAPES, ids=range(len(ESCAPES)))
def test_names_cannot_escape_the_model_repository(env: Env, name: str) -> None:
    """Model names in URLs that try to walk out of the repository towards ``outside`` (a
    real SavedModel next to it) are 4xx, whether they predict, read status or metadata, or
    use a version or label."""
    body = b'{"instances": [[2.0]]}'
    targets = [
        ("POST", f"/v1/models/{name}:predict", body),
        ("GET", f"/v1/models/{name}", b""),
        ("GET", f"/v1/models/{name}/metadata", b""),
        ("GET", f"/v1/models/{name}/versions/1", b""),
        ("POST", f"/v1/models/{MODEL}/labels/{name}:predict", body),
        ("POST", f"/v1/models/{MODEL}/versions/{name}:predict", body),
        ("POST", f"/v1/models/{name}/../{MODEL}:predict", body),
    ]
    for method, target, payload in targets:
        status, answer = raw_request(env, method, target, payload)
        assert 400 <= status < 500, (target, status, answer)
        assert b"predictions" not in answer


@SETTINGS
@given(
    name=st.text(min_size=1, max_size=40),
    label=st.one_of(st.none(), st.text(min_size=1, max_size=10)),
    version=st.one_of(st.none(), st.text(min_size=1, max_size=25)),
)
def test_random_names_labels_and_versions_are_4xx(
    env: Env, name: str, label: str | None, version: str | None
) -> None:
    # The HTTP client removes "." and ".." path segments before sending (RFC 3986), so
    # such names would reach the server as another URL; test_names_cannot_escape_the_model_
    # repository sends them raw.
    assume(not {name, label, version} & {".", ".."})
    quoted = urllib.parse.quote(name, safe="")
    target = f"/v1/models/{quoted}"
    if version is not None:
        target += f"/versions/{urllib.parse.quote(version, safe='')}"
    elif label is not None:
        target += f"/labels/{urllib.parse.quote(label, safe='')}"
    for method, suffix in (("GET", ""), ("GET", "/metadata"), ("POST", ":predict")):
        r = env.server.client.request(
            method, target + suffix, content=b'{"instances": [[2.0]]}' if method == "POST" else None
        )
        if name == MODEL and r.status_code == 200:
            continue
        assert 400 <= r.status_code < 500, (target, r.status_code, r.text)


@pytest.mark.parametrize(
    "name", ["../outside", "../../etc/passwd", "/etc", "\0", "a" * 5000], ids=range(5)
)
def test_grpc_names_cannot_escape_the_model_repository(env: Env, name: str) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
    for call, message in (
        (env.predict_stub.Predict, request),
        (
            env.predict_stub.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=request.model_spec, metadata_field=["signature_def"]
            ),
        ),
        (
            env.model_stub.GetModelStatus,
            get_model_status_pb2.GetModelStatusRequest(model_spec=request.model_spec),
        ),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(message, timeout=30)
        error: Any = info.value
        assert error.code() is grpc.StatusCode.NOT_FOUND, error.details()
