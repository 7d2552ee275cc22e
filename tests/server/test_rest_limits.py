"""REST request size limits, in process: the ASGI app and the bounded gzip decoder."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import tracemalloc
import types
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from pyserving.server.rest import RequestTooLarge, RestApp, RestHandler, RestResponse, gunzip


class EchoHandler(RestHandler):
    """Answers 200 with the size of the body it was given (after gzip decoding)."""

    def __init__(self, max_body_bytes: int | None) -> None:
        # No model behind it: the routes that would reach one are replaced by _dispatch.
        serving = types.SimpleNamespace(core=None)
        super().__init__(serving, max_body_bytes=max_body_bytes)  # type: ignore[arg-type]
        self.bodies: list[bytes] = []

    def _dispatch(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes
    ) -> RestResponse:
        from pyserving.server.rest import _decode_body

        payload = _decode_body(headers, body, self.max_body_bytes)
        self.bodies.append(payload)
        return RestResponse(200, orjson.dumps({"size": len(payload)}))


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        yield pool


def call(
    app: RestApp, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, Any], int]:
    """Run one POST through the ASGI app; return (status, JSON body, chunks consumed)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    consumed = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        consumed += 1
        return messages[consumed - 1]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/models/m:predict",
        "headers": headers or [],
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return sent[0]["status"], orjson.loads(sent[1]["body"]), consumed


def test_body_within_limit_reaches_the_handler(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    handler = EchoHandler(100)
    app = RestApp(handler, executor, max_body_bytes=100)
    assert call(app, [b"a" * 60, b"b" * 40]) == (200, {"size": 100}, 2)


def test_declared_length_over_limit_is_refused_before_reading(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    handler = EchoHandler(100)
    app = RestApp(handler, executor, max_body_bytes=100)
    status, body, consumed = call(app, [b"a" * 101], [(b"content-length", b"101")])
    assert status == 413 and consumed == 0
    assert body == {
        "error": "Request body exceeds the limit of 100 bytes (--rest_api_max_body_bytes)"
    }
    assert handler.bodies == []


def test_streamed_body_over_limit_is_refused_without_reading_the_rest(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    handler = EchoHandler(100)
    app = RestApp(handler, executor, max_body_bytes=100)
    status, body, consumed = call(app, [b"a" * 60, b"b" * 60, b"c" * 60])  # chunked upload
    assert (status, consumed) == (413, 2)
    assert "exceeds the limit of 100 bytes" in body["error"]
    assert handler.bodies == []


def test_no_limit(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    app = RestApp(EchoHandler(None), executor, max_body_bytes=None)
    assert call(app, [b"a" * 1000], [(b"content-length", b"1000")])[:2] == (200, {"size": 1000})


def test_gzip_bomb_is_refused_after_inflating_at_most_the_limit(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    bomb = gzip_bomb(64)
    handler = EchoHandler(1 << 20)
    app = RestApp(handler, executor, max_body_bytes=1 << 20)
    status, body, _ = call(app, [bomb], [(b"content-encoding", b"gzip")])
    assert status == 413
    assert body["error"] == (
        "Decompressed request body exceeds the limit of 1048576 bytes (--rest_api_max_body_bytes)"
    )


def test_gunzip_members_and_limits() -> None:
    data = gzip.compress(b"hello ") + gzip.compress(b"world")
    assert gunzip(data) == b"hello world" == gzip.decompress(data)
    assert gunzip(data, 11) == b"hello world"
    with pytest.raises(RequestTooLarge):
        gunzip(data, 10)
    assert gunzip(b"") == b""
    with pytest.raises(EOFError):
        gunzip(gzip.compress(b"x" * 1000)[:-12])  # cut inside the deflate stream
    with pytest.raises(zlib.error):
        gunzip(b"plain text")


def gzip_bomb(mebibytes: int) -> bytes:
    """``mebibytes`` MiB of zeros, gzip-compressed (about 1000:1), built without holding them."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    return b"".join([*(deflate.compress(zeros) for _ in range(mebibytes)), deflate.flush()])


def test_gunzip_of_a_bomb_allocates_about_the_limit() -> None:
    """256 MiB behind 1 MiB of gzip: decoding with a 1 MiB limit never holds the 256 MiB."""
    bomb = gzip_bomb(256)
    assert len(bomb) < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(RequestTooLarge):
            gunzip(bomb, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
