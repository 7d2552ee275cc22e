"""A minimal gRPC client over raw HTTP/2 frames, for driving load at low client cost.

The official Python stubs (``grpcio``) spend 100-170 us of client CPU per call, ten times
what the raw HTTP/1.1 client costs; on a machine whose cores the client shares with the
server that distorts a REST/gRPC comparison. This client does for gRPC what the REST client
does for HTTP: it speaks the wire protocol directly with bytes built once.

What it implements of HTTP/2 (RFC 9113) and gRPC's HTTP/2 mapping, and nothing more:

* the connection preface and SETTINGS, with ``SETTINGS_HEADER_TABLE_SIZE = 0`` so the
  server's HPACK encoder keeps no dynamic table (every header block decodes on its own,
  so only blocks of interest are decoded), a large initial window, and ACKs of the server's
  SETTINGS and PINGs;
* unary calls: one HEADERS frame (fixed HPACK block: POST, http, the method path,
  ``content-type: application/grpc``, ``te: trailers``) and one DATA frame with
  END_STREAM carrying the length-prefixed message, on a new odd stream id per call;
* flow control: it tracks the connection's and the stream's send windows (requests larger
  than the window wait for WINDOW_UPDATE) and returns received DATA bytes to the server's
  connection window once half of it is used, as grpc's own clients do (one WINDOW_UPDATE
  per answer would cost the server a read of its own per call, which no real client causes);
* answers: the DATA bytes (the length-prefixed response message) and the trailers' decoded
  ``grpc-status`` / ``grpc-message``. A stream reset or GOAWAY fails the affected calls.

One :class:`GrpcConnection` carries any number of concurrent calls (HTTP/2 streams). It is
a benchmark tool: no TLS, no compression, no deadline propagation.
"""

from __future__ import annotations

import asyncio
import struct
from typing import NamedTuple, cast

import hpack

from pyserving.server.http2 import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    frame,
    hpack_literal,
)

#: Our receive window (per stream and for the connection).
RECEIVE_WINDOW = MAX_WINDOW
#: Distinct trailer blocks kept decoded (see ``GrpcConnection._headers``).
MAX_CACHED_TRAILERS = 64
#: The server's frame size limit until it says otherwise (RFC 9113 default).
DEFAULT_MAX_FRAME = 16384
_STREAM_ID = struct.Struct(">I")


def request_headers(authority: str, path: str) -> bytes:
    """The HPACK block of a unary gRPC call (static-table indices of RFC 7541 App. A)."""
    return (
        b"\x83"  # :method POST (static 3)
        + b"\x86"  # :scheme http (static 6)
        + hpack_literal(4, path.encode())  # :path
        + hpack_literal(1, authority.encode())  # :authority
        + hpack_literal(31, b"application/grpc")  # content-type
        + hpack_literal(b"te", b"trailers")
    )


class Prepared(NamedTuple):
    """A call's HPACK block, length-prefixed body, and both frames as one write (stream id
    0, set per call; the DATA frame's header at ``data_at``)."""

    block: bytes
    body: bytes
    whole: bytes
    data_at: int


