"""The benchmark's raw HTTP/2 gRPC client against pyserving's real gRPC server.

The load generator's gRPC figures rest on this client, so it must get right answers, see
errors as errors and respect flow control with requests larger than the default window.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
from benchmarks.h2grpc import GrpcCallError, GrpcConnection
from tensorflow_serving.apis import predict_pb2

from pyserving.config import single_model_config
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.grpc import GrpcServerOptions, start_grpc_server
from pyserving.server.service import ModelServing

pytestmark = pytest.mark.e2e

METHOD = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(scope="module")
def port(testdata: pathlib.Path) -> Iterator[int]:
    core = ServerCore(ServerCoreOptions(file_system_poll_wait_seconds=0))
    try:
        core.reload_config(
            single_model_config("half_plus_two", str(testdata / "saved_model_half_plus_two_cpu"))
        )
        server = start_grpc_server(ModelServing(core), GrpcServerOptions(port=0))
        try:
            yield server.port
        finally:
            server.stop(None)
    finally:
        core.close()


def request(model: str, values: np.ndarray) -> bytes:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    tensor = req.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    for size in (len(values), 1):
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.extend(values.tolist())
    return req.SerializeToString()


def answer(raw: bytes) -> np.ndarray:
    out = predict_pb2.PredictResponse.FromString(raw).outputs["y"]
    if out.tensor_content:
        return np.frombuffer(out.tensor_content, np.float32)
    return np.asarray(out.float_val, np.float32)


def test_concurrent_calls_on_one_connection_get_their_own_answers(port: int) -> None:
    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        conn = await GrpcConnection.open("127.0.0.1", port)
        try:
            inputs = [np.arange(i + 1, dtype=np.float32) * (i + 1) for i in range(40)]
            futures = [conn.call(conn.prepare(METHOD, request("half_plus_two", x))) for x in inputs]
            raws = await asyncio.gather(*futures)
            return [(x, answer(raw)) for x, raw in zip(inputs, raws, strict=True)]
        finally:
            conn.close()

    for x, y in asyncio.run(main()):
        np.testing.assert_allclose(y, 0.5 * x + 2.0, rtol=1e-6)


def test_error_status_is_raised(port: int) -> None:
    async def main() -> None:
        conn = await GrpcConnection.open("127.0.0.1", port)
        try:
            await conn.call(conn.prepare(METHOD, request("no_such_model", np.ones(1, np.float32))))
        finally:
            conn.close()

    with pytest.raises(GrpcCallError) as info:
        asyncio.run(main())
    assert info.value.status == 5  # NOT_FOUND
    assert "no_such_model" in info.value.message


def test_requests_larger_than_the_flow_control_window(port: int) -> None:
    x = np.linspace(-1000, 1000, 200_000, dtype=np.float32)  # ~800 KB on the wire

    async def main() -> list[bytes]:
        conn = await GrpcConnection.open("127.0.0.1", port)
        try:
            prepared = conn.prepare(METHOD, request("half_plus_two", x))
            return list(await asyncio.gather(*(conn.call(prepared) for _ in range(3))))
        finally:
            conn.close()

    for raw in asyncio.run(main()):
        np.testing.assert_allclose(answer(raw), 0.5 * x + 2.0, rtol=1e-6)


class _Recorder:
    """A transport that keeps what the client writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


@pytest.mark.parametrize("chunk", [1, 2, 7, 9, 10, 64, 10_000])
def test_answers_split_across_reads_anywhere(chunk: int) -> None:
    """Frames arriving in pieces of any size (mid-header, mid-payload, several frames per
    read) give the same answers as whole reads."""
    import hpack

    from pyserving.server.h2sansio import DATA, END_HEADERS, END_STREAM, HEADERS, frame

    async def scenario() -> list[bytes]:
        conn = GrpcConnection("127.0.0.1:1")
        conn._transport = _Recorder()  # type: ignore[assignment]
        prepared = conn.prepare(METHOD, b"request")
        futures = [conn.call(prepared) for _ in range(3)]
        head = hpack.Encoder().encode([(":status", "200"), ("content-type", "application/grpc")])
        trailers = hpack.Encoder().encode([("grpc-status", "0")])
        wire = b""
        for i, stream in enumerate((1, 3, 5)):
            message = b"answer-%d" % i * (i + 1)
            body = b"\x00" + len(message).to_bytes(4, "big") + message
            wire += frame(HEADERS, END_HEADERS, stream, head)
            wire += frame(DATA, 0, stream, body)
            wire += frame(HEADERS, END_HEADERS | END_STREAM, stream, trailers)
        for start in range(0, len(wire), chunk):
            conn.data_received(wire[start : start + chunk])
        assert not conn._buffer
        return [f.result() for f in futures]

    got = asyncio.run(scenario())
    assert got == [b"answer-0", b"answer-1answer-1", b"answer-2answer-2answer-2"]
