"""A server-side HTTP/2 connection (RFC 9113) on an asyncio event loop, for gRPC.

:class:`Http2Connection` is an ``asyncio.Protocol``: it reads frames, keeps the streams a
client opens, and hands each complete request (its headers and body) to a
:class:`StreamHandler`; the handler answers through :meth:`Http2Connection.respond`,
:meth:`Http2Connection.send_headers` / :meth:`~Http2Connection.send_message` (for answers
sent in parts). It implements what gRPC over HTTP/2 uses and nothing more:

* the connection preface, SETTINGS (both ways, with ACKs), PING ACKs, GOAWAY both ways,
  RST_STREAM both ways, PRIORITY frames (ignored) and unknown frame types (ignored);
* HEADERS with CONTINUATION, padding and priority fields; header blocks are decoded with
  ``hpack`` (the client's dynamic table is honoured); answers are encoded without the
  dynamic table (static-table indices and literals), so they need no encoder state;
* flow control both ways: the receive windows are large and refilled as bytes arrive, and
  answers wait for the client's windows (connection and stream) and are cut to the client's
  ``SETTINGS_MAX_FRAME_SIZE``; trailers follow the last byte of data;
* limits: at most :attr:`Http2Settings.max_concurrent_streams` open streams (more are
  refused with ``REFUSED_STREAM``); the handler sees each part of a body that comes in
  several DATA frames and may refuse it early; a body above
  :attr:`Http2Settings.max_body_bytes` is always refused (the stream is reset); header
  lists over :attr:`Http2Settings.max_header_list_bytes` and SETTINGS frames of more than
  :data:`MAX_SETTINGS_ENTRIES` entries end the connection; while the client reads its answers
  slower than they are written (:data:`WRITE_HIGH_WATER`), its connection is not read;
* connection errors (a malformed frame, a bad preface, an undecodable header block) end the
  connection with GOAWAY and the error code; stream errors reset only that stream.

Threading: every method runs on the connection's event loop. Handlers that finish on
another thread must come back with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import hpack

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY_FRAME, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Settings identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

#: Largest window (RFC 9113 section 6.9.1).
MAX_WINDOW = (1 << 31) - 1
#: The peer's frame size limit and stream window until its SETTINGS say otherwise.
DEFAULT_MAX_FRAME = 16384
DEFAULT_WINDOW = 65535
#: The frame size this server accepts (advertised in its SETTINGS).
RECEIVE_MAX_FRAME = 1 << 20
#: Decoded header blocks kept per connection (see ``Http2Connection._decode_headers``).
HEADER_CACHE_SIZE = 64
#: A SETTINGS frame with more entries is abuse (there are six settings).
MAX_SETTINGS_ENTRIES = 64
#: While the transport holds more unsent bytes than this, the connection stops reading.
WRITE_HIGH_WATER = 4 << 20


class ConnectionError_(Exception):
    """A connection error: the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 9-byte header and payload."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + (stream_id & 0x7FFFFFFF).to_bytes(4, "big")
        + payload
    )


def hpack_string(value: bytes) -> bytes:
    """An HPACK string literal without Huffman coding (RFC 7541 section 5.2)."""
    return hpack_integer(len(value), 7, 0) + value


def hpack_integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 section 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes | int, value: bytes) -> bytes:
    """A header field "literal without indexing" (RFC 7541 section 6.2.2): ``name`` is a
    static-table index or the name itself. Needs no encoder state."""
    if isinstance(name, int):
        return hpack_integer(name, 4, 0) + hpack_string(value)
    return b"\x00" + hpack_string(name) + hpack_string(value)


@dataclass(frozen=True)
class Http2Settings:
    """What one connection allows.

    ``max_concurrent_streams``: open streams per connection (advertised; more are refused).
    ``max_body_bytes``: a request body above this is refused (the handler's
    ``body_received`` answers it; the stream is then reset).
    ``max_header_list_bytes``: decoded header list size limit (advertised and enforced).
    ``preface_timeout_seconds``: a connection that has not sent the HTTP/2 preface by then
    is closed (a port scan or a stuck client does not hold a socket forever).
    """

    max_concurrent_streams: int = 256
    max_body_bytes: int = MAX_WINDOW
    max_header_list_bytes: int = 64 << 10
    preface_timeout_seconds: float = 10.0


@dataclass(eq=False)
class Stream:
    """One client-initiated stream: its request, and what is still to be sent of its answer.

    ``headers``: the request's decoded header fields, in order (names lower-case).
    ``body``: request DATA received so far. ``closed_remote``: the request is complete.
    ``cancelled``: reset by the client or lost with the connection; answers are dropped.
    ``on_cancel``: called once on the loop when the stream is cancelled.
    """

    id: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    closed_remote: bool = False
    cancelled: bool = False
    finished: bool = False  # the answer's last frame is queued or sent
    send_window: int = DEFAULT_WINDOW
    receive_window: int = MAX_WINDOW
    pending: bytearray = field(default_factory=bytearray)  # DATA waiting for window
    pending_trailers: bytes | None = None
    on_cancel: list[Callable[[], None]] = field(default_factory=list)
    context: Any = None  # the handler's state for this stream

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default


