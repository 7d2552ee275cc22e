"""Answers written at the end of the event loop's turn (``server/turn_writes.py``).

The front ends' connections are driven here by hand on a real event loop with recording
transports: what a connection writes while other connections are open waits for the end of
the loop's turn and then goes out in one write per connection, in order, before a close;
with a single connection open it is written at once. ``test_rest_http1.py`` runs all its
HTTP/1.1 cases both ways (alone, and beside another open connection).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest

from pyserving.server.core import ServerCore
from pyserving.server.h2sansio import PING, PREFACE, SETTINGS, frame
from pyserving.server.http1 import Http1Connection, RestServer, RestServerOptions
from pyserving.server.http2 import Http2Connection, Http2Settings
from pyserving.server.rest import RestHandler
from pyserving.server.service import ModelServing
from pyserving.server.turn_writes import TurnWrites
from tests.server.test_grpc_http2 import NoCalls


class RecordingTransport(asyncio.Transport):
    """Records writes and the close, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[bytes | str] = []
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self._closing, "written after close"
        self.events.append(bytes(data))

    def close(self) -> None:
        self._closing = True
        self.events.append("close")

    def is_closing(self) -> bool:
        return self._closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    @property
    def written(self) -> bytes:
        return b"".join(e for e in self.events if isinstance(e, bytes))


class Flushed:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def flush(self) -> None:
        self.log.append(self.name)


def test_connections_are_flushed_once_each_at_the_end_of_the_turn_in_order() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        log: list[str] = []
        writes = TurnWrites(asyncio.get_running_loop())
        for name in ("a", "b", "c"):
            writes.add(Flushed(name, log))
        during = list(log)
        await asyncio.sleep(0)  # one turn of the loop
        return during, log

    during, after = asyncio.run(scenario())
    assert during == [] and after == ["a", "b", "c"]


def test_one_failing_flush_does_not_keep_the_others_unwritten() -> None:
    class Failing:
        def flush(self) -> None:
            raise RuntimeError("boom")

    async def scenario() -> list[str]:
        log: list[str] = []
        writes = TurnWrites(asyncio.get_running_loop())
        writes.add(Failing())
        writes.add(Flushed("after", log))
        await asyncio.sleep(0)
        return log

    assert asyncio.run(scenario()) == ["after"]


# -- HTTP/1.1 ----------------------------------------------------------------------------


@pytest.fixture
def rest_server(core: ServerCore) -> Iterator[RestServer]:
    """A RestServer (CORS on) that is not started: its loop is driven by the test."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    server = RestServer(RestHandler(ModelServing(core)), pool, RestServerOptions(enable_cors=True))
    yield server
    server.loop.close()
    pool.shutdown()


def _open(server: RestServer) -> tuple[Http1Connection, RecordingTransport]:
    connection = Http1Connection(server)
    transport = RecordingTransport()
    connection.connection_made(transport)
    return connection, transport


def test_http1_answers_wait_for_the_end_of_the_turn_beside_other_connections(
    rest_server: RestServer,
) -> None:
    async def scenario() -> tuple[list[list[bytes | str]], list[list[bytes | str]]]:
        opened = [_open(rest_server) for _ in range(2)]
        for connection, _ in opened:
            connection.data_received(b"NOT HTTP\r\n\r\n")  # answered 400, then closed
        during = [list(t.events) for _, t in opened]
        await asyncio.sleep(0)
        return during, [t.events for _, t in opened]

    during, after = rest_server.loop.run_until_complete(scenario())
    assert during == [[], []]
    for events in after:
        assert len(events) == 2 and events[1] == "close", events  # one write, then close
        assert isinstance(events[0], bytes) and events[0].startswith(b"HTTP/1.1 400 ")


def test_http1_a_lone_connection_is_answered_at_once(rest_server: RestServer) -> None:
    async def scenario() -> list[bytes | str]:
        connection, transport = _open(rest_server)
        connection.data_received(b"NOT HTTP\r\n\r\n")
        return list(transport.events)

    events = rest_server.loop.run_until_complete(scenario())
    assert len(events) == 2 and events[1] == "close"
    assert isinstance(events[0], bytes) and events[0].startswith(b"HTTP/1.1 400 ")


def test_http1_pipelined_answers_and_continue_keep_their_order_in_one_write(
    rest_server: RestServer,
) -> None:
    """Two OPTIONS requests (answered on the loop) then a POST expecting ``100 Continue``,
    in one read, beside another connection: nothing is written before the turn ends, then
    one write holding both answers and the ``Continue``, in that order."""

    async def scenario() -> list[bytes | str]:
        _open(rest_server)
        connection, transport = _open(rest_server)
        connection.data_received(
            b"OPTIONS /v1/models/a HTTP/1.1\r\n\r\n"
            b"OPTIONS /v1/models/b HTTP/1.1\r\n\r\n"
            b"POST /v1/models/m:predict HTTP/1.1\r\ncontent-length: 5\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        assert transport.events == []
        await asyncio.sleep(0)
        return transport.events

    events = rest_server.loop.run_until_complete(scenario())
    assert len(events) == 1, events
    written = events[0]
    assert isinstance(written, bytes)
    first = written.index(b"HTTP/1.1 200 ")
    second = written.index(b"HTTP/1.1 200 ", first + 1)
    assert first == 0 and second < written.index(b"HTTP/1.1 100 Continue")


# -- HTTP/2 ------------------------------------------------------------------------------


def _ping(payload: bytes) -> bytes:
    return frame(PING, 0, 0, payload)


def _ping_ack(payload: bytes) -> bytes:
    return frame(PING, 1, 0, payload)


@pytest.mark.parametrize("others", [0, 1])
def test_http2_output_of_a_read_waits_for_the_turn_only_beside_other_connections(
    others: int,
) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        writes = TurnWrites(asyncio.get_running_loop())
        connections: set[Http2Connection] = set()
        for _ in range(others):
            connections.add(Http2Connection(NoCalls(), Http2Settings()))
        connection = Http2Connection(NoCalls(), Http2Settings(), connections, writes=writes)
        transport = RecordingTransport()
        connection.connection_made(transport)
        assert transport.written[3] == SETTINGS  # the server's preface: written at once
        start = len(transport.written)
        connection.data_received(PREFACE + frame(SETTINGS, 0, 0) + _ping(b"12345678"))
        during = transport.written[start:]
        await asyncio.sleep(0)
        return during, transport.written[start:]

    during, after = asyncio.run(scenario())
    assert _ping_ack(b"12345678") in after
    if others:
        assert during == b""
    else:
        assert during == after
