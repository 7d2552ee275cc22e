"""The server side of one HTTP/2 connection (RFC 9113, HPACK RFC 7541), sans I/O.

:class:`ServerConnection` is a state machine: bytes in, events out, bytes to send. It owns
no socket, no event loop and no thread, and reads time only through the clock it is given,
so every rule below is tested by feeding it bytes (``tests/server/test_h2sansio.py``).
``http2.py`` runs it on asyncio for the gRPC front end.

Contract::

    connection = ServerConnection(settings, clock)
    connection.initiate()                        # queues the server's SETTINGS
    events = connection.receive(data)            # any number of times, bytes as they come
    ... answer with respond() / send_headers() / send_data() / send_trailers() / reset()
    transport.write(connection.data_to_send())   # everything queued since the last call
    connection.next_deadline() / expire()        # the preface, header-block and request timers

What it implements of RFC 9113, for a server that clients open streams on:

* the preface, SETTINGS both ways (validated: ``ENABLE_PUSH`` 0 or 1, window and frame size
  ranges, ACKs without payload, lengths), PING, GOAWAY both ways, WINDOW_UPDATE, RST_STREAM,
  PRIORITY (validated, otherwise ignored), HEADERS with CONTINUATION, padding and priority
  fields; frames of unknown types are ignored; frames over 16 KiB (the size it advertises,
  as gRPC servers do) are a ``FRAME_SIZE_ERROR``;
* stream states (section 5.1) as an explicit table, :data:`TRANSITIONS`, of (state, frame)
  to (next state, outcome), with closed streams remembered (:data:`CLOSED_STREAMS_KEPT`):
  frames on idle streams, on half-closed and closed streams and HEADERS reusing a lower
  stream id get the stream or connection error the RFC names; frames on a stream this side
  reset are ignored (they may have crossed the reset);
* request header validation (section 8.2-8.3): lower-case names without forbidden
  characters, values without CR, LF, NUL or surrounding whitespace, the request
  pseudo-headers (``:method``, ``:scheme``, ``:path`` once each and first, no others), no
  connection-specific fields, ``te`` only ``trailers``, ``content-length`` equal to the DATA
  received; trailers without pseudo-headers and with END_STREAM. A malformed request is a
  stream error (``PROTOCOL_ERROR``), never seen by the application;
* flow control both ways: receive windows are large and refilled as bytes arrive; answers
  wait for the client's windows (connection and stream, including changes of
  ``SETTINGS_INITIAL_WINDOW_SIZE``, whose overflow is a ``FLOW_CONTROL_ERROR``) and are cut
  to the client's ``SETTINGS_MAX_FRAME_SIZE``; trailers follow the last byte of data;
* HPACK: header blocks are decoded with ``hpack`` (the client's dynamic table is honoured);
  answers are encoded by :class:`HeaderEncoder`, which indexes the fields every answer
  repeats in the dynamic table the client allows (``SETTINGS_HEADER_TABLE_SIZE``).

Limits, each keeping one client from hurting others (:class:`Http2Settings`):

* header blocks: a block (HEADERS and its CONTINUATIONs) over ``max_header_block_bytes``
  ends the connection before it is decoded, as does a block opening with more than two
  dynamic-table size updates; a block is decoded in full up to that hard limit so the HPACK
  state stays in step, and a request whose header list is over ``max_header_list_bytes``
  (the advertised limit) is refused on its own (:class:`RequestRejected`); refused header
  lists may make the server decode at most 8 hard limits' worth at once and one per second
  after that, or the connection ends (``ENHANCE_YOUR_CALM``). Decoded blocks that leave the
  dynamic table unchanged (a client's repeated calls) are cached, within
  :data:`HEADER_CACHE_BYTES` per connection;
* streams: at most ``max_concurrent_streams`` open (more are refused, ``REFUSED_STREAM``);
  a request must be complete within ``request_timeout_seconds`` of its HEADERS (else
  :class:`RequestRejected`), a header block within the same time (else the connection
  ends), and the preface within ``preface_timeout_seconds`` (else the connection ends);
* floods: resets by the client of streams it opened and this side has not answered yet
  ("rapid reset") and frames that carry no work (PING, SETTINGS, PRIORITY, unknown types,
  empty DATA or CONTINUATION that end nothing) each draw from a token bucket
  (``reset_burst`` / ``reset_rate``, ``control_frame_burst`` / ``control_frame_rate``);
  an empty bucket ends the connection with ``GOAWAY ENHANCE_YOUR_CALM``. A request reset
  in the same :meth:`ServerConnection.receive` call that completed it is never handed out.

Connection errors queue a GOAWAY with the error code and a :class:`ConnectionTerminated`
event; the connection then ignores input. Stream errors reset only that stream.
Not thread-safe: one caller at a time.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hpack
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY_FRAME, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Settings identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
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
#: The frame size this server accepts: the protocol's default, which it also advertises.
RECEIVE_MAX_FRAME = DEFAULT_MAX_FRAME
#: The HPACK dynamic table size both sides start with, and the most answers ever use.
DEFAULT_HEADER_TABLE = 4096
#: Decoded header blocks kept per connection (see ``ServerConnection._decode``): at most this
#: many, of at most :data:`HEADER_CACHE_BYTES` together (blocks and decoded lists).
HEADER_CACHE_ENTRIES = 64
HEADER_CACHE_BYTES = 64 << 10
#: A SETTINGS frame with more entries is abuse (there are six settings).
MAX_SETTINGS_ENTRIES = 64
#: How many closed streams' ways of closing are remembered (older ones count as closed by
#: this side: frames on them are ignored, HEADERS reusing their ids are a PROTOCOL_ERROR).
CLOSED_STREAMS_KEPT = 256

#: Header fields that make a request malformed in HTTP/2 (RFC 9113 section 8.2.2).
CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
#: The pseudo-header fields a request may carry (no extended CONNECT).
REQUEST_PSEUDO = frozenset({":method", ":scheme", ":path", ":authority"})
_FORBIDDEN_NAME = frozenset(
    bytes(range(0x21)) + b":" + bytes(range(0x41, 0x5B)) + bytes(range(0x7F, 256))
)
_FORBIDDEN_VALUE = ("\x00", "\r", "\n")


class ProtocolViolation(Exception):
    """A connection error: the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


#: A frame's 9-byte header: the 24-bit length as 16 + 8 bits, type, flags, stream id.
FRAME_HEADER = struct.Struct(">HBBBI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 9-byte header and payload."""
    n = len(payload)
    return FRAME_HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id & 0x7FFFFFFF) + payload


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


def hpack_string(value: bytes) -> bytes:
    """An HPACK string literal without Huffman coding (RFC 7541 section 5.2)."""
    return hpack_integer(len(value), 7, 0) + value