class GrpcCallError(Exception):
    """A call ended with a non-zero grpc-status, a reset stream or a lost connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"grpc-status {status}: {message}")
        self.status = status
        self.message = message


class _Call:
    __slots__ = ("data", "future", "headers_seen", "pending", "send_window")

    def __init__(self, future: asyncio.Future[bytes], send_window: int) -> None:
        self.future = future
        self.data: list[bytes] = []
        self.headers_seen = False
        self.pending = b""  # request DATA not yet sent (flow control)
        self.send_window = send_window


class GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection carrying unary gRPC calls (see the module docstring)."""

    def __init__(self, authority: str) -> None:
        self._authority = authority
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._calls: dict[int, _Call] = {}
        self._next_stream = 1
        self._send_window = 65535  # connection-level, the server's receive window
        self._unreturned = 0  # DATA bytes received and not yet given back to the server
        self._initial_stream_window = 65535
        self._max_frame = DEFAULT_MAX_FRAME
        self._blocked: list[int] = []  # streams waiting for window
        self._trailers: dict[bytes, dict[str, str]] = {}  # decoded trailer blocks
        self._continuation: tuple[int, int, bytearray] | None = None
        self._decoder = hpack.Decoder()
        self._lost: BaseException | None = None
        self._ready: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> GrpcConnection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(
            lambda: cls(f"{host}:{port}"), host, port
        )
        await protocol._wait_settings()
        return protocol

    async def _wait_settings(self) -> None:
        if self._ready is not None:
            await self._ready

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        settings = struct.pack(
            ">HIHI", SETTINGS_HEADER_TABLE_SIZE, 0, SETTINGS_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW
        )
        self._transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECEIVE_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(exc or ConnectionResetError("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the usual case: a read holds whole frames, nothing left over
        pos = 0
        end = len(view)
        unpack = FRAME_HEADER.unpack_from
        while end - pos >= 9:
            high, low, kind, flags, stream = unpack(view, pos)
            length = (high << 8) | low
            if end - pos < 9 + length:
                break
            start = pos + 9
            pos = start + length
            self._frame_received(kind, flags, stream & 0x7FFFFFFF, bytes(view[start:pos]))
        if view is buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]

    # -- frames --------------------------------------------------------------------------

    def _frame_received(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            call = self._calls.get(stream)
            self._unreturned += len(payload)
            if self._unreturned >= RECEIVE_WINDOW // 2 and self._transport is not None:
                # Give the bytes back to the connection window once half of it is used.
                increment, self._unreturned = self._unreturned, 0
                self._transport.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", increment)))
            if call is not None:
                call.data.append(payload)
                if flags & END_STREAM:
                    self._finish(stream, {})
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & PRIORITY_FLAG:
                    payload = payload[5:]
                if not flags & END_HEADERS:
                    self._continuation = (stream, flags, bytearray(payload))
                    return
                self._headers(stream, flags, payload)
            else:
                assert self._continuation is not None
                first_stream, first_flags, block = self._continuation
                block += payload
                if flags & END_HEADERS:
                    self._continuation = None
                    self._headers(first_stream, first_flags, bytes(block))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
                if self._transport is not None:
                    self._transport.write(frame(SETTINGS, ACK, 0))
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
        elif kind == PING:
            if not flags & ACK and self._transport is not None:
                self._transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self._send_window += increment
            elif stream in self._calls:
                self._calls[stream].send_window += increment
            self._flush_blocked()
        elif kind == RST_STREAM:
            code = struct.unpack(">I", payload)[0]
            call = self._calls.pop(stream, None)
            if call is not None and not call.future.done():
                call.future.set_exception(GrpcCallError(14, f"stream reset (code {code})"))
        elif kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            for sid in [s for s in self._calls if s > (last & 0x7FFFFFFF)]:
                call = self._calls.pop(sid)
                if not call.future.done():
                    call.future.set_exception(GrpcCallError(14, f"GOAWAY (code {code})"))

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack(">HI", payload[i : i + 6])
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._initial_stream_window
                self._initial_stream_window = value
                for call in self._calls.values():
                    call.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._max_frame = value
        self._flush_blocked()

    def _headers(self, stream: int, flags: int, block: bytes) -> None:
        call = self._calls.get(stream)
        if call is None:
            return
        if not call.headers_seen and not flags & END_STREAM:
            call.headers_seen = True  # response headers (:status 200, content-type)
            return
        # Trailers (or a trailers-only answer): decode for grpc-status. With no dynamic
        # table (SETTINGS_HEADER_TABLE_SIZE 0) a block decodes alike every time, so the same
        # bytes (the server's usual OK trailers) are decoded once.
        headers = self._trailers.get(block)
        if headers is None:
            headers = dict(self._decoder.decode(block, raw=False))
            if len(self._trailers) < MAX_CACHED_TRAILERS:
                self._trailers[block] = headers
        self._finish(stream, headers)

    def _finish(self, stream: int, trailers: dict[str, str]) -> None:
        call = self._calls.pop(stream, None)
        if call is None or call.future.done():
            return
        status = int(trailers.get("grpc-status", "0" if trailers else "2"))
        if status != 0 or not trailers:
            message = trailers.get("grpc-message", "stream ended without trailers")
            call.future.set_exception(GrpcCallError(status, message))
            return
        data = call.data
        body = data[0] if len(data) == 1 else b"".join(data)
        if len(body) < 5:
            call.future.set_exception(GrpcCallError(2, "answer without a message"))
            return
        call.future.set_result(body[5:])

    def _fail_all(self, exc: BaseException) -> None:
        self._lost = exc
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.future.done():
                call.future.set_exception(GrpcCallError(14, str(exc)))
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)

    # -- calls ---------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._lost is None and self._transport is not None

    def prepare(self, method_path: str, message: bytes) -> Prepared:
        """A call's bytes, built once, to pass to :meth:`call` any number of times."""
        block = request_headers(self._authority, method_path)
        body = b"\x00" + struct.pack(">I", len(message)) + message
        head = frame(HEADERS, END_HEADERS, 0, block)
        return Prepared(block, body, head + frame(DATA, END_STREAM, 0, body), len(head))

    def call(self, prepared: Prepared) -> asyncio.Future[bytes]:
        """Start a unary call; the future resolves to the serialized response message."""
        assert self._transport is not None
        block, body, whole, data_at = prepared
        stream = self._next_stream
        self._next_stream += 2
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        call = _Call(future, self._initial_stream_window)
        self._calls[stream] = call
        n = len(body)
        if n <= call.send_window and n <= self._send_window and n <= self._max_frame:
            call.send_window -= n
            self._send_window -= n
            # Both frames in one write: the prepared bytes with this call's stream id.
            out = bytearray(whole)
            _STREAM_ID.pack_into(out, 5, stream)
            _STREAM_ID.pack_into(out, data_at + 5, stream)
            self._transport.write(out)
        else:
            head = frame(HEADERS, END_HEADERS, stream, block)
            self._transport.write(head)
            call.pending = body
            self._blocked.append(stream)
            self._flush_blocked()
        return future

    def _flush_blocked(self) -> None:
        if self._transport is None:
            return
        still: list[int] = []
        for stream in self._blocked:
            call = self._calls.get(stream)
            if call is None:
                continue
            while call.pending:
                n = min(len(call.pending), call.send_window, self._send_window, self._max_frame)
                if n <= 0:
                    break
                chunk, call.pending = call.pending[:n], call.pending[n:]
                call.send_window -= n
                self._send_window -= n
                flags = END_STREAM if not call.pending else 0
                self._transport.write(frame(DATA, flags, stream, chunk))
            if call.pending:
                still.append(stream)
        self._blocked = still

    def close(self) -> None:
        if self._transport is not None:
            self._transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
            self._transport.close()
