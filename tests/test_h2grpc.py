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
