"""Trivial endpoints that measure the load generator itself.

``python -m benchmarks.trivial rest --port P`` answers every HTTP/1.1 request on a keep-alive
connection with a fixed 200 (uvloop + httptools, no framework). ``python -m benchmarks.trivial
grpc --port P`` answers ``PredictionService/Predict`` with an empty ``PredictResponse``
without decoding the request (``grpc.aio``). Both do as little per request as a Python server
can, so the load generator's throughput and CPU cost per request against them bound what it
can drive against a real server on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast

RESPONSE_BODY = b'{"predictions":[[3.0]]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(RESPONSE_BODY)).encode() + b"\r\n"
    b"\r\n" + RESPONSE_BODY
)


class _HttpServerProtocol(asyncio.Protocol):
    """Answers each complete request with :data:`RESPONSE`."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._error = httptools.HttpParserError
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._error:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(RESPONSE)


async def serve_rest(port: int) -> None:
    """Serve the trivial HTTP endpoint on 127.0.0.1:``port`` until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_HttpServerProtocol, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


async def serve_grpc(port: int) -> None:
    """Serve the trivial gRPC Predict on 127.0.0.1:``port`` until SIGTERM/SIGINT."""
    import grpc

    async def predict(_request: bytes, _context: object) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(predict)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trivial")
    parser.add_argument("protocol", choices=("rest", "grpc"))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.protocol == "rest":
        import uvloop

        uvloop.run(serve_rest(args.port))
    else:
        asyncio.run(serve_grpc(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