def hpack_literal(name: bytes | int, value: bytes) -> bytes:
    """A header field "literal without indexing" (RFC 7541 section 6.2.2): ``name`` is a
    static-table index or the name itself. Needs no encoder state."""
    if isinstance(name, int):
        return hpack_integer(name, 4, 0) + hpack_string(value)
    return b"\x00" + hpack_string(name) + hpack_string(value)


#: A header list to send: (name, value) pairs, names lower-case.
Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Http2Settings:
    """What one connection allows (every limit per connection).

    ``max_concurrent_streams``: open streams (advertised; more are refused).
    ``max_body_bytes``: a request body above this is refused (the application sees it in
    :class:`BodyReceived` and answers; the stream is then reset).
    ``max_header_list_bytes``: the advertised ``SETTINGS_MAX_HEADER_LIST_SIZE`` (decoded
    size: names, values and 32 bytes per field); a request over it is refused on its own
    with :class:`RequestRejected`.
    ``max_header_block_bytes``: the hard limit: a header block longer than this, or decoding
    to more, ends the connection (``ENHANCE_YOUR_CALM``); at least ``max_header_list_bytes``.
    ``preface_timeout_seconds``: a connection that has not sent the preface by then ends.
    ``request_timeout_seconds``: a request (HEADERS to END_STREAM) must be complete this long
    after its HEADERS arrived, a header block this long after it started.
    ``reset_burst`` / ``reset_rate``: a token bucket (burst, tokens per second) for resets of
    streams the client opened and this side had not answered yet.
    ``control_frame_burst`` / ``control_frame_rate``: the same for frames that carry no work
    (PING, SETTINGS, PRIORITY, unknown types, empty DATA and CONTINUATION that end nothing,
    frames answered with a reset because their stream is closed).
    """

    max_concurrent_streams: int = 256
    max_body_bytes: int = MAX_WINDOW
    max_header_list_bytes: int = 64 << 10
    max_header_block_bytes: int = 128 << 10
    preface_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 60.0
    reset_burst: int = 1000
    reset_rate: float = 100.0
    control_frame_burst: int = 1000
    control_frame_rate: float = 100.0

    def __post_init__(self) -> None:
        if self.max_header_block_bytes < self.max_header_list_bytes:
            raise ValueError("max_header_block_bytes must be at least max_header_list_bytes")


class StreamState(enum.IntEnum):
    """Where a stream is (RFC 9113 section 5.1, server side). ``CLOSED`` is the normal end
    (END_STREAM both ways); a reset closes in ``RESET_SENT`` or ``RESET_RECEIVED``, which
    differ in how late frames are treated. ``FORGOTTEN`` is a stream id at or below the
    highest one used that is not remembered (never used, or closed long ago); ``IDLE`` an id
    above it."""

    IDLE = 0
    OPEN = 1
    HALF_CLOSED_REMOTE = 2
    HALF_CLOSED_LOCAL = 3
    CLOSED = 4
    RESET_SENT = 5
    RESET_RECEIVED = 6
    FORGOTTEN = 7


class StreamInput(enum.IntEnum):
    """What happens to a stream: a frame received or sent."""

    RECV_HEADERS = 0  # a header block on a stream that exists (trailers) or existed
    RECV_DATA = 1
    RECV_END_STREAM = 2  # after the frame carrying it was applied
    RECV_RST = 3
    RECV_WINDOW_UPDATE = 4
    RECV_PRIORITY = 5
    SEND_END_STREAM = 6
    SEND_RST = 7


class Outcome(enum.IntEnum):
    """What a transition asks for besides the new state."""

    OK = 0
    IGNORE = 1  # drop the frame (flow control is still accounted)
    STREAM_CLOSED_STREAM_ERROR = 2  # RST_STREAM STREAM_CLOSED
    STREAM_CLOSED_CONNECTION_ERROR = 3  # GOAWAY STREAM_CLOSED
    PROTOCOL_CONNECTION_ERROR = 4  # GOAWAY PROTOCOL_ERROR


_S, _I, _O = StreamState, StreamInput, Outcome

