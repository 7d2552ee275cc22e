"""pyserving's HTTP/2 gRPC front end at the level of frames, and what only it decides.

The official stubs cover the services (``tests/e2e/test_grpc.py`` runs every gRPC test on
this front end too); here a raw socket sends the frames a stub never would (a bad preface,
tiny windows, CONTINUATION, resets, too many streams, a shutdown mid-request) and checks the
server's frames and that it keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import grpc
import hpack
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.core.clock import ManualClock
from pyserving.server.call_costs import PROBE_AFTER, PROBE_AFTER_MAX, CallCosts
from pyserving.server.core import ServerCore
from pyserving.server.grpc import GrpcServerOptions, start_grpc_server, uses_grpcio
from pyserving.server.grpc.h2 import (
    GrpcHandler,
    H2GrpcServer,
    parse_timeout,
    start_h2_grpc_server,
    status_trailers,
)
from pyserving.server.http2 import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Http2Connection,
    Http2Settings,
    frame,
)
from pyserving.server.service import ModelServing

TIMEOUT = 30.0
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def serve(serving: ModelServing, **options: Any) -> H2GrpcServer:
    server = start_grpc_server(serving, GrpcServerOptions(port=0, **options))
    assert isinstance(server, H2GrpcServer)
    return server


@pytest.fixture(scope="module")
def server(core: ServerCore) -> Iterator[H2GrpcServer]:
    with serve(ModelServing(core), enable_health=True) as s:
        yield s


def predict_message(values: list[float], name: str = "half_plus_two") -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    array = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=array.tobytes())
    tensor.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        )
    )
    request.inputs["x"].CopyFrom(tensor)
    data = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


class RawClient:
    """A blocking HTTP/2 client on a socket: send frames, read frames."""

    def __init__(self, port: int, settings: bytes = b"", preface: bytes = PREFACE) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""
        self.last_headers: dict[str, str] = {}
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.sock.sendall(preface + frame(SETTINGS, 0, 0, settings))

    def close(self) -> None:
        self.sock.close()

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def headers_block(
        self,
        path: str = PREDICT,
        content_type: str = "application/grpc",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", content_type),
                ("te", "trailers"),
                *extra,
            ]
        )

    def read_frame(self) -> tuple[int, int, int, bytes] | None:
        """The next frame, or None when the server closed the connection. Every header
        block is decoded as it arrives (the server's answers use HPACK's dynamic table, so
        blocks must be decoded in order): the last one is in ``last_headers``."""
        while len(self.buffer) < 9 or len(self.buffer) < 9 + _length(self.buffer):
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
        length = _length(self.buffer)
        kind, flags = self.buffer[3], self.buffer[4]
        stream = struct.unpack(">I", self.buffer[5:9])[0] & 0x7FFFFFFF
        payload = self.buffer[9 : 9 + length]
        self.buffer = self.buffer[9 + length :]
        if kind == HEADERS:
            assert flags & END_HEADERS, "the server's header blocks fit in one frame"
            self.last_headers = dict(self.decoder.decode(payload, raw=False))
        return kind, flags, stream, payload

    def answer(self, stream_id: int) -> tuple[dict[str, str], bytes, dict[str, str], list[int]]:
        """Read until ``stream_id`` ends: its headers, DATA bytes, trailers and DATA frame
        sizes (a reset stream raises). SETTINGS are acknowledged on the way."""
        headers: dict[str, str] = {}
        trailers: dict[str, str] = {}
        data = b""
        sizes: list[int] = []
        while True:
            got = self.read_frame()
            assert got is not None, "connection closed before the answer ended"
            kind, flags, stream, payload = got
            if kind == SETTINGS and not flags & 1:
                self.send(frame(SETTINGS, 1, 0))
            if stream != stream_id:
                continue
            if kind == RST_STREAM:
                raise AssertionError(f"stream reset: {struct.unpack('>I', payload)[0]}")
            if kind == HEADERS:
                block = self.last_headers
                if headers:
                    trailers = block
                else:
                    headers = block
                    if flags & END_STREAM:
                        trailers = block
            elif kind == DATA:
                data += payload
                sizes.append(len(payload))
            if flags & END_STREAM:
                return headers, data, trailers, sizes


def _length(buffer: bytes) -> int:
    return int.from_bytes(buffer[:3], "big")


def _answer_values(data: bytes) -> list[float]:
    response = predict_pb2.PredictResponse()
    response.ParseFromString(data[5:])
    return list(response.outputs["y"].float_val)


@pytest.fixture
def client(server: H2GrpcServer) -> Iterator[RawClient]:
    """A client with 16 MiB windows (the connection's and each stream's)."""
    c = RawClient(server.port, settings=struct.pack(">HI", 0x4, 1 << 24))
    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", (1 << 24) - 65535)))
    yield c
    c.close()


def data_frames(stream_id: int, body: bytes, size: int = 16384) -> list[bytes]:
    """``body`` as DATA frames of at most ``size`` bytes (the server's frame size limit),
    the last one ending the stream."""
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    last = len(chunks) - 1
    return [frame(DATA, END_STREAM if i == last else 0, stream_id, c) for i, c in enumerate(chunks)]


def call(client: RawClient, stream_id: int, message: bytes, path: str = PREDICT) -> Any:
    client.send(
        frame(HEADERS, END_HEADERS, stream_id, client.headers_block(path)),
        *data_frames(stream_id, message),
    )
    return client.answer(stream_id)


# ---------------------------------------------------------------------------- frames


def test_a_raw_call_is_answered_with_headers_data_and_trailers(client: RawClient) -> None:
    headers, data, trailers, _ = call(client, 1, predict_message([1.0, 2.0]))
    assert headers[":status"] == "200"
    assert headers["content-type"] == "application/grpc"
    assert trailers["grpc-status"] == "0"
    assert _answer_values(data) == [2.5, 3.0]


def test_bad_preface_ends_the_connection_with_a_protocol_error(server: H2GrpcServer) -> None:
    c = RawClient(server.port, preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 8)
    try:
        frames = []
        while (got := c.read_frame()) is not None:
            frames.append(got)
        goaway = [payload for kind, _, _, payload in frames if kind == GOAWAY]
        assert goaway, frames
        assert struct.unpack(">II", goaway[0][:8])[1] == 1  # PROTOCOL_ERROR
        assert b"preface" in goaway[0][8:]  # the debug text is inside the frame
    finally:
        c.close()
    # The server keeps serving.
    other = RawClient(server.port)
    try:
        assert call(other, 1, predict_message([2.0]))[2]["grpc-status"] == "0"
    finally:
        other.close()


class NoCalls:
    """A stream handler for connection-level tests: no request may arrive."""

    def request_received(self, connection: Http2Connection, stream: Any) -> None:
        raise AssertionError("no request expected")

    def body_received(self, connection: Http2Connection, stream: Any) -> bool:
        raise AssertionError("no body expected")

    def request_rejected(self, connection: Http2Connection, stream: Any, *args: Any) -> None:
        raise AssertionError("no request expected")


def test_a_connection_without_preface_is_closed_in_time() -> None:
    settings = Http2Settings(preface_timeout_seconds=0.2)

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Http2Connection(NoCalls(), settings), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Until EOF: without the preface timeout this waits for TIMEOUT and fails.
        received = await asyncio.wait_for(reader.read(), timeout=TIMEOUT)
        writer.close()
        server.close()
        await server.wait_closed()
        return received

    received = asyncio.run(scenario())
    assert received[3] == SETTINGS  # the server's SETTINGS, then the close


def wait_for_ping_ack(client: RawClient, payload: bytes) -> None:
    """Send a PING and read until the server acknowledges it with the same payload."""
    client.send(frame(PING, 0, 0, payload))
    while True:
        got = client.read_frame()
        assert got is not None, "connection closed before the PING was acknowledged"
        kind, flags, _, data = got
        if kind == PING:
            assert flags & 1 and data == payload
            return


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_ping_is_acknowledged_with_its_payload(client: RawClient) -> None:
    wait_for_ping_ack(client, b"12345678")


def test_an_answer_waits_for_the_clients_window(server: H2GrpcServer) -> None:
    """A client that allows 10 bytes per stream gets 10, then the rest after WINDOW_UPDATE,
    then the trailers."""
    c = RawClient(server.port, settings=struct.pack(">HI", 0x4, 10))
    try:
        c.send(
            frame(HEADERS, END_HEADERS, 1, c.headers_block()),
            frame(DATA, END_STREAM, 1, predict_message([1.0] * 100)),
        )
        received = 0
        while received < 10:
            got = c.read_frame()
            assert got is not None
            kind, flags, stream, payload = got
            if kind == SETTINGS and not flags & 1:
                c.send(frame(SETTINGS, 1, 0))
            if stream == 1 and kind == DATA:
                received += len(payload)
            assert not (stream == 1 and kind == HEADERS and flags & END_STREAM), "ended early"
        assert received == 10
        c.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20)))
        _, rest, trailers, _ = c.answer(1)
        assert trailers["grpc-status"] == "0"
        assert len(rest) > 400  # 100 floats and the message around them
    finally:
        c.close()


def test_data_frames_respect_the_clients_max_frame_size(client: RawClient) -> None:
    _, data, trailers, sizes = call(client, 1, predict_message([1.0] * 20_000))
    assert trailers["grpc-status"] == "0"
    assert max(sizes) <= 16384 and len(sizes) > 1  # the default SETTINGS_MAX_FRAME_SIZE
    assert _answer_values(data)[:2] == [2.5, 2.5]


def test_headers_split_into_continuation_frames(client: RawClient) -> None:
    block = client.headers_block()
    client.send(
        frame(HEADERS, 0, 1, block[:5]),
        frame(CONTINUATION, 0, 1, block[5:9]),
        frame(CONTINUATION, END_HEADERS, 1, block[9:]),
        frame(DATA, END_STREAM, 1, predict_message([4.0])),
    )
    _, data, trailers, _ = client.answer(1)
    assert trailers["grpc-status"] == "0"
    assert _answer_values(data) == [4.0]


def test_header_blocks_follow_the_clients_dynamic_table(client: RawClient) -> None:
    """Repeated, indexed and re-sized header blocks each reach the right method (decoded
    blocks are reused only while the dynamic table is unchanged)."""
    metadata = "/tensorflow.serving.PredictionService/GetModelMetadata"
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    data = request.SerializeToString()
    metadata_message = b"\x00" + struct.pack(">I", len(data)) + data
    stream_id = 1
    for round_ in range(3):
        if round_ == 2:
            client.encoder.header_table_size = 0  # the next block starts with a size update
        for path, message in [(PREDICT, predict_message([2.0])), (metadata, metadata_message)] * 2:
            _, body, trailers, _ = call(client, stream_id, message, path)
            assert trailers["grpc-status"] == "0"
            if path == PREDICT:
                assert _answer_values(body) == [3.0]
            else:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.ParseFromString(body[5:])
                assert "signature_def" in response.metadata
            stream_id += 2


def test_a_body_in_one_byte_frames_is_answered(client: RawClient) -> None:
    message = predict_message([3.0, 5.0])
    frames = [frame(HEADERS, END_HEADERS, 1, client.headers_block()), frame(DATA, 0, 1, b"")]
    frames += [frame(DATA, 0, 1, message[i : i + 1]) for i in range(len(message))]
    client.send(*frames, frame(DATA, END_STREAM, 1, b""))
    _, data, trailers, _ = client.answer(1)
    assert trailers["grpc-status"] == "0"
    assert _answer_values(data) == [3.5, 4.5]


def test_a_malformed_timeout_ends_only_its_call(client: RawClient) -> None:
    for stream_id, timeout in ((1, "\u00b2S"), (3, "10x"), (5, "123456789S")):
        block = client.headers_block(extra=(("grpc-timeout", timeout),))
        client.send(
            frame(HEADERS, END_HEADERS, stream_id, block),
            frame(DATA, END_STREAM, stream_id, predict_message([1.0])),
        )
        _, _, trailers, _ = client.answer(stream_id)
        assert trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
        assert "grpc-timeout" in trailers["grpc-message"]
    assert call(client, 7, predict_message([2.0]))[2]["grpc-status"] == "0"


def test_headers_after_the_request_ended_reset_the_stream(client: RawClient) -> None:
    """A Watch call stays open after its request; HEADERS on it again is STREAM_CLOSED."""
    request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    message = b"\x00" + struct.pack(">I", len(request)) + request
    block = client.headers_block("/grpc.health.v1.Health/Watch")
    client.send(frame(HEADERS, END_HEADERS, 1, block), frame(DATA, END_STREAM, 1, message))
    while True:
        got = client.read_frame()
        assert got is not None
        if got[0] == DATA and got[2] == 1:
            break  # the current status
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, client.headers_block()))
    while True:
        got = client.read_frame()
        assert got is not None
        if got[0] == RST_STREAM and got[2] == 1:
            assert struct.unpack(">I", got[3])[0] == 0x5  # STREAM_CLOSED
            break
    assert call(client, 3, predict_message([2.0]))[2]["grpc-status"] == "0"


def test_a_settings_flood_ends_the_connection(server: H2GrpcServer) -> None:
    c = RawClient(server.port, settings=struct.pack(">HI", 0x4, 65535) * 1000)
    try:
        frames = []
        while (got := c.read_frame()) is not None:
            frames.append(got)
        goaway = [payload for kind, _, _, payload in frames if kind == GOAWAY]
        assert goaway and struct.unpack(">II", goaway[0][:8])[1] == 0xB  # ENHANCE_YOUR_CALM
    finally:
        c.close()


def test_calls_reset_while_running_keep_the_connection(core: ServerCore) -> None:
    """A client cancelling many calls in progress (deadlines) keeps its connection; reset
    calls waiting for a worker are skipped."""
    serving = _ThreadRecordingServing(core, cost=1.0)  # slow: runs on workers
    with serve_measured(serving, channel_arguments="grpc.max_concurrent_streams=4") as s:
        c = RawClient(s.port)
        try:
            assert call(c, 1, predict_message([1.0]))[2]["grpc-status"] == "0"
            serving.gate.clear()  # calls that start from now on are held in progress
            frames = []
            for i in range(1, 41):
                stream_id = 2 * i + 1
                frames.append(frame(HEADERS, END_HEADERS, stream_id, c.headers_block()))
                frames.append(frame(DATA, END_STREAM, stream_id, predict_message([2.0])))
                frames.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", 0x8)))
            c.send(*frames)
            # The server reads frames in order: once it acknowledges a PING sent after them,
            # every call and reset above has been handled.
            wait_for_ping_ack(c, b"resets!!")
            serving.gate.set()
            wait_until(lambda: not s.handler._jobs, "the connection's worker jobs to end")
            assert len(serving.threads) <= 1 + 4, len(serving.threads)  # at most 4 accepted
            _, data, trailers, _ = call(c, 101, predict_message([4.0]))
            assert trailers["grpc-status"] == "0"
            assert _answer_values(data) == [4.0]
        finally:
            serving.gate.set()
            c.close()


def test_a_reset_stream_is_dropped_and_the_connection_serves_on(client: RawClient) -> None:
    client.send(
        frame(HEADERS, END_HEADERS, 1, client.headers_block()),
        frame(RST_STREAM, 0, 1, struct.pack(">I", 0x8)),
        frame(0xFA, 0, 0, b"unknown frame types are ignored"),
    )
    _, data, trailers, _ = call(client, 3, predict_message([6.0]))
    assert trailers["grpc-status"] == "0"
    assert _answer_values(data) == [5.0]


def test_streams_beyond_the_limit_are_refused(core: ServerCore) -> None:
    with serve(ModelServing(core), channel_arguments="grpc.max_concurrent_streams=1") as s:
        c = RawClient(s.port)
        try:
            c.send(frame(HEADERS, END_HEADERS, 1, c.headers_block()))  # left open
            c.send(frame(HEADERS, END_HEADERS, 3, c.headers_block()))
            while True:
                got = c.read_frame()
                assert got is not None
                kind, _, stream, payload = got
                if kind == RST_STREAM:
                    assert stream == 3
                    assert struct.unpack(">I", payload)[0] == 0x7  # REFUSED_STREAM
                    break
            c.send(frame(DATA, END_STREAM, 1, predict_message([2.0])))
            assert c.answer(1)[2]["grpc-status"] == "0"
        finally:
            c.close()


def test_content_type_other_than_grpc_is_415(client: RawClient) -> None:
    client.send(
        frame(HEADERS, END_HEADERS, 1, client.headers_block(content_type="application/json")),
        frame(DATA, END_STREAM, 1, b"{}"),
    )
    headers, body, _, _ = client.answer(1)
    assert headers[":status"] == "415"
    assert headers["content-type"].startswith("text/plain") and b"application/grpc" in body
    block = client.encoder.encode([(":method", "GET"), (":scheme", "http"), (":path", "/")])
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, block))
    headers, body, _, _ = client.answer(3)
    assert headers[":status"] == "405" and b"POST" in body


def test_answers_announce_encodings_and_repeat_as_index_references(client: RawClient) -> None:
    for stream_id in (1, 3, 5):
        headers, _, trailers, _ = call(client, stream_id, predict_message([1.0]))
        assert headers["grpc-accept-encoding"] == "identity,deflate,gzip"
        assert trailers == {"grpc-status": "0"}
    client.send(
        frame(HEADERS, END_HEADERS, 7, client.headers_block()),
        frame(DATA, END_STREAM, 7, predict_message([1.0])),
    )
    blocks = []
    while True:
        got = client.read_frame()
        assert got is not None
        kind, flags, stream, payload = got
        if kind == HEADERS and stream == 7:
            blocks.append(payload)
            if flags & END_STREAM:
                break
    # :status, content-type and grpc-accept-encoding, then grpc-status: one byte each.
    assert [len(b) for b in blocks] == [3, 1]


def test_a_malformed_message_is_internal_and_names_the_type(client: RawClient) -> None:
    _, _, trailers, _ = call(client, 1, b"\x00\x00\x00\x00\x03\xff\xff\xff")
    assert trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert "tensorflow.serving.PredictRequest" in trailers["grpc-message"]
    _, _, trailers, _ = call(client, 3, b"\x00\x00\x00\x00\x09abc")  # shorter than declared
    assert trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])


def test_a_message_over_the_limit_is_refused_as_soon_as_its_length_arrives(
    core: ServerCore,
) -> None:
    limit = "grpc.max_receive_message_length=1000"
    with serve(ModelServing(core), channel_arguments=limit) as s:
        c = RawClient(s.port)
        try:
            message = predict_message([1.0] * 1000)  # over 4000 bytes
            c.send(
                frame(HEADERS, END_HEADERS, 1, c.headers_block()),
                frame(DATA, 0, 1, message[:1500]),  # the rest never comes
            )
            _, _, trailers, _ = c.answer(1)
            assert trailers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
            assert trailers["grpc-message"] == (
                f"Received message larger than max ({len(message) - 5} vs. 1000)"
            )
            assert call(c, 3, predict_message([2.0]))[2]["grpc-status"] == "0"
        finally:
            c.close()


def test_a_compressed_message_inflates_only_up_to_the_limit(core: ServerCore) -> None:
    """A gzip "bomb" (50 MB of zeros in ~50 KB) is refused without inflating it whole; a
    cut stream is INTERNAL; the connection serves on."""
    limit = "grpc.max_receive_message_length=1000000"
    with serve(ModelServing(core), channel_arguments=limit) as s:
        c = RawClient(s.port)
        try:
            gzip_header = (("grpc-encoding", "gzip"),)
            cases = [
                (gzip.compress(b"\x00" * 50_000_000), "RESOURCE_EXHAUSTED", "after decompression"),
                (gzip.compress(predict_message([1.0])[5:])[:-10], "INTERNAL", "Cannot decompress"),
            ]
            for index, (data, code, text) in enumerate(cases):
                stream_id = 2 * index + 1
                message = b"\x01" + struct.pack(">I", len(data)) + data
                c.send(
                    frame(HEADERS, END_HEADERS, stream_id, c.headers_block(extra=gzip_header)),
                    *data_frames(stream_id, message),
                )
                _, _, trailers, _ = c.answer(stream_id)
                assert trailers["grpc-status"] == str(grpc.StatusCode[code].value[0]), trailers
                assert text in unquote(trailers["grpc-message"])
            assert call(c, 5, predict_message([2.0]))[2]["grpc-status"] == "0"
        finally:
            c.close()


def test_stop_with_grace_finishes_the_call_in_flight(core: ServerCore) -> None:
    """GOAWAY names the last stream; a request already started is still answered."""
    s = serve(ModelServing(core))
    c = RawClient(s.port)
    try:
        c.send(frame(HEADERS, END_HEADERS, 1, c.headers_block()))  # request not finished
        call(c, 3, predict_message([1.0]))  # the server has seen stream 1 and 3
        stopper = threading.Thread(target=s.stop, args=(TIMEOUT,))  # ends with the call
        stopper.start()
        while True:
            got = c.read_frame()
            assert got is not None
            if got[0] == GOAWAY:
                last, code = struct.unpack(">II", got[3][:8])
                assert (last, code) == (3, 0)
                break
        # New streams are refused; the open one is answered.
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 5, c.headers_block()))
        c.send(frame(DATA, END_STREAM, 1, predict_message([8.0])))
        _, data, trailers, _ = c.answer(1)
        assert trailers["grpc-status"] == "0"
        assert _answer_values(data) == [6.0]
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        assert s.wait_for_termination(0)
    finally:
        c.close()
        s.stop(None)


# ---------------------------------------------------------------------------- gRPC


def test_unknown_method_is_unimplemented(server: H2GrpcServer) -> None:
    with grpc.insecure_channel(f"localhost:{server.port}") as channel:
        method = channel.unary_unary("/tensorflow.serving.PredictionService/Nope")
        with pytest.raises(grpc.RpcError) as info:
            method(b"", timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests_are_answered(
    server: H2GrpcServer, compression: grpc.Compression
) -> None:
    with grpc.insecure_channel(f"localhost:{server.port}", compression=compression) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.ParseFromString(predict_message([0.0] * 1000)[5:])
        response = stub.Predict(request, timeout=TIMEOUT)
        assert list(response.outputs["y"].float_val) == [2.0] * 1000


def test_health_watch_streams_each_change(server: H2GrpcServer) -> None:
    with grpc.insecure_channel(f"localhost:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert next(watch).status == serving
        server.set_serving_status(False)
        assert next(watch).status == not_serving
        server.set_serving_status(True)
        assert next(watch).status == serving
        watch.cancel()
        unknown = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()


class _ThreadRecordingServing(ModelServing):
    """Records the thread each Predict runs on, and makes the model cost ``cost`` seconds on
    ``clock``: each call that reaches its model advances ``clock`` by ``cost`` (the cost
    measure ignores failed calls).
    Served by :func:`serve_measured`, which times calls on ``clock``, the model's measured
    cost is exactly ``cost`` however fast or busy the machine is (``loop_cost`` instead, when
    set, for calls on the event loop). While ``gate`` is clear, calls wait for it (at most
    ``TIMEOUT``)."""

    def __init__(self, core: ServerCore, cost: float = 0.0) -> None:
        super().__init__(core)
        self.cost = cost
        self.loop_cost: float | None = None
        self.clock = ManualClock()
        self.gate = threading.Event()
        self.gate.set()
        self.threads: list[str] = []

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        assert self.gate.wait(TIMEOUT), "test gate never opened"
        model = super().bind(*args, **kwargs)
        on_loop = threading.current_thread().name == "pyserving-grpc-loop"
        self.clock.advance(self.cost if self.loop_cost is None or not on_loop else self.loop_cost)
        return model


def serve_measured(
    serving: _ThreadRecordingServing,
    probe_after: int = PROBE_AFTER,
    probe_after_max: int = PROBE_AFTER_MAX,
    **options: Any,
) -> H2GrpcServer:
    """A server over ``serving`` whose Predict cost measure reads ``serving.clock``."""
    costs = CallCosts(
        timer=serving.clock.monotonic, probe_after=probe_after, probe_after_max=probe_after_max
    )
    return start_h2_grpc_server(serving, GrpcServerOptions(port=0, **options), costs=costs)


class _HeldExecutor(concurrent.futures.Executor):
    """Keeps submitted jobs until ``run_one`` (a worker pool that is busy)."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.jobs.append(lambda: fn(*args, **kwargs))
        return concurrent.futures.Future()

    def run_one(self) -> None:
        self.jobs.pop(0)()


def test_worker_jobs_per_connection_are_bounded(core: ServerCore) -> None:
    """However fast a client opens and resets calls ("rapid reset"), at most
    max_concurrent_streams jobs of its connection are queued or running."""
    executor = _HeldExecutor()
    options = GrpcServerOptions(channel_arguments="grpc.max_concurrent_streams=3")
    loop = asyncio.new_event_loop()
    try:
        _check_job_limit(GrpcHandler(ModelServing(core), options, executor, loop), executor)
    finally:
        loop.close()


def _check_job_limit(handler: GrpcHandler, executor: _HeldExecutor) -> None:
    connection, other = object(), object()
    for _ in range(3):
        handler._submit(connection, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="Too many calls in progress") as info:
        handler._submit(connection, lambda: None)  # type: ignore[arg-type]
    assert info.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    handler._submit(other, lambda: None)  # type: ignore[arg-type]  # other connections: own limit
    executor.run_one()
    handler._submit(connection, lambda: None)  # type: ignore[arg-type]  # room again
    assert len(executor.jobs) == 4


def test_failed_calls_do_not_move_a_slow_model_onto_the_loop(core: ServerCore) -> None:
    """Failures cost nothing on the model's clock; were they measured, the average would
    fall under the threshold within a few calls and the last call would run on the loop.
    (No call is let onto the loop to be measured again within the test's 32 calls.)"""
    serving = _ThreadRecordingServing(core, cost=1e-3)
    with serve_measured(serving, probe_after=1000) as s:
        c = RawClient(s.port)
        try:
            call(c, 1, predict_message([1.0]))
            bad = predict_pb2.PredictRequest()
            bad.ParseFromString(predict_message([1.0])[5:])
            bad.inputs["nope"].CopyFrom(bad.inputs.pop("x"))
            data = bad.SerializeToString()
            for i in range(1, 31):
                message = b"\x00" + struct.pack(">I", len(data)) + data
                trailers = call(c, 2 * i + 1, message)[2]
                assert trailers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
            assert call(c, 101, predict_message([1.0]))[2]["grpc-status"] == "0"
        finally:
            c.close()
    assert all(t.startswith("pyserving-grpc_") for t in serving.threads), serving.threads


@pytest.mark.parametrize(("cost", "on_loop"), [(0.0, True), (1e-3, False)])
def test_fast_models_run_on_the_event_loop_slow_ones_on_workers(
    core: ServerCore, cost: float, on_loop: bool
) -> None:
    serving = _ThreadRecordingServing(core, cost)
    with serve_measured(serving) as s:
        c = RawClient(s.port)
        try:
            for i in range(10):
                _, data, _, _ = call(c, 2 * i + 1, predict_message([float(i)]))
                assert _answer_values(data) == [0.5 * i + 2]
        finally:
            c.close()
    # A model's first call is measured on a worker; later ones follow its measured cost.
    assert serving.threads[0].startswith("pyserving-grpc_")
    later = serving.threads[1:]
    if on_loop:
        assert later == ["pyserving-grpc-loop"] * 9, serving.threads
    else:
        assert all(t.startswith("pyserving-grpc_") for t in later), serving.threads


def test_a_model_that_turns_slow_leaves_the_loop_and_comes_back_when_fast(
    core: ServerCore,
) -> None:
    """A call counts at most 0.6 ms (twice the 0.3 ms threshold): from an average of 0, 5 ms
    calls lift it to 0.12, 0.216, 0.293 and 0.354 ms (weight 0.2), so four of them run on the
    loop and the fifth call goes to a worker; a free call there brings it to 0.283 ms, and
    the next runs on the loop again. (A single slow call, as a busy machine causes now and
    then, moves nothing.)"""
    serving = _ThreadRecordingServing(core, cost=0.0)
    with serve_measured(serving) as s:
        c = RawClient(s.port)
        try:
            stream_ids = iter(range(1, 1000, 2))

            def run(calls: int) -> list[str]:
                start = len(serving.threads)
                for _ in range(calls):
                    assert (
                        call(c, next(stream_ids), predict_message([1.0]))[2]["grpc-status"] == "0"
                    )
                return [
                    "loop" if t == "pyserving-grpc-loop" else "worker"
                    for t in serving.threads[start:]
                ]

            assert run(2) == ["worker", "loop"]
            serving.cost = 5e-3
            assert run(4) == ["loop"] * 4
            serving.cost = 0.0
            assert run(2) == ["worker", "loop"]
        finally:
            c.close()


@pytest.mark.parametrize(
    ("loop_cost", "expected"),
    [
        # Slow on workers (as calls are under load), fast on the loop: the fifth call is
        # measured on the loop, and the model stays there.
        (0.0, "wwwwLLLL"),
        # Slow everywhere: one call on the loop after 2, then 4, then 8 (the most) calls.
        (1e-3, "wwL" + "wwwL" + "wwwwwwwL" + "wwwwwwwL"),
    ],
)
def test_a_slow_model_is_measured_again_on_the_loop_now_and_then(
    core: ServerCore, loop_cost: float, expected: str
) -> None:
    serving = _ThreadRecordingServing(core, cost=1e-3)
    serving.loop_cost = loop_cost
    probe_after = 4 if loop_cost == 0.0 else 2
    with serve_measured(serving, probe_after=probe_after, probe_after_max=8) as s:
        c = RawClient(s.port)
        try:
            for i in range(len(expected)):
                assert call(c, 2 * i + 1, predict_message([1.0]))[2]["grpc-status"] == "0"
        finally:
            c.close()
    where = "".join("L" if t == "pyserving-grpc-loop" else "w" for t in serving.threads)
    assert where == expected


def test_call_costs_probe_a_slow_model_on_the_loop() -> None:
    costs = CallCosts(threshold=1.0, weight=1.0, probe_after=2, probe_after_max=4)
    costs.record("m", 5.0)
    assert [costs.runs_inline("m") for _ in range(2)] == [False, True]
    costs.record("m", 3.0, on_loop=True)  # slow on the loop too: wait twice as long
    assert [costs.runs_inline("m") for _ in range(4)] == [False, False, False, True]
    costs.record("m", 3.0, on_loop=True)
    assert [costs.runs_inline("m") for _ in range(4)] == [False, False, False, True]  # at most
    costs.record("m", 0.5, on_loop=True)  # fast on the loop: fast again, from that call
    assert costs.average("m") == 0.5 and costs.runs_inline("m")
    costs.record("m", 9.0)
    assert [costs.runs_inline("m") for _ in range(2)] == [False, True]  # interval restarted
    with pytest.raises(ValueError, match="probe_after"):
        CallCosts(probe_after=5, probe_after_max=4)


def test_call_costs_average_and_threshold() -> None:
    costs = CallCosts(threshold=1.0, weight=0.5)
    assert not costs.runs_inline("m") and costs.average("m") is None  # not measured yet
    costs.record("m", 0.5)
    assert costs.runs_inline("m") and costs.average("m") == 0.5  # the first call sets it
    costs.record("m", 1.9)
    assert not costs.runs_inline("m") and costs.average("m") == 1.2
    costs.record("m", 0.8)
    assert not costs.runs_inline("m") and costs.average("m") == 1.0  # at the threshold: slow
    costs.record("m", 0.0)
    assert costs.runs_inline("m") and costs.average("m") == 0.5
    assert not costs.runs_inline("other")  # per model
    costs.record("m", 100.0)  # counts as twice the threshold
    assert costs.average("m") == 1.25
    with pytest.raises(ValueError, match="weight"):
        CallCosts(weight=0.0)


# ---------------------------------------------------------------------------- abuse


class Probe:
    """A second client: Predicts on its own channel, one after another (paced, not timed),
    until stopped; records every failure. Used as ``with Probe(port) as probe:``."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"localhost:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request = predict_pb2.PredictRequest()
        self.request.ParseFromString(predict_message([2.0])[5:])
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.stub.Predict(self.request, timeout=TIMEOUT)
                self.ok += 1
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")  # type: ignore[attr-defined]
            self._stop.wait(0.02)

    def __enter__(self) -> Probe:
        self._thread.start()
        wait_until(lambda: self.ok > 0 or bool(self.failures), "the probe's first call")
        return self

    def __exit__(self, *exc: object) -> None:
        # The server still answers after the abuse: one more call completes.
        done = self.ok
        try:
            wait_until(lambda: self.ok > done or bool(self.failures), "a probe call after it")
        finally:
            self._stop.set()
            self._thread.join(TIMEOUT)
            self.channel.close()


def read_until_closed(client: RawClient) -> list[tuple[int, int, int, bytes]]:
    """Every frame until the server closes the connection."""
    frames = []
    try:
        while (got := client.read_frame()) is not None:
            frames.append(got)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return frames


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            return int(struct.unpack(">II", payload[:8])[1])
    return None


def send_until_closed(client: RawClient, chunks: Iterator[bytes]) -> None:
    """Send ``chunks`` until they run out or the server closes the connection."""
    for chunk in chunks:
        try:
            client.sock.sendall(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return


def test_rapid_reset_with_real_work_ends_the_abusers_connection_only(
    server: H2GrpcServer,
) -> None:
    """HEADERS, DATA with a Predict, RST_STREAM, repeated: requests reset in the read that
    brought them never run; past the reset budget the connection gets GOAWAY
    ENHANCE_YOUR_CALM; a second client sees no failure."""
    with Probe(server.port) as probe:
        abuser = RawClient(server.port)
        try:
            message = predict_message([1.0])
            block = abuser.headers_block()

            def batches() -> Iterator[bytes]:
                stream_id = 1
                for _ in range(60):  # at most 6000 calls
                    batch = []
                    for _ in range(100):
                        batch += [
                            frame(HEADERS, END_HEADERS, stream_id, block),
                            frame(DATA, END_STREAM, stream_id, message),
                            frame(RST_STREAM, 0, stream_id, struct.pack(">I", 0x8)),
                        ]
                        stream_id += 2
                    yield b"".join(batch)

            sender = threading.Thread(target=send_until_closed, args=(abuser, batches()))
            sender.start()
            frames = read_until_closed(abuser)
            sender.join(TIMEOUT)
            assert goaway_code(frames) == 0xB  # ENHANCE_YOUR_CALM
        finally:
            abuser.close()
    assert probe.failures == []


@pytest.mark.parametrize(
    ("name", "frames", "code"),
    [
        # Ten blocks of 1 MiB of table size updates (the audit's): refused at once.
        ("size updates", [frame(HEADERS, END_HEADERS, 1, b"\x20" * 16384)] * 10, 0x9),
        (
            "1 MiB header block",
            [frame(HEADERS, 0, 1, b"\x20" * 16384)]
            + [frame(CONTINUATION, 0, 1, b"\x20" * 16384)] * 63,
            0xB,
        ),
        ("PING flood", [frame(PING, 0, 0, b"\x00" * 8)] * 5000, 0xB),
        ("SETTINGS flood", [frame(SETTINGS, 0, 0, b"")] * 5000, 0xB),
        (
            "empty DATA flood",
            [frame(HEADERS, END_HEADERS, 1, b"")] + [frame(DATA, 0, 1, b"")] * 5000,
            0xB,
        ),
        (
            "empty CONTINUATION flood",
            [frame(HEADERS, 0, 1, b"")] + [frame(CONTINUATION, 0, 1, b"")] * 5000,
            0xB,
        ),
    ],
)
def test_abusive_frames_end_the_abusers_connection_only(
    server: H2GrpcServer, name: str, frames: list[bytes], code: int
) -> None:
    with Probe(server.port) as probe:
        abuser = RawClient(server.port)
        try:
            if name == "empty DATA flood":  # a real request head first
                frames = [frame(HEADERS, END_HEADERS, 1, abuser.headers_block()), *frames[1:]]
            sender = threading.Thread(target=send_until_closed, args=(abuser, iter(frames)))
            sender.start()
            assert goaway_code(read_until_closed(abuser)) == code, name
            sender.join(TIMEOUT)
        finally:
            abuser.close()
    assert probe.failures == []


def test_oversized_metadata_fails_only_its_call(server: H2GrpcServer) -> None:
    """One call with 100 KB of metadata among 200 concurrent Predicts on one connection:
    that call is RESOURCE_EXHAUSTED (as grpcio answers), the others succeed."""
    c = RawClient(server.port, settings=struct.pack(">HI", 0x4, 1 << 24))
    try:
        c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", (1 << 24) - 65535)))
        big = tuple((f"x-meta-{i}", "m" * 1000) for i in range(100))
        out = []
        for i in range(201):
            stream_id = 2 * i + 1
            block = c.headers_block(extra=big if i == 100 else ())
            pieces = [block[j : j + 16384] for j in range(0, len(block), 16384)]
            out.append(frame(HEADERS, END_HEADERS if len(pieces) == 1 else 0, stream_id, pieces[0]))
            for k, piece in enumerate(pieces[1:], start=2):
                last = END_HEADERS if k == len(pieces) else 0
                out.append(frame(CONTINUATION, last, stream_id, piece))
            out.append(frame(DATA, END_STREAM, stream_id, predict_message([float(i)])))
        c.send(*out)
        statuses: dict[int, str] = {}
        bodies: dict[int, bytes] = {}
        while len(statuses) < 201:  # answers come in any order
            got = c.read_frame()
            assert got is not None
            kind, flags, stream_id, payload = got
            if kind == DATA:
                bodies[stream_id] = bodies.get(stream_id, b"") + payload
            elif kind == HEADERS and flags & END_STREAM:
                statuses[stream_id] = c.last_headers["grpc-status"]
        for i in range(201):
            if i != 100:
                assert _answer_values(bodies[2 * i + 1]) == [0.5 * i + 2]
        exhausted = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert statuses.pop(201) == exhausted
        assert set(statuses.values()) == {"0"}
    finally:
        c.close()


def test_a_stalled_request_is_answered_when_its_time_is_up(core: ServerCore) -> None:
    """A request whose body stops coming (slowloris) holds its stream only until the
    request timeout: it is then DEADLINE_EXCEEDED; other calls go on meanwhile."""
    limits = Http2Settings(request_timeout_seconds=0.5)
    s = start_h2_grpc_server(ModelServing(core), GrpcServerOptions(port=0), limits=limits)
    try:
        with Probe(s.port) as probe:
            c = RawClient(s.port)
            try:
                message = predict_message([1.0])
                c.send(
                    frame(HEADERS, END_HEADERS, 1, c.headers_block()),
                    frame(DATA, 0, 1, message[:3]),  # the rest never comes
                )
                assert call(c, 3, predict_message([2.0]))[2]["grpc-status"] == "0"
                _, _, trailers, _ = c.answer(1)
                assert trailers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
                assert "not received within" in unquote(trailers["grpc-message"])
            finally:
                c.close()
        assert probe.failures == []
    finally:
        s.stop(None)


# ---------------------------------------------------------------------------- pieces


def test_parse_timeout() -> None:
    assert parse_timeout("100m") == pytest.approx(0.1)
    assert parse_timeout("2S") == 2.0
    assert parse_timeout("1H") == 3600.0
    assert parse_timeout("5u") == pytest.approx(5e-6)
    assert parse_timeout("99999999n") == pytest.approx(0.099999999)
    for bad in ("", "m", "10", "10x", "123456789S", "-1S", "1.5S"):
        assert parse_timeout(bad) is None, bad


def test_status_messages_are_percent_encoded() -> None:
    message = "bad input: 100% wrong, ünïcode\nnew line"
    headers = dict(status_trailers(grpc.StatusCode.NOT_FOUND, message))
    assert headers[b"grpc-status"] == b"5"
    encoded = headers[b"grpc-message"].decode("ascii")
    assert "%25" in encoded and "\n" not in encoded
    assert unquote(encoded) == message
    assert status_trailers(grpc.StatusCode.OK) == ((b"grpc-status", b"0"),)


@pytest.mark.parametrize(
    ("arguments", "grpcio"),
    [
        ("", False),
        ("grpc.max_receive_message_length=10,grpc.max_concurrent_streams=5", False),
        ("grpc.max_connection_age_ms=2000", True),
        ("grpc.max_send_message_length=1,grpc.lb_policy_name=grpclb", True),
    ],
)
def test_channel_arguments_only_grpcio_applies_select_grpcio(arguments: str, grpcio: bool) -> None:
    assert uses_grpcio(GrpcServerOptions(channel_arguments=arguments)) is grpcio
    assert uses_grpcio(GrpcServerOptions(channel_arguments=arguments, grpcio=True)) is True