class StreamHandler(Protocol):
    """What :class:`Http2Connection` calls; every call is on the connection's loop."""

    def request_received(self, connection: Http2Connection, stream: Stream) -> None:
        """The request of ``stream`` is complete (headers and body); answer it (now or
        later) with :meth:`Http2Connection.respond` or its parts."""

    def body_received(self, connection: Http2Connection, stream: Stream) -> bool:
        """Part of the body arrived (``stream.body``), and more is to come or it is over
        ``max_body_bytes``. False refuses the request: the handler has answered with an
        error, and the stream is reset. Over the limit it is refused whatever this says."""


class Http2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection (see the module docstring)."""

    def __init__(
        self,
        handler: StreamHandler,
        settings: Http2Settings,
        connections: set[Http2Connection] | None = None,
    ) -> None:
        self._handler = handler
        self._settings = settings
        self._connections = connections
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = settings.max_header_list_bytes
        self._header_cache: dict[bytes, list[tuple[str, str]]] = {}
        self.streams: dict[int, Stream] = {}
        self._last_stream_id = 0
        self._continuation: tuple[int, int, bytearray] | None = None
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._receive_window = DEFAULT_WINDOW
        self._blocked: dict[int, Stream] = {}  # streams with DATA waiting for window
        self._going_away = False
        self._out: list[bytes] | None = None  # writes collected while reading
        self._preface_timer: asyncio.TimerHandle | None = None
        self.peer = ""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        if self._connections is not None:
            self._connections.add(self)
        self._preface_timer = asyncio.get_running_loop().call_later(
            self._settings.preface_timeout_seconds, self._preface_expired
        )
        settings = struct.pack(
            ">HIHIHIHI",
            SETTINGS_MAX_CONCURRENT_STREAMS,
            self._settings.max_concurrent_streams,
            SETTINGS_INITIAL_WINDOW_SIZE,
            MAX_WINDOW,
            SETTINGS_MAX_FRAME_SIZE,
            RECEIVE_MAX_FRAME,
            SETTINGS_MAX_HEADER_LIST_SIZE,
            self._settings.max_header_list_bytes,
        )
        self._receive_window = MAX_WINDOW
        self.transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW))
        )

    def pause_writing(self) -> None:
        """The client reads slower than answers are written: stop reading its requests (and
        PINGs, SETTINGS) until the transport's buffer drains."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _preface_expired(self) -> None:
        if not self._preface_seen and self.transport is not None:
            log.debug("HTTP/2 client %s sent no preface in time; closing", self.peer)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        if self._connections is not None:
            self._connections.discard(self)
        self.transport = None
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._cancel(stream)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        self._out = out = []
        try:
            pos = 0
            if not self._preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buffer)):
                        raise ConnectionError_(PROTOCOL_ERROR, "invalid connection preface")
                    return
                if bytes(buffer[: len(PREFACE)]) != PREFACE:
                    raise ConnectionError_(PROTOCOL_ERROR, "invalid connection preface")
                pos = len(PREFACE)
                self._preface_seen = True
                if self._preface_timer is not None:
                    self._preface_timer.cancel()
            end = len(buffer)
            while end - pos >= 9 and self.transport is not None:
                length = (buffer[pos] << 16) | (buffer[pos + 1] << 8) | buffer[pos + 2]
                if length > RECEIVE_MAX_FRAME:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - pos < 9 + length:
                    break
                kind = buffer[pos + 3]
                flags = buffer[pos + 4]
                stream_id = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame_received(kind, flags, stream_id, payload)
            del buffer[:pos]
        except ConnectionError_ as exc:
            log.debug("HTTP/2 connection error from %s: %s", self.peer, exc)
            debug = str(exc).encode()[:256]
            out.append(
                frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream_id, exc.code) + debug)
            )
            self._flush_out()
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            if self._out is out:
                self._flush_out()

    def _flush_out(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def _write(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- frames --------------------------------------------------------------------------

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload)
            else:
                self._continuation = (stream_id, flags, bytearray(payload))
        elif kind == CONTINUATION:
            if self._continuation is None or self._continuation[0] != stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
            first_id, first_flags, block = self._continuation
            block += payload
            if len(block) > self._settings.max_header_list_bytes:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                self._continuation = None
                self._headers(first_id, first_flags, bytes(block))
        elif kind == SETTINGS:
            if stream_id != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                if len(payload) % 6:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS length")
                if len(payload) > 6 * MAX_SETTINGS_ENTRIES:
                    raise ConnectionError_(ENHANCE_YOUR_CALM, "too many SETTINGS entries")
                self._apply_settings(payload)
                self._write(frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if len(payload) != 8 or stream_id != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "malformed PING")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            self._window_update(stream_id, increment)
        elif kind == RST_STREAM:
            if len(payload) != 4 or stream_id == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "malformed RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                self._cancel(stream)
        elif kind == GOAWAY:
            self._going_away = True  # the client closes the connection when it is done
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored.

    def _apply_settings(self, payload: bytes) -> None:
        initial_window = self._peer_initial_window
        for i in range(0, len(payload), 6):
            key, value = struct.unpack(">HI", payload[i : i + 6])
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                initial_window = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= (1 << 24) - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "invalid max frame size")
                self._peer_max_frame = value
        delta = initial_window - self._peer_initial_window
        if delta:
            self._peer_initial_window = initial_window
            for stream in self.streams.values():
                stream.send_window += delta
        if delta > 0:
            self._flush_blocked()

    def _window_update(self, stream_id: int, increment: int) -> None:
        if increment == 0:
            if stream_id == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._reset(stream_id, PROTOCOL_ERROR)
            return
        if stream_id == 0:
            exhausted = self._send_window <= 0
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
            if exhausted:
                # Only then can a stream be waiting for the connection's window: one waiting
                # for its own leaves the connection's above zero.
                self._flush_blocked()
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._reset(stream_id, FLOW_CONTROL_ERROR)
                return
            if stream_id in self._blocked:
                self._flush_stream(stream)

    def _decode_headers(self, block: bytes) -> list[tuple[str, str]]:
        """Decode a header block; identical blocks that left the dynamic table as it was
        (a client's repeated calls) are decoded once while the table stays unchanged."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            decoded = self._decoder.decode(block, raw=False)
        except Exception as exc:  # hpack's HPACKError, OversizedHeaderListError, ...
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {exc}") from None
        headers = [(str(name), str(value)) for name, value in decoded]
        entries = table.dynamic_entries
        if (len(entries), entries[0] if entries else None, table.maxsize) != before:
            self._header_cache.clear()  # the table changed: cached blocks may mean otherwise
        elif len(self._header_cache) < HEADER_CACHE_SIZE:
            self._header_cache[block] = headers
        return headers

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decode_headers(block)
        stream = self.streams.get(stream_id)
        if stream is not None:
            if stream.closed_remote:
                self._reset(stream_id, STREAM_CLOSED)  # HEADERS after the request ended
                return
            # Trailers from the client: the request ends here.
            if not flags & END_STREAM:
                raise ConnectionError_(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._end_of_request(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            if stream_id <= self._last_stream_id and stream_id % 2:
                return  # a closed stream: ignore (its RST may have crossed our answer)
            raise ConnectionError_(PROTOCOL_ERROR, f"invalid stream id {stream_id}")
        self._last_stream_id = stream_id
        if self._going_away or len(self.streams) >= self._settings.max_concurrent_streams:
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        stream = Stream(stream_id, headers, send_window=self._peer_initial_window)
        self.streams[stream_id] = stream
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._receive_window -= size
        if self._receive_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window exceeded")
        if self._receive_window < MAX_WINDOW // 2:
            increment = MAX_WINDOW - self._receive_window
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", increment)))
            self._receive_window = MAX_WINDOW
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed_remote:
            if stream_id > self._last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # closed or reset stream: the window was accounted for above
        if stream.finished or stream.cancelled:
            return
        if payload:
            stream.body.append(payload)
            stream.body_bytes += len(payload)
        too_large = stream.body_bytes > self._settings.max_body_bytes
        if (too_large or not flags & END_STREAM) and (
            not self._call_handler(self._handler.body_received, stream) or too_large
        ):
            self.reset(stream, CANCEL)  # answered already (an error), or not at all
            return
        stream.receive_window -= size
        if stream.receive_window < 0:
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            return
        if not flags & END_STREAM and stream.receive_window < MAX_WINDOW // 2:
            increment = MAX_WINDOW - stream.receive_window
            self._write(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment)))
            stream.receive_window = MAX_WINDOW
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _end_of_request(self, stream: Stream) -> None:
        stream.closed_remote = True
        self._call_handler(self._handler.request_received, stream)

    def _call_handler(
        self, method: Callable[[Http2Connection, Stream], bool | None], stream: Stream
    ) -> bool:
        """Call a handler method; if it raises (a bug), only ``stream`` ends (INTERNAL_ERROR),
        never the connection and the other calls on it. False when it raised or said no."""
        try:
            return method(self, stream) is not False
        except Exception:
            log.exception("HTTP/2 stream handler failed; resetting stream %d", stream.id)
            self.reset(stream, INTERNAL_ERROR)
            return False

    # -- answers -------------------------------------------------------------------------

    def respond(self, stream: Stream, headers: bytes, data: bytes, trailers: bytes) -> None:
        """Send a whole answer: a HEADERS block, DATA (may be empty), then a trailing
        HEADERS block that ends the stream. Blocks are HPACK bytes (see
        :func:`hpack_literal`); DATA waits for the client's windows."""
        if not self._open(stream):
            return
        collect = self._out is None  # outside data_received: one write for the three parts
        if collect:
            self._out = []
        try:
            self.send_headers(stream, headers)
            self.send_data(stream, data)
            self.send_trailers(stream, trailers)
        finally:
            if collect:
                self._flush_out()

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool = False) -> None:
        """A HEADERS block (with END_STREAM for a trailers-only answer)."""
        if not self._open(stream):
            return
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self._write_headers(stream.id, flags, block)
        if end_stream:
            self._finish(stream)

    def send_data(self, stream: Stream, data: bytes) -> None:
        """DATA bytes, sent as the windows allow (the rest waits for WINDOW_UPDATE)."""
        if not self._open(stream) or not data:
            return
        if stream.pending:
            stream.pending += data
            return
        n = len(data)
        if n <= stream.send_window and n <= self._send_window and n <= self._peer_max_frame:
            stream.send_window -= n
            self._send_window -= n
            self._write(frame(DATA, 0, stream.id, data))
            return
        stream.pending += data
        self._blocked[stream.id] = stream
        self._flush_stream(stream)

    def send_trailers(self, stream: Stream, block: bytes) -> None:
        """The trailing HEADERS block; ends the stream once all DATA is sent."""
        if not self._open(stream):
            return
        if stream.pending:
            stream.pending_trailers = block
            return
        self._write_headers(stream.id, END_HEADERS | END_STREAM, block)
        self._finish(stream)

    def reset(self, stream: Stream, code: int = CANCEL) -> None:
        """End ``stream`` with RST_STREAM (no answer follows)."""
        if self.streams.get(stream.id) is stream:
            self._reset(stream.id, code)

    def close(self) -> None:
        """Close the connection now (streams still open are cancelled)."""
        if self._out is not None:
            self._flush_out()
        if self.transport is not None:
            self.transport.close()

    def go_away(self) -> None:
        """Announce shutdown (GOAWAY, NO_ERROR): streams already open are answered, new ones
        are refused; the connection closes once the open streams are done."""
        if self._going_away and self.transport is None:
            return
        self._going_away = True
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream_id, NO_ERROR)))

    def _open(self, stream: Stream) -> bool:
        return not stream.cancelled and not stream.finished and self.transport is not None

    def _write_headers(self, stream_id: int, flags: int, block: bytes) -> None:
        limit = self._peer_max_frame
        if len(block) <= limit:
            self._write(frame(HEADERS, flags, stream_id, block))
            return
        first = flags & ~END_HEADERS
        self._write(frame(HEADERS, first, stream_id, block[:limit]))
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            part = block[start : start + limit]
            self._write(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, part))

    def _flush_blocked(self) -> None:
        """Send what the windows now allow of every stream waiting for window."""
        for stream in list(self._blocked.values()):
            self._flush_stream(stream)

    def _flush_stream(self, stream: Stream) -> None:
        """Send what the windows allow of ``stream``'s pending DATA (and then its trailers);
        it stays in ``_blocked`` while DATA is left."""
        if not self._open(stream):
            self._blocked.pop(stream.id, None)
            return
        while stream.pending:
            n = min(
                len(stream.pending), stream.send_window, self._send_window, self._peer_max_frame
            )
            if n <= 0:
                return
            chunk = bytes(stream.pending[:n])
            del stream.pending[:n]
            stream.send_window -= n
            self._send_window -= n
            self._write(frame(DATA, 0, stream.id, chunk))
        self._blocked.pop(stream.id, None)
        if stream.pending_trailers is not None:
            self._write_headers(stream.id, END_HEADERS | END_STREAM, stream.pending_trailers)
            stream.pending_trailers = None
            self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        stream.finished = True
        if not stream.closed_remote:
            # Answered before the request ended (an error): the rest is not wanted.
            self._write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
        self.streams.pop(stream.id, None)

    def _reset(self, stream_id: int, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._cancel(stream)

    def _cancel(self, stream: Stream) -> None:
        if stream.cancelled or stream.finished:
            return
        stream.cancelled = True
        callbacks, stream.on_cancel = stream.on_cancel, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # pragma: no cover - a handler's bug must not end the loop
                log.exception("stream cancel callback failed")


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(PROTOCOL_ERROR, "padded frame without pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


__all__ = [
    "Http2Connection",
    "Http2Settings",
    "Stream",
    "StreamHandler",
    "frame",
    "hpack_literal",
]