#: (state, input) -> (next state, outcome). A pair that is absent cannot happen (a new
#: stream is opened by :meth:`ServerConnection._new_stream`, sending needs an open stream).
TRANSITIONS: dict[tuple[StreamState, StreamInput], tuple[StreamState, Outcome]] = {
    # open: the request is arriving.
    (_S.OPEN, _I.RECV_HEADERS): (_S.OPEN, _O.OK),  # trailers (END_STREAM checked apart)
    (_S.OPEN, _I.RECV_DATA): (_S.OPEN, _O.OK),
    (_S.OPEN, _I.RECV_END_STREAM): (_S.HALF_CLOSED_REMOTE, _O.OK),
    (_S.OPEN, _I.RECV_RST): (_S.RESET_RECEIVED, _O.OK),
    (_S.OPEN, _I.RECV_WINDOW_UPDATE): (_S.OPEN, _O.OK),
    (_S.OPEN, _I.RECV_PRIORITY): (_S.OPEN, _O.OK),
    (_S.OPEN, _I.SEND_END_STREAM): (_S.HALF_CLOSED_LOCAL, _O.OK),
    (_S.OPEN, _I.SEND_RST): (_S.RESET_SENT, _O.OK),
    # half-closed (remote): the request is complete, the answer is being sent.
    (_S.HALF_CLOSED_REMOTE, _I.RECV_HEADERS): (
        _S.HALF_CLOSED_REMOTE,
        _O.STREAM_CLOSED_STREAM_ERROR,
    ),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_DATA): (_S.HALF_CLOSED_REMOTE, _O.STREAM_CLOSED_STREAM_ERROR),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_RST): (_S.RESET_RECEIVED, _O.OK),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_WINDOW_UPDATE): (_S.HALF_CLOSED_REMOTE, _O.OK),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_PRIORITY): (_S.HALF_CLOSED_REMOTE, _O.OK),
    (_S.HALF_CLOSED_REMOTE, _I.SEND_END_STREAM): (_S.CLOSED, _O.OK),
    (_S.HALF_CLOSED_REMOTE, _I.SEND_RST): (_S.RESET_SENT, _O.OK),
    # half-closed (local): answered before the request ended (this side then resets it).
    (_S.HALF_CLOSED_LOCAL, _I.RECV_HEADERS): (_S.HALF_CLOSED_LOCAL, _O.OK),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_DATA): (_S.HALF_CLOSED_LOCAL, _O.OK),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_END_STREAM): (_S.CLOSED, _O.OK),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_RST): (_S.RESET_RECEIVED, _O.OK),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_WINDOW_UPDATE): (_S.HALF_CLOSED_LOCAL, _O.OK),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_PRIORITY): (_S.HALF_CLOSED_LOCAL, _O.OK),
    (_S.HALF_CLOSED_LOCAL, _I.SEND_RST): (_S.RESET_SENT, _O.OK),
    # closed after END_STREAM both ways: late DATA is a stream error, HEADERS a connection
    # error (section 5.1); WINDOW_UPDATE, RST_STREAM and PRIORITY may still cross.
    (_S.CLOSED, _I.RECV_HEADERS): (_S.CLOSED, _O.STREAM_CLOSED_CONNECTION_ERROR),
    (_S.CLOSED, _I.RECV_DATA): (_S.CLOSED, _O.STREAM_CLOSED_STREAM_ERROR),
    (_S.CLOSED, _I.RECV_RST): (_S.CLOSED, _O.IGNORE),
    (_S.CLOSED, _I.RECV_WINDOW_UPDATE): (_S.CLOSED, _O.IGNORE),
    (_S.CLOSED, _I.RECV_PRIORITY): (_S.CLOSED, _O.IGNORE),
    # reset by this side: the client may have sent frames before it saw the reset.
    (_S.RESET_SENT, _I.RECV_HEADERS): (_S.RESET_SENT, _O.IGNORE),
    (_S.RESET_SENT, _I.RECV_DATA): (_S.RESET_SENT, _O.IGNORE),
    (_S.RESET_SENT, _I.RECV_RST): (_S.RESET_SENT, _O.IGNORE),
    (_S.RESET_SENT, _I.RECV_WINDOW_UPDATE): (_S.RESET_SENT, _O.IGNORE),
    (_S.RESET_SENT, _I.RECV_PRIORITY): (_S.RESET_SENT, _O.IGNORE),
    # reset by the client: it must not send on the stream again.
    (_S.RESET_RECEIVED, _I.RECV_HEADERS): (_S.RESET_RECEIVED, _O.STREAM_CLOSED_STREAM_ERROR),
    (_S.RESET_RECEIVED, _I.RECV_DATA): (_S.RESET_RECEIVED, _O.STREAM_CLOSED_STREAM_ERROR),
    (_S.RESET_RECEIVED, _I.RECV_RST): (_S.RESET_RECEIVED, _O.IGNORE),
    (_S.RESET_RECEIVED, _I.RECV_WINDOW_UPDATE): (_S.RESET_RECEIVED, _O.IGNORE),
    (_S.RESET_RECEIVED, _I.RECV_PRIORITY): (_S.RESET_RECEIVED, _O.IGNORE),
    # an id below the highest used that is not remembered: a new stream cannot have it.
    (_S.FORGOTTEN, _I.RECV_HEADERS): (_S.FORGOTTEN, _O.PROTOCOL_CONNECTION_ERROR),
    (_S.FORGOTTEN, _I.RECV_DATA): (_S.FORGOTTEN, _O.STREAM_CLOSED_STREAM_ERROR),
    (_S.FORGOTTEN, _I.RECV_RST): (_S.FORGOTTEN, _O.IGNORE),
    (_S.FORGOTTEN, _I.RECV_WINDOW_UPDATE): (_S.FORGOTTEN, _O.IGNORE),
    (_S.FORGOTTEN, _I.RECV_PRIORITY): (_S.FORGOTTEN, _O.IGNORE),
    # idle: only HEADERS (opening the stream) and PRIORITY may arrive.
    (_S.IDLE, _I.RECV_DATA): (_S.IDLE, _O.PROTOCOL_CONNECTION_ERROR),
    (_S.IDLE, _I.RECV_RST): (_S.IDLE, _O.PROTOCOL_CONNECTION_ERROR),
    (_S.IDLE, _I.RECV_WINDOW_UPDATE): (_S.IDLE, _O.PROTOCOL_CONNECTION_ERROR),
    (_S.IDLE, _I.RECV_PRIORITY): (_S.IDLE, _O.IGNORE),
}

_OPEN = _S.OPEN
_HALF_CLOSED_REMOTE = _S.HALF_CLOSED_REMOTE
_HALF_CLOSED_LOCAL = _S.HALF_CLOSED_LOCAL
_CLOSED = _S.CLOSED
_RESET_SENT = _S.RESET_SENT
_OK, _IGNORE = _O.OK, _O.IGNORE
_SENDING = frozenset({_S.OPEN, _S.HALF_CLOSED_REMOTE})


class Stream:
    """One client-initiated stream: its request, and what is still to be sent of its answer.

    ``headers``: the request's decoded header fields in order (names lower-case; shared
    with other streams that sent the same block: read only). ``body``: request DATA
    received so far. ``closed_remote``: the request is complete. ``cancelled``: reset (by
    either side) or lost with the connection; answers are dropped. ``finished``: the
    answer's last frame is queued. ``on_cancel``: run once by the I/O layer when the stream
    is cancelled. ``context``: the application's state for this stream.
    """

    __slots__ = (
        "body",
        "body_bytes",
        "cancelled",
        "closed_remote",
        "content_length",
        "context",
        "fields",
        "finished",
        "headers",
        "id",
        "on_cancel",
        "opened_at",
        "over_limit",
        "pending",
        "pending_trailers",
        "receive_window",
        "send_window",
        "state",
    )

    def __init__(
        self,
        stream_id: int,
        headers: list[tuple[str, str]] | None = None,
        send_window: int = DEFAULT_WINDOW,
        fields: dict[str, str] | None = None,
    ) -> None:
        self.id = stream_id
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.fields: dict[str, str] = fields if fields is not None else {}
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.closed_remote = False
        self.cancelled = False
        self.finished = False
        self.send_window = send_window
        self.receive_window = MAX_WINDOW
        self.pending: bytearray | None = None  # DATA waiting for window
        self.pending_trailers: Headers | None = None  # encoded when they are written
        self.on_cancel: list[Callable[[], None]] = []
        self.context: Any = None
        self.state = _OPEN
        self.content_length: int | None = None
        self.over_limit = False
        self.opened_at = 0.0

    def header(self, name: str, default: str = "") -> str:
        """The first value of regular header field ``name`` (lower-case), or ``default``."""
        return self.fields.get(name, default)

    def __repr__(self) -> str:
        return f"Stream({self.id}, {self.state.name})"


# -- events ------------------------------------------------------------------------------


class Event:
    """Something the application must act on, returned by :meth:`ServerConnection.receive`
    and :meth:`ServerConnection.expire` in the order it happened."""

    __slots__ = ()


class RequestReceived(Event):
    """``stream``'s request is complete (headers and body): answer it, now or later. Check
    ``stream.cancelled`` first: a request reset in the same input is never handed out, but
    the event may precede the reset of a stream in the events of one call."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream


class BodyReceived(Event):
    """Part of ``stream``'s body arrived (``stream.body``, ``stream.body_bytes``) and more is
    to come, or it went over ``max_body_bytes`` (``stream.over_limit``: the application
    answers with an error; then the stream must be reset)."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream


class StreamReset(Event):
    """``stream`` ended without an answer: the client reset it (``remote``) or this side did
    after a stream error. Work for it should stop (``stream.on_cancel``)."""

    __slots__ = ("code", "remote", "stream")

    def __init__(self, stream: Stream, code: int, remote: bool) -> None:
        self.stream = stream
        self.code = code
        self.remote = remote


class Rejection(enum.Enum):
    """Why a request is refused by the connection rather than served."""

    HEADER_LIST_TOO_LARGE = "header list too large"
    REQUEST_TIMEOUT = "request timeout"


class RequestRejected(Event):
    """``stream``'s request is refused (``reason``, with a ``message`` for the client): the
    application answers with an error (for gRPC ``RESOURCE_EXHAUSTED`` or
    ``DEADLINE_EXCEEDED``); if it does not, the stream must be reset. ``stream.headers`` is
    empty for an oversized header list."""

    __slots__ = ("message", "reason", "stream")

    def __init__(self, stream: Stream, reason: Rejection, message: str) -> None:
        self.stream = stream
        self.reason = reason
        self.message = message


class ConnectionTerminated(Event):
    """The connection is over: a GOAWAY with ``code`` is queued (unless ``code`` is None:
    no preface came, nothing is said). Send what is queued, then close the transport."""

    __slots__ = ("code", "message")

    def __init__(self, code: int | None, message: str) -> None:
        self.code = code
        self.message = message


# -- HPACK for answers -------------------------------------------------------------------

_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

#: Answer fields worth a dynamic-table entry: repeated by every answer, few values.
INDEXED_NAMES = frozenset(
    {b":status", b"content-type", b"grpc-accept-encoding", b"grpc-encoding", b"grpc-status"}
)


class HeaderEncoder:
    """An HPACK encoder (RFC 7541) for the header blocks a server sends.

    Fields whose name is in ``indexed_names`` enter the dynamic table the first time they
    are sent, and are one byte afterwards; others are literals without indexing (error
    messages never churn the table). The table never exceeds what the decoder allows
    (:meth:`set_max_table_size`, from the peer's ``SETTINGS_HEADER_TABLE_SIZE``) nor
    :data:`DEFAULT_HEADER_TABLE`; a change is signalled at the start of the next block.
    Encodings are cached while the table does not change, by the identity of the header
    tuple (the encoder keeps a reference, so the identity stays unique), so a steady stream
    of answers built from the same constant tuples costs a dict lookup. Blocks must be
    written in the order they are encoded.
    """

    def __init__(self, indexed_names: frozenset[bytes] = INDEXED_NAMES) -> None:
        self._indexed = indexed_names
        self._max = DEFAULT_HEADER_TABLE
        self._size = 0
        self._entries: list[tuple[tuple[bytes, bytes], int]] = []  # oldest first
        self._index: dict[tuple[bytes, bytes], int] = {}  # field -> insertion number
        self._inserted = 0
        self._resize: list[int] = []  # size updates to signal
        self._cache: dict[int, tuple[Headers, bytes]] = {}  # id(fields) -> (fields, block)

    @property
    def table_size(self) -> int:
        """The dynamic table's current size in HPACK terms (RFC 7541 section 4.1)."""
        return self._size

    def set_max_table_size(self, limit: int) -> None:
        """The decoder now allows ``limit`` bytes: use at most that (and at most
        :data:`DEFAULT_HEADER_TABLE`), evicting as needed, and signal it next block."""
        size = min(limit, DEFAULT_HEADER_TABLE)
        if size == self._max and not self._resize:
            return
        self._resize.append(size)
        self._max = size
        self._evict(0)
        self._cache.clear()

    def encode(self, fields: Headers) -> bytes:
        """The HPACK block of ``fields``; updates the dynamic table as the decoder will."""
        cached = self._cache.get(id(fields))
        if cached is not None and cached[0] is fields:
            return cached[1]
        out = bytearray()
        if self._resize:
            smallest, last = min(self._resize), self._resize[-1]
            if smallest < last:
                out += hpack_integer(smallest, 5, 0x20)
            out += hpack_integer(last, 5, 0x20)
            self._resize.clear()
        stable = not out
        for field in fields:
            index = _STATIC_FIELDS.get(field)
            if index is not None:
                out += hpack_integer(index, 7, 0x80)
                continue
            number = self._index.get(field)
            if number is not None:
                out += hpack_integer(62 + self._inserted - 1 - number, 7, 0x80)
                continue
            name, value = field
            name_index = _STATIC_NAMES.get(name, 0)
            size = len(name) + len(value) + 32
            if name in self._indexed and size <= self._max:
                out += hpack_integer(name_index, 6, 0x40)
                if not name_index:
                    out += hpack_string(name)
                out += hpack_string(value)
                self._add(field, size)
                stable = False
            else:
                out += hpack_integer(name_index, 4, 0)
                if not name_index:
                    out += hpack_string(name)
                out += hpack_string(value)
        block = bytes(out)
        if stable:
            if len(self._cache) >= 32:
                self._cache.clear()
            self._cache[id(fields)] = (fields, block)
        return block

    def _add(self, field: tuple[bytes, bytes], size: int) -> None:
        self._evict(size)
        self._entries.append((field, self._inserted))
        self._index[field] = self._inserted
        self._inserted += 1
        self._size += size
        self._cache.clear()

    def _evict(self, room: int) -> None:
        while self._entries and self._size + room > self._max:
            field, number = self._entries.pop(0)
            self._size -= len(field[0]) + len(field[1]) + 32
            if self._index.get(field) == number:
                del self._index[field]


# -- limits ------------------------------------------------------------------------------


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second of ``clock``; :meth:`take` fails
    once they are spent."""

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(self, burst: float, rate: float, clock: Callable[[], float]) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, amount: float = 1.0) -> bool:
        """Spend ``amount`` tokens; False (and nothing spent) when there are not enough."""
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True


@dataclass(frozen=True)
class _Head:
    """A validated request header list (cached with its block)."""

    headers: list[tuple[str, str]]
    fields: dict[str, str]
    content_length: int | None
    error: str  # why the request is malformed; "" when it is not


def validate_request(headers: list[tuple[str, str]]) -> _Head:
    """Check a request's header list (RFC 9113 sections 8.2 and 8.3.1)."""
    fields: dict[str, str] = {}
    pseudo: set[str] = set()
    regular = False
    error = ""
    content_length: int | None = None
    for name, value in headers:
        if not name:
            error = "empty header name"
        elif name[0] == ":":
            if regular:
                error = f"pseudo-header {name} after a regular header"
            elif name not in REQUEST_PSEUDO:
                error = f"pseudo-header {name} is not a request's"
            elif name in pseudo:
                error = f"duplicate {name}"
            elif name == ":path" and not value:
                error = "empty :path"
            pseudo.add(name)
        else:
            regular = True
            if not _FORBIDDEN_NAME.isdisjoint(name.encode("utf-8", "surrogateescape")):
                error = f"invalid header name {name!r}"
            elif name in CONNECTION_SPECIFIC:
                error = f"connection-specific header {name}"
            elif name == "te" and value != "trailers":
                error = "te other than trailers"
            elif name == "content-length":
                if not (value.isascii() and value.isdigit()) or (
                    content_length is not None and int(value) != content_length
                ):
                    error = "invalid content-length"
                else:
                    content_length = int(value)
        fields.setdefault(name, value)
        if value and (
            value[0] in " \t" or value[-1] in " \t" or any(c in value for c in _FORBIDDEN_VALUE)
        ):
            error = f"invalid value of header {name}"
        if error:
            break
    if not error:
        method = fields.get(":method")
        if method != "CONNECT" and (
            method is None or ":scheme" not in pseudo or ":path" not in pseudo
        ):
            error = "missing :method, :scheme or :path"
    return _Head(headers, fields, content_length, error)


def validate_trailers(headers: list[tuple[str, str]]) -> str:
    """Why a request's trailers are malformed ("" when they are not)."""
    for name, value in headers:
        if name.startswith(":"):
            return f"pseudo-header {name} in trailers"
        if not _FORBIDDEN_NAME.isdisjoint(name.encode("utf-8", "surrogateescape")):
            return f"invalid header name {name!r}"
        if any(c in value for c in _FORBIDDEN_VALUE):
            return f"invalid value of header {name}"
    return ""


def _leading_size_updates(block: bytes) -> int:
    """How many dynamic-table size updates open ``block`` (stops counting past two)."""
    count = 0
    pos = 0
    n = len(block)
    while pos < n and block[pos] & 0xE0 == 0x20 and count <= 2:
        count += 1
        if block[pos] & 0x1F == 0x1F:
            pos += 1
            while pos < n and block[pos] & 0x80:
                pos += 1
        pos += 1
    return count


# -- the connection ----------------------------------------------------------------------


class ServerConnection:
    """The server side of one HTTP/2 connection (see the module docstring).

    ``settings``: the limits; ``clock``: seconds, monotonic (read for timeouts and the
    token buckets; tests pass a manual clock).
    """

    def __init__(
        self, settings: Http2Settings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.streams: dict[int, Stream] = {}
        self._out: list[bytes] = []
        self._buffer = bytearray()
        self._preface_seen = False
        self._created = clock()
        self._terminated = False
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = settings.max_header_block_bytes
        self._encoder = HeaderEncoder()
        self._cache: dict[bytes, _Head] = {}
        self._cache_bytes = 0
        self._closed: dict[int, StreamState] = {}
        self._receiving: dict[int, Stream] = {}  # OPEN streams, oldest first (timeouts)
        self._last_stream_id = 0
        self._continuation: tuple[int, int, bytearray, int, float] | None = None
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._receive_window = DEFAULT_WINDOW
        self._blocked: dict[int, Stream] = {}  # streams with DATA waiting for window
        self.going_away = False  # GOAWAY sent or received: no new streams
        self._goaway_sent = False
        self._events: list[Event] = []
        self._resets = TokenBucket(settings.reset_burst, settings.reset_rate, clock)
        self._control = TokenBucket(
            settings.control_frame_burst, settings.control_frame_rate, clock
        )
        self._refused_headers = TokenBucket(
            8 * settings.max_header_block_bytes, settings.max_header_block_bytes, clock
        )

    # -- input ---------------------------------------------------------------------------

    @property
    def terminated(self) -> bool:
        """The connection ended (GOAWAY for an error queued, or no preface in time)."""
        return self._terminated

    @property
    def header_cache_entries(self) -> int:
        """Decoded header blocks cached (at most :data:`HEADER_CACHE_ENTRIES`)."""
        return len(self._cache)

    @property
    def header_cache_bytes(self) -> int:
        """Bytes the cached blocks and their decoded lists take, as the RFC counts header
        lists (at most :data:`HEADER_CACHE_BYTES`)."""
        return self._cache_bytes

    @property
    def last_stream_id(self) -> int:
        """The highest stream id the client has used."""
        return self._last_stream_id

    def initiate(self) -> None:
        """Queue the server's SETTINGS and open the connection's receive window."""
        settings = struct.pack(
            ">HIHIHIHI",
            SETTINGS_MAX_CONCURRENT_STREAMS,
            self.settings.max_concurrent_streams,
            SETTINGS_INITIAL_WINDOW_SIZE,
            MAX_WINDOW,
            SETTINGS_MAX_FRAME_SIZE,
            RECEIVE_MAX_FRAME,
            SETTINGS_MAX_HEADER_LIST_SIZE,
            self.settings.max_header_list_bytes,
        )
        self._receive_window = MAX_WINDOW
        self._out.append(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW))
        )

    def receive(self, data: bytes) -> list[Event]:
        """Take bytes from the client; return the events they caused, in order. Frames
        that need an answer at the protocol level (ACKs, WINDOW_UPDATE, resets) are queued
        for :meth:`data_to_send`."""
        if self._terminated:
            return []
        events: list[Event] = []
        self._events = events
        buffer = self._buffer
        view: bytes | bytearray
        if buffer or not self._preface_seen:
            buffer += data
            view = buffer
        else:
            view = data  # the usual read: whole frames, nothing left from the last one
        pos = 0
        try:
            if not self._preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buffer)):
                        raise ProtocolViolation(PROTOCOL_ERROR, "invalid connection preface")
                    return events
                if bytes(buffer[: len(PREFACE)]) != PREFACE:
                    raise ProtocolViolation(PROTOCOL_ERROR, "invalid connection preface")
                pos = len(PREFACE)
                self._preface_seen = True
            end = len(view)
            unpack = FRAME_HEADER.unpack_from
            while end - pos >= 9:
                high, low, kind, flags, stream_id = unpack(view, pos)
                length = (high << 8) | low
                if length > RECEIVE_MAX_FRAME:
                    raise ProtocolViolation(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                start = pos + 9
                if end - start < length:
                    break
                pos = start + length
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, bytes(view[start:pos]))
            if view is buffer:
                del buffer[:pos]
            elif pos < end:
                buffer += view[pos:]
        except ProtocolViolation as exc:
            self._terminate(exc.code, str(exc))
        return events

    def expire(self) -> list[Event]:
        """Apply the timeouts due at ``clock()``: a missing preface or a header block left
        unfinished ends the connection; an incomplete request is rejected
        (:class:`RequestRejected`, ``REQUEST_TIMEOUT``)."""
        if self._terminated:
            return []
        events: list[Event] = []
        self._events = events
        now = self.clock()
        if not self._preface_seen:
            if now >= self._created + self.settings.preface_timeout_seconds:
                self._terminated = True
                events.append(ConnectionTerminated(None, "no connection preface in time"))
            return events
        timeout = self.settings.request_timeout_seconds
        if self._continuation is not None and now >= self._continuation[4] + timeout:
            self._terminate(ENHANCE_YOUR_CALM, f"header block not complete within {timeout:g} s")
            return events
        while self._receiving:
            stream = next(iter(self._receiving.values()))
            if now < stream.opened_at + timeout:
                break
            del self._receiving[stream.id]
            stream.over_limit = True  # whatever still arrives is dropped
            events.append(
                RequestRejected(
                    stream,
                    Rejection.REQUEST_TIMEOUT,
                    f"Request not received within {timeout:g} s",
                )
            )
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (``clock`` time), or None."""
        if self._terminated:
            return None
        if not self._preface_seen:
            return self._created + self.settings.preface_timeout_seconds
        timeout = self.settings.request_timeout_seconds
        deadlines = []
        if self._continuation is not None:
            deadlines.append(self._continuation[4] + timeout)
        if self._receiving:
            deadlines.append(next(iter(self._receiving.values())).opened_at + timeout)
        return min(deadlines) if deadlines else None

    def data_to_send(self) -> bytes:
        """Everything queued to send since the last call (b"" when nothing is)."""
        if not self._out:
            return b""
        out = self._out
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    # -- frames --------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise ProtocolViolation(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == HEADERS:
            self._headers_frame(flags, stream_id, payload)
        elif kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation_frame(flags, stream_id, payload)
        elif kind == RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif kind == SETTINGS:
            self._settings_frame(flags, stream_id, payload)
        elif kind == PING:
            if stream_id != 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "PING length")
            self._control_frame("PING frames")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == PRIORITY_FRAME:
            if stream_id == 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "PRIORITY on stream 0")
            self._control_frame("PRIORITY frames")
            if len(payload) != 5:
                self._stream_error(stream_id, FRAME_SIZE_ERROR)
            elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
                self._stream_error(stream_id, PROTOCOL_ERROR)
            else:
                self._transition(stream_id, StreamInput.RECV_PRIORITY)
        elif kind == GOAWAY:
            if stream_id != 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "GOAWAY length")
            self._control_frame("GOAWAY frames")
            self.going_away = True  # the client closes the connection when it is done
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        else:
            self._control_frame("frames of unknown types")  # ignored (section 5.5)

    def _control_frame(self, what: str) -> None:
        if not self._control.take():
            raise ProtocolViolation(ENHANCE_YOUR_CALM, f"too many {what}")

    def _state(self, stream_id: int) -> StreamState:
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream.state
        if stream_id > self._last_stream_id:
            return StreamState.IDLE
        return self._closed.get(stream_id, StreamState.FORGOTTEN)

    def _transition(self, stream_id: int, event: StreamInput) -> Stream | None:
        """Apply ``event`` to the stream; the stream when the frame is to be processed,
        None when it was ignored or answered with a stream error."""
        stream = self.streams.get(stream_id)
        state = stream.state if stream is not None else self._state(stream_id)
        new, outcome = TRANSITIONS[(state, event)]
        if outcome is _OK:
            if stream is not None and new is not state:
                self._enter(stream, new)
            return stream
        if outcome is _IGNORE:
            return None
        if outcome is Outcome.STREAM_CLOSED_STREAM_ERROR:
            self._control_frame("frames on closed streams")
            self._stream_error(stream_id, STREAM_CLOSED)
            return None
        if outcome is Outcome.STREAM_CLOSED_CONNECTION_ERROR:
            raise ProtocolViolation(STREAM_CLOSED, f"frame on closed stream {stream_id}")
        raise ProtocolViolation(PROTOCOL_ERROR, f"frame on {state.name} stream {stream_id}")

    def _enter(self, stream: Stream, state: StreamState) -> None:
        """Move ``stream`` to ``state``, keeping the tables in step."""
        stream.state = state
        if state is not _OPEN:
            self._receiving.pop(stream.id, None)
        if state >= _CLOSED:
            self.streams.pop(stream.id, None)
            self._blocked.pop(stream.id, None)
            self._remember(stream.id, state)

    def _remember(self, stream_id: int, state: StreamState) -> None:
        closed = self._closed
        closed[stream_id] = state
        if len(closed) > CLOSED_STREAMS_KEPT:
            del closed[next(iter(closed))]

    def _stream_error(self, stream_id: int, code: int) -> None:
        """Reset ``stream_id`` with ``code`` (a stream error); the application hears of it
        when it knew the stream."""
        self._out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._enter(stream, _RESET_SENT)
            if not stream.cancelled:
                stream.cancelled = True
                self._events.append(StreamReset(stream, code, remote=False))
        elif stream_id <= self._last_stream_id and stream_id not in self._closed:
            self._remember(stream_id, _RESET_SENT)

    # -- HEADERS and CONTINUATION --------------------------------------------------------

    def _headers_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        dependency = 0
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "HEADERS too short for priority")
            dependency = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload, dependency)
        else:
            if not payload:
                self._control_frame("empty HEADERS frames")
            self._continuation = (stream_id, flags, bytearray(payload), dependency, self.clock())

    def _continuation_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = pending[2]
        block += payload
        if len(block) > self.settings.max_header_block_bytes:
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block(stream_id, pending[1], bytes(block), pending[3])
        elif not payload:
            self._control_frame("empty CONTINUATION frames")

    def _decode(self, block: bytes) -> tuple[_Head | None, int]:
        """Decode a header block (always, so the HPACK state stays in step with the
        client's) and validate it as a request's; identical blocks that left the dynamic
        table as it was (a client's repeated calls) are decoded once while it stays so.
        Returns the head (None for a list over ``max_header_list_bytes``) and the list's
        decoded size."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached, 0
        if len(block) > self.settings.max_header_block_bytes:
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "header block too large")
        if _leading_size_updates(block) > 2:
            raise ProtocolViolation(COMPRESSION_ERROR, "more than two table size updates")
        table = self._decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            decoded = self._decoder.decode(block, raw=False)
        except hpack.OversizedHeaderListError:
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "header list too large") from None
        except Exception as exc:  # hpack's HPACKError, invalid UTF-8, ...
            raise ProtocolViolation(COMPRESSION_ERROR, f"header block: {exc}") from None
        entries = table.dynamic_entries
        if (len(entries), entries[0] if entries else None, table.maxsize) != before:
            self._cache.clear()  # the table changed: cached blocks may mean otherwise
            self._cache_bytes = 0
            unchanged = False
        else:
            unchanged = True
        headers = [(str(name), str(value)) for name, value in decoded]
        size = sum(len(name) + len(value) + 32 for name, value in headers)
        if size > self.settings.max_header_list_bytes:
            return None, size
        head = validate_request(headers)
        if unchanged and (
            len(self._cache) < HEADER_CACHE_ENTRIES
            and self._cache_bytes + len(block) + size <= HEADER_CACHE_BYTES
        ):
            self._cache[block] = head
            self._cache_bytes += len(block) + size
        return head, size

    def _header_block(self, stream_id: int, flags: int, block: bytes, dependency: int) -> None:
        head, size = self._decode(block)
        if head is None and not self._refused_headers.take(max(len(block), size)):
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "too many oversized header lists")
        stream = self.streams.get(stream_id)
        if stream is not None or stream_id <= self._last_stream_id:
            self._trailers(stream_id, flags, head, dependency)
            return
        if stream_id % 2 == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, f"invalid stream id {stream_id}")
        self._last_stream_id = stream_id
        if dependency == stream_id:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        if self.going_away or len(self.streams) >= self.settings.max_concurrent_streams:
            self._stream_error(stream_id, REFUSED_STREAM)
            return
        if head is None:
            stream = self._new_stream(stream_id, flags, None)
            message = (
                f"Header list of {size} bytes is larger than the limit "
                f"({self.settings.max_header_list_bytes})"
            )
            self._events.append(RequestRejected(stream, Rejection.HEADER_LIST_TOO_LARGE, message))
            return
        if head.error:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        if flags & END_STREAM and head.content_length:
            self._stream_error(stream_id, PROTOCOL_ERROR)  # content-length without DATA
            return
        stream = self._new_stream(stream_id, flags, head)
        if flags & END_STREAM:
            self._events.append(RequestReceived(stream))

    def _new_stream(self, stream_id: int, flags: int, head: _Head | None) -> Stream:
        if head is None:
            stream = Stream(stream_id, send_window=self._peer_initial_window)
        else:
            stream = Stream(stream_id, head.headers, self._peer_initial_window, head.fields)
            stream.content_length = head.content_length
        self.streams[stream_id] = stream
        if flags & END_STREAM:
            stream.closed_remote = True
            stream.state = _HALF_CLOSED_REMOTE
        else:
            stream.opened_at = self.clock()
            self._receiving[stream_id] = stream
            if head is None:
                stream.over_limit = True  # its body is not kept
        return stream

    def _trailers(self, stream_id: int, flags: int, head: _Head | None, dependency: int) -> None:
        """A header block on a stream that exists or existed."""
        stream = self._transition(stream_id, StreamInput.RECV_HEADERS)
        if stream is None:
            return
        if dependency == stream_id or not flags & END_STREAM:
            self._stream_error(stream_id, PROTOCOL_ERROR)  # trailers must end the stream
            return
        if head is None or validate_trailers(head.headers):
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        self._end_of_request(stream)

    # -- DATA ----------------------------------------------------------------------------

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._receive_window -= size
        if self._receive_window < 0:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, "connection window exceeded")
        if self._receive_window < MAX_WINDOW // 2:
            increment = MAX_WINDOW - self._receive_window
            self._out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", increment)))
            self._receive_window = MAX_WINDOW
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.state is not _OPEN:
            stream = self._transition(stream_id, StreamInput.RECV_DATA)
            if stream is None:
                return
        if not payload and not flags & END_STREAM:
            self._control_frame("empty DATA frames")
        stream.receive_window -= size
        if stream.receive_window < 0:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        if payload and not stream.over_limit:
            stream.body.append(payload)
            stream.body_bytes += len(payload)
            if stream.content_length is not None and stream.body_bytes > stream.content_length:
                self._stream_error(stream_id, PROTOCOL_ERROR)
                return
            if stream.body_bytes > self.settings.max_body_bytes:
                stream.over_limit = True  # nothing more is kept
                self._events.append(BodyReceived(stream))
                return
        if flags & END_STREAM:
            self._end_of_request(stream)
            return
        if stream.receive_window < MAX_WINDOW // 2:
            increment = MAX_WINDOW - stream.receive_window
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment)))
            stream.receive_window = MAX_WINDOW
        if payload and not stream.over_limit:
            self._events.append(BodyReceived(stream))

    def _end_of_request(self, stream: Stream) -> None:
        length = stream.content_length
        if length is not None and stream.body_bytes != length and not stream.over_limit:
            self._stream_error(stream.id, PROTOCOL_ERROR)
            return
        stream.closed_remote = True
        over_limit = stream.over_limit
        if stream.state is _OPEN:
            self._enter(stream, _HALF_CLOSED_REMOTE)
        else:  # answered already (half-closed local): now closed
            self._enter(stream, _CLOSED)
        if not over_limit and not stream.finished:
            self._events.append(RequestReceived(stream))

    # -- control frames ------------------------------------------------------------------

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "RST_STREAM length")
        stream = self._transition(stream_id, StreamInput.RECV_RST)
        if stream is None:  # a closed stream (an idle one is a connection error)
            self._control_frame("RST_STREAM frames on closed streams")
            return
        if stream.cancelled:
            return
        stream.cancelled = True
        if not self._resets.take():
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "too many streams reset")
        self._events.append(StreamReset(stream, int.from_bytes(payload, "big"), remote=True))

    def _settings_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "SETTINGS on a stream")
        self._control_frame("SETTINGS frames")
        if flags & ACK:
            if payload:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS length")
        if len(payload) > 6 * MAX_SETTINGS_ENTRIES:
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "too many SETTINGS entries")
        initial_window = self._peer_initial_window
        for i in range(0, len(payload), 6):
            key, value = struct.unpack(">HI", payload[i : i + 6])
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "initial window too large")
                initial_window = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= (1 << 24) - 1:
                    raise ProtocolViolation(PROTOCOL_ERROR, "invalid max frame size")
                self._peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise ProtocolViolation(PROTOCOL_ERROR, "invalid ENABLE_PUSH")
            elif key == SETTINGS_HEADER_TABLE_SIZE:
                self._encoder.set_max_table_size(value)
        delta = initial_window - self._peer_initial_window
        if delta:
            for stream in self.streams.values():
                if stream.send_window + delta > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "stream window overflow")
            self._peer_initial_window = initial_window
            for stream in self.streams.values():
                stream.send_window += delta
        self._out.append(frame(SETTINGS, ACK, 0))
        if delta > 0:
            self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            exhausted = self._send_window <= 0
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "connection window overflow")
            if exhausted:
                # Only then can a stream be waiting for the connection's window: one waiting
                # for its own leaves the connection's above zero.
                self._flush_blocked()
            return
        stream = self._transition(stream_id, StreamInput.RECV_WINDOW_UPDATE)
        if stream is None:
            return
        if increment == 0:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        if stream_id in self._blocked:
            self._flush_stream(stream)

    # -- answers -------------------------------------------------------------------------

    def respond(self, stream: Stream, headers: Headers, data: bytes, trailers: Headers) -> None:
        """A whole answer: ``headers``, DATA (may be empty; it waits for the client's
        windows), then ``trailers``, which end the stream (no trailers, ``()``: an empty
        DATA frame ends it)."""
        if stream.cancelled or stream.finished or stream.state not in _SENDING:
            return
        encode = self._encoder.encode
        head = encode(headers)
        n = len(data)
        limit = self._peer_max_frame
        if (
            trailers
            and n <= stream.send_window
            and n <= self._send_window
            and n <= limit
            and len(head) <= limit
        ):
            # All of it fits the windows: one piece of output (the usual case).
            tail = encode(trailers)
            if len(tail) <= limit:
                stream_id = stream.id
                stream.send_window -= n
                self._send_window -= n
                self._out.append(
                    frame(HEADERS, END_HEADERS, stream_id, head)
                    + (frame(DATA, 0, stream_id, data) if n else b"")
                    + frame(HEADERS, END_HEADERS | END_STREAM, stream_id, tail)
                )
                self._finish(stream)
                return
            self._write_headers(stream.id, END_HEADERS, head)
            self.send_data(stream, data)
            self._write_headers(stream.id, END_HEADERS | END_STREAM, tail)
            self._finish(stream)
            return
        self._write_headers(stream.id, END_HEADERS, head)
        if data:
            self.send_data(stream, data)
        self.send_trailers(stream, trailers)

    def send_headers(self, stream: Stream, headers: Headers, end_stream: bool = False) -> None:
        """A HEADERS block (with END_STREAM: a trailers-only answer)."""
        if stream.cancelled or stream.finished or stream.state not in _SENDING:
            return
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self._write_headers(stream.id, flags, self._encoder.encode(headers))
        if end_stream:
            self._finish(stream)

    def send_data(self, stream: Stream, data: bytes) -> None:
        """DATA bytes, sent as the windows allow (the rest waits for WINDOW_UPDATE)."""
        if stream.cancelled or stream.finished or stream.state not in _SENDING or not data:
            return
        if stream.pending:
            stream.pending += data
            return
        n = len(data)
        if n <= stream.send_window and n <= self._send_window and n <= self._peer_max_frame:
            stream.send_window -= n
            self._send_window -= n
            self._out.append(frame(DATA, 0, stream.id, data))
            return
        stream.pending = bytearray(data)
        self._blocked[stream.id] = stream
        self._flush_stream(stream)

    def send_trailers(self, stream: Stream, trailers: Headers) -> None:
        """The trailing HEADERS block; ends the stream once all DATA is sent (``()``: an
        empty DATA frame ends it instead)."""
        if stream.cancelled or stream.finished or stream.state not in _SENDING:
            return
        if stream.pending:
            stream.pending_trailers = trailers
            return
        self._end_stream(stream, trailers)

    def _end_stream(self, stream: Stream, trailers: Headers) -> None:
        if trailers:
            block = self._encoder.encode(trailers)
            self._write_headers(stream.id, END_HEADERS | END_STREAM, block)
        else:
            self._out.append(frame(DATA, END_STREAM, stream.id))
        self._finish(stream)

    def reset(self, stream: Stream, code: int = CANCEL) -> None:
        """End ``stream`` with RST_STREAM (no answer follows). No event is produced: the
        caller knows."""
        if self.streams.get(stream.id) is stream:
            self._out.append(frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))
            stream.cancelled = True
            self._enter(stream, _RESET_SENT)

    def go_away(self, code: int = NO_ERROR, message: str = "") -> None:
        """Queue a GOAWAY naming the last stream id seen: streams already open go on, new
        ones are refused. With an error code, the connection is over."""
        if self._terminated or self._goaway_sent:
            return
        if code != NO_ERROR:
            self._terminate(code, message)
            return
        self._goaway_sent = True
        self.going_away = True
        self._out.append(
            frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream_id, code) + message.encode())
        )

    def _terminate(self, code: int, message: str) -> None:
        debug = message.encode()[:256]
        self._out.append(
            frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream_id, code) + debug)
        )
        self._terminated = True
        self.going_away = True
        for stream in self.streams.values():
            stream.cancelled = True  # nothing more is read or sent: no request is handed out
        self._events.append(ConnectionTerminated(code, message))

    def _write_headers(self, stream_id: int, flags: int, block: bytes) -> None:
        limit = self._peer_max_frame
        if len(block) <= limit:
            self._out.append(frame(HEADERS, flags, stream_id, block))
            return
        first = flags & ~END_HEADERS
        self._out.append(frame(HEADERS, first, stream_id, block[:limit]))
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            part = block[start : start + limit]
            self._out.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, part))

    def _flush_blocked(self) -> None:
        """Send what the windows now allow of every stream waiting for window."""
        for stream in list(self._blocked.values()):
            self._flush_stream(stream)

    def _flush_stream(self, stream: Stream) -> None:
        """Send what the windows allow of ``stream``'s pending DATA (and then its trailers);
        it stays in ``_blocked`` while DATA is left."""
        if stream.cancelled or stream.finished or stream.state not in _SENDING:
            self._blocked.pop(stream.id, None)
            return
        pending = stream.pending
        while pending:
            n = min(len(pending), stream.send_window, self._send_window, self._peer_max_frame)
            if n <= 0:
                return
            chunk = bytes(pending[:n])
            del pending[:n]
            stream.send_window -= n
            self._send_window -= n
            self._out.append(frame(DATA, 0, stream.id, chunk))
        self._blocked.pop(stream.id, None)
        trailers = stream.pending_trailers
        if trailers is not None:
            stream.pending_trailers = None
            self._end_stream(stream, trailers)

    def _finish(self, stream: Stream) -> None:
        stream.finished = True
        if stream.state is _OPEN:
            # Answered before the request ended (an error): the rest is not wanted.
            self._enter(stream, _HALF_CLOSED_LOCAL)
            self._out.append(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
            self._enter(stream, _RESET_SENT)
        else:
            self._enter(stream, _CLOSED)


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ProtocolViolation(FRAME_SIZE_ERROR, "padded frame without pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


__all__ = [
    "FRAME_HEADER",
    "TRANSITIONS",
    "BodyReceived",
    "ConnectionTerminated",
    "Event",
    "HeaderEncoder",
    "Headers",
    "Http2Settings",
    "Outcome",
    "ProtocolViolation",
    "Rejection",
    "RequestReceived",
    "RequestRejected",
    "ServerConnection",
    "Stream",
    "StreamInput",
    "StreamReset",
    "StreamState",
    "TokenBucket",
    "frame",
    "hpack_literal",
    "validate_request",
]
