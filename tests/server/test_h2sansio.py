"""The sans-IO HTTP/2 server connection, byte by byte: no socket, no event loop, no model.

A :class:`Client` builds frames, feeds them to a :class:`ServerConnection` and parses what
it queues to send (header blocks decoded in order, as HPACK requires). Time is a
:class:`ManualClock`. Each conformance rule h2spec checks (RFC 9113 and HPACK) and each
abuse limit has a test here; h2spec itself is a development tool, not needed by the suite.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import hpack
import pytest

from pyserving.core.clock import ManualClock
from pyserving.server.h2sansio import (
    CANCEL,
    CLOSED_STREAMS_KEPT,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER_CACHE_BYTES,
    HEADER_CACHE_ENTRIES,
    HEADERS,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PRIORITY_FRAME,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
    STREAM_CLOSED,
    TRANSITIONS,
    WINDOW_UPDATE,
    BodyReceived,
    ConnectionTerminated,
    Event,
    HeaderEncoder,
    Http2Settings,
    Outcome,
    Rejection,
    RequestReceived,
    RequestRejected,
    ServerConnection,
    Stream,
    StreamInput,
    StreamReset,
    StreamState,
    TokenBucket,
    frame,
    validate_request,
)

PATH = "/tensorflow.serving.PredictionService/Predict"
REQUEST: list[tuple[str, str]] = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", PATH),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]
ANSWER = ((b":status", b"200"), (b"content-type", b"application/grpc"))
OK_TRAILERS = ((b"grpc-status", b"0"),)

Frame = tuple[int, int, int, bytes]


def _setting(key: int, value: int) -> bytes:
    return struct.pack(">HI", key, value)


class Client:
    """A client on a :class:`ServerConnection`: sends frames, reads the server's."""

    def __init__(
        self,
        settings: Http2Settings | None = None,
        client_settings: bytes = b"",
        clock: ManualClock | None = None,
    ) -> None:
        self.clock = clock or ManualClock()
        self.server = ServerConnection(settings or Http2Settings(), self.clock.monotonic)
        self.server.initiate()
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.events: list[Event] = []
        self.frames: list[Frame] = []  # what the server sent, in order
        self.headers: dict[int, list[dict[str, str]]] = {}  # decoded blocks per stream
        self.send(PREFACE + frame(SETTINGS, 0, 0, client_settings))
        self.read()

    def send(self, *data: bytes) -> list[Event]:
        """Feed bytes to the server; its events (also kept in ``events``)."""
        events = self.server.receive(b"".join(data))
        self.events.extend(events)
        return events

    def read(self) -> list[Frame]:
        """The frames the server queued since the last read (header blocks decoded)."""
        self.buffer += self.server.data_to_send()
        out = []
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                break
            kind, flags = self.buffer[3], self.buffer[4]
            stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            if kind == HEADERS:
                assert flags & END_HEADERS
                block = dict(self.decoder.decode(payload, raw=False))
                self.headers.setdefault(stream_id, []).append(block)
            out.append((kind, flags, stream_id, payload))
        self.frames.extend(out)
        return out

    def block(self, headers: Iterable[tuple[str, str]] = REQUEST) -> bytes:
        return self.encoder.encode(list(headers))

    def request(
        self,
        stream_id: int,
        body: bytes | None = b"\x00\x00\x00\x00\x00",
        headers: Iterable[tuple[str, str]] = REQUEST,
    ) -> list[Event]:
        """HEADERS (with END_STREAM when ``body`` is None) and one DATA frame ending it."""
        if body is None:
            return self.send(
                frame(HEADERS, END_HEADERS | END_STREAM, stream_id, self.block(headers))
            )
        return self.send(
            frame(HEADERS, END_HEADERS, stream_id, self.block(headers)),
            frame(DATA, END_STREAM, stream_id, body),
        )

    def goaway(self) -> tuple[int, int, bytes] | None:
        """The (last stream id, error code, debug text) of the server's GOAWAY, if any."""
        for kind, _, _, payload in self.read() + self.frames:
            if kind == GOAWAY:
                last, code = struct.unpack(">II", payload[:8])
                return last, code, payload[8:]
        return None

    def resets(self) -> dict[int, int]:
        """Every RST_STREAM the server sent: stream id -> error code."""
        self.read()
        return {
            sid: struct.unpack(">I", payload)[0]
            for kind, _, sid, payload in self.frames
            if kind == RST_STREAM
        }


def received(events: Iterable[Event]) -> list[Stream]:
    """The streams of the RequestReceived events (that were not reset meanwhile)."""
    return [e.stream for e in events if isinstance(e, RequestReceived) and not e.stream.cancelled]


def answer(client: Client, stream: Stream, body: bytes = b"hello") -> None:
    client.server.respond(stream, ANSWER, body, OK_TRAILERS)


def terminated(client: Client, code: int) -> None:
    """The server ended the connection with ``code`` (GOAWAY and the event)."""
    goaway = client.goaway()
    assert goaway is not None and goaway[1] == code, (goaway, code)
    assert any(isinstance(e, ConnectionTerminated) and e.code == code for e in client.events)
    assert client.server.terminated


# ---------------------------------------------------------------------------- basics


def test_a_request_is_received_and_answered() -> None:
    client = Client()
    events = client.request(1, b"\x00\x00\x00\x00\x02hi")
    (stream,) = received(events)
    assert stream.header(":path") == PATH and stream.body == [b"\x00\x00\x00\x00\x02hi"]
    assert stream.state is StreamState.HALF_CLOSED_REMOTE
    answer(client, stream)
    kinds = [(k, f) for k, f, sid, _ in client.read() if sid == 1]
    assert kinds == [(HEADERS, END_HEADERS), (DATA, 0), (HEADERS, END_HEADERS | END_STREAM)]
    assert client.headers[1] == [
        {":status": "200", "content-type": "application/grpc"},
        {"grpc-status": "0"},
    ]
    assert stream.state is StreamState.CLOSED and 1 not in client.server.streams


def test_the_server_advertises_its_limits_and_acknowledges_settings() -> None:
    client = Client()
    kinds = [k for k, *_ in client.frames]
    assert kinds[:3] == [SETTINGS, WINDOW_UPDATE, SETTINGS]  # ours, window, ACK of theirs
    payload = client.frames[0][3]
    settings = dict(struct.unpack(">HI", payload[i : i + 6]) for i in range(0, len(payload), 6))
    assert settings == {0x3: 256, 0x4: (1 << 31) - 1, 0x5: 16384, 0x6: 64 << 10}


def test_a_request_in_one_byte_pieces_is_the_same_request() -> None:
    client = Client()
    data = frame(HEADERS, END_HEADERS, 1, client.block()) + frame(DATA, END_STREAM, 1, b"xy")
    events: list[Event] = []
    for i in range(len(data)):
        events += client.send(data[i : i + 1])
    (stream,) = received(events)
    assert stream.body == [b"xy"]


@pytest.mark.parametrize("chunk", [5, 9, 10, 23, 64, 4096])
def test_requests_in_reads_of_any_size_are_the_same_requests(chunk: int) -> None:
    """Reads ending mid-header, mid-payload or on a frame boundary, several frames per
    read and a frame's rest in the next: the same requests, bodies intact."""
    client = Client()
    data = b"".join(
        frame(HEADERS, END_HEADERS, sid, client.block())
        + frame(DATA, 0, sid, b"a" * sid)
        + frame(DATA, END_STREAM, sid, b"b" * (40 - sid))
        for sid in (1, 3, 5, 7)
    )
    events: list[Event] = []
    for start in range(0, len(data), chunk):
        events += client.send(data[start : start + chunk])
    streams = received(events)
    assert [b"".join(s.body) for s in streams] == [
        b"a" * sid + b"b" * (40 - sid) for sid in (1, 3, 5, 7)
    ]


def test_padding_and_priority_fields_are_removed() -> None:
    client = Client()
    block = client.block()
    priority = struct.pack(">IB", 0, 15)
    headers = bytes([3]) + priority + block + b"\x00" * 3
    events = client.send(
        frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, headers),
        frame(DATA, END_STREAM | PADDED, 1, bytes([4]) + b"body" + b"\x00" * 4),
    )
    (stream,) = received(events)
    assert stream.body == [b"body"] and stream.header("te") == "trailers"
    client.send(frame(DATA, PADDED, 3, bytes([9]) + b"x"))  # padding longer than the frame
    terminated(client, PROTOCOL_ERROR)


def test_an_answer_waits_for_the_clients_windows() -> None:
    client = Client(client_settings=_setting(SETTINGS_INITIAL_WINDOW_SIZE, 3))
    (stream,) = received(client.request(1))
    answer(client, stream, b"0123456789")
    data = [p for k, _, _, p in client.read() if k == DATA]
    assert data == [b"012"]
    client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))
    frames = client.read()
    assert [p for k, _, _, p in frames if k == DATA] == [b"3456789"]
    assert frames[-1][0] == HEADERS and frames[-1][1] & END_STREAM


def test_answers_are_cut_to_the_clients_frame_size() -> None:
    client = Client(client_settings=_setting(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20))
    client.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)))
    (stream,) = received(client.request(1))
    answer(client, stream, b"x" * 40000)
    assert [len(p) for k, _, _, p in client.read() if k == DATA] == [16384, 16384, 7232]


# ---------------------------------------------------------------------------- stream states


def test_transition_table_covers_every_received_frame_in_every_state() -> None:
    received_inputs = [i for i in StreamInput if i.name.startswith("RECV_")]
    for state in StreamState:
        for event in received_inputs:
            if state is StreamState.IDLE and event in (
                StreamInput.RECV_HEADERS,
                StreamInput.RECV_END_STREAM,
            ):
                continue  # a new stream: opened by the connection itself
            if event is StreamInput.RECV_END_STREAM and state not in (
                StreamState.OPEN,
                StreamState.HALF_CLOSED_LOCAL,
            ):
                continue  # END_STREAM only follows a frame that was accepted
            assert (state, event) in TRANSITIONS, (state, event)
    assert TRANSITIONS[(StreamState.RESET_SENT, StreamInput.RECV_DATA)][1] is Outcome.IGNORE


def test_window_update_and_priority_on_a_half_closed_stream_are_accepted() -> None:
    client = Client(client_settings=_setting(SETTINGS_INITIAL_WINDOW_SIZE, 0))
    (stream,) = received(client.request(1, None))
    answer(client, stream)
    client.send(
        frame(PRIORITY_FRAME, 0, 1, struct.pack(">IB", 0, 10)),
        frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)),
    )
    assert [p for k, _, _, p in client.read() if k == DATA] == [b"hello"]
    assert not client.resets() and client.goaway() is None


@pytest.mark.parametrize("kind", [RST_STREAM, WINDOW_UPDATE, DATA])
def test_frames_on_an_idle_stream_are_protocol_errors(kind: int) -> None:
    client = Client()
    payload = b"" if kind == DATA else struct.pack(">I", 1)
    client.send(frame(kind, 0, 1, payload))
    terminated(client, PROTOCOL_ERROR)


def test_priority_on_an_idle_stream_is_allowed() -> None:
    client = Client()
    client.send(frame(PRIORITY_FRAME, 0, 9, struct.pack(">IB", 0, 10)))
    assert received(client.request(1)) and client.goaway() is None


def test_data_and_headers_on_a_half_closed_stream_are_stream_closed() -> None:
    client = Client()
    (stream,) = received(client.request(1, None))
    client.send(frame(DATA, 0, 1, b"late"))
    assert client.resets() == {1: STREAM_CLOSED}
    assert stream.cancelled  # the application hears of it (StreamReset)
    assert any(isinstance(e, StreamReset) and not e.remote for e in client.events)
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, client.block()))
    (stream,) = received(client.events)
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, client.block()))
    assert client.resets()[3] == STREAM_CLOSED and client.goaway() is None


@pytest.mark.parametrize("kind", [DATA, HEADERS])
def test_frames_after_the_client_reset_a_stream_are_stream_closed(kind: int) -> None:
    client = Client()
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()))
    client.send(frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)))
    assert any(isinstance(e, StreamReset) and e.remote for e in client.events)
    payload = b"x" if kind == DATA else client.block()
    client.send(frame(kind, END_HEADERS if kind == HEADERS else 0, 1, payload))
    assert client.resets() == {1: STREAM_CLOSED}
    assert client.goaway() is None


def test_frames_on_a_closed_stream() -> None:
    """After END_STREAM both ways: DATA is a stream error, HEADERS a connection error,
    WINDOW_UPDATE, RST_STREAM and PRIORITY are ignored (they may cross the answer)."""
    client = Client()
    (stream,) = received(client.request(1))
    answer(client, stream)
    client.send(
        frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1)),
        frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)),
        frame(PRIORITY_FRAME, 0, 1, struct.pack(">IB", 0, 1)),
    )
    assert not client.resets() and client.goaway() is None
    client.send(frame(DATA, 0, 1, b"x"))
    assert client.resets() == {1: STREAM_CLOSED}
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, client.block()))
    terminated(client, STREAM_CLOSED)


def test_frames_on_a_stream_the_server_reset_are_ignored() -> None:
    """The client may have sent them before it saw the reset: no reset storm."""
    client = Client(Http2Settings(max_concurrent_streams=1))
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()))
    client.send(frame(HEADERS, END_HEADERS, 3, client.block()))  # refused
    client.send(frame(DATA, 0, 3, b"body"), frame(DATA, END_STREAM, 3, b"more"))
    assert client.resets() == {3: REFUSED_STREAM}
    (stream,) = received(client.send(frame(DATA, END_STREAM, 1, b"x")))
    assert stream.id == 1 and client.goaway() is None


def test_a_lower_stream_id_is_a_protocol_error() -> None:
    client = Client()
    client.request(5, None)
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, client.block()))
    terminated(client, PROTOCOL_ERROR)


def test_an_even_stream_id_is_a_protocol_error() -> None:
    client = Client()
    client.request(2, None)
    terminated(client, PROTOCOL_ERROR)


def test_streams_over_the_limit_are_refused() -> None:
    client = Client(
        Http2Settings(max_concurrent_streams=2),
        client_settings=_setting(SETTINGS_INITIAL_WINDOW_SIZE, 0),
    )
    for stream_id in (1, 3, 5):
        for stream in received(client.request(stream_id, None)):
            answer(client, stream)  # waits for window: the stream stays open
    assert client.resets() == {5: REFUSED_STREAM}
    assert set(client.server.streams) == {1, 3}


def test_closed_streams_are_remembered_up_to_a_bound() -> None:
    client = Client()
    for i in range(CLOSED_STREAMS_KEPT + 10):
        stream_id = 2 * i + 1
        for stream in received(client.request(stream_id, None)):
            answer(client, stream)
    client.read()
    client.send(frame(DATA, 0, 1, b"x"))  # forgotten: still a stream error
    assert client.resets() == {1: STREAM_CLOSED}
    assert client.goaway() is None


def test_priority_frames_are_checked() -> None:
    client = Client()
    client.send(frame(PRIORITY_FRAME, 0, 1, b"\x00" * 4))  # wrong length: stream error
    client.send(frame(PRIORITY_FRAME, 0, 3, struct.pack(">IB", 3, 1)))  # depends on itself
    assert client.resets() == {1: FRAME_SIZE_ERROR, 3: PROTOCOL_ERROR}
    client.send(
        frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 5, struct.pack(">IB", 5, 1) + client.block())
    )
    assert client.resets()[5] == PROTOCOL_ERROR
    assert client.goaway() is None
    assert received(client.request(7))  # the HPACK state is intact
    client.send(frame(PRIORITY_FRAME, 0, 0, struct.pack(">IB", 0, 1)))
    terminated(client, PROTOCOL_ERROR)


def test_frame_size_limits() -> None:
    client = Client()
    client.send(frame(HEADERS, END_HEADERS, 1, b"\x00" * 16385))
    terminated(client, FRAME_SIZE_ERROR)
    for kind, payload in [(PING, b"\x00" * 7), (RST_STREAM, b"\x00" * 3), (WINDOW_UPDATE, b"")]:
        client = Client()
        stream_id = 0 if kind == PING else 1
        if kind != PING:
            client.request(1, None)
        client.send(frame(kind, 0, stream_id, payload))
        terminated(client, FRAME_SIZE_ERROR)


def test_settings_are_validated() -> None:
    cases = [
        (frame(SETTINGS, 1, 0, b"\x00" * 6), FRAME_SIZE_ERROR),  # ACK with a payload
        (frame(SETTINGS, 0, 0, b"\x00" * 5), FRAME_SIZE_ERROR),
        (frame(SETTINGS, 0, 1, b""), PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, _setting(SETTINGS_ENABLE_PUSH, 2)), PROTOCOL_ERROR),
        (
            frame(SETTINGS, 0, 0, _setting(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)),
            FLOW_CONTROL_ERROR,
        ),
        (frame(SETTINGS, 0, 0, _setting(SETTINGS_MAX_FRAME_SIZE, 100)), PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, _setting(SETTINGS_MAX_FRAME_SIZE, 1 << 24)), PROTOCOL_ERROR),
    ]
    for data, code in cases:
        client = Client()
        client.send(data)
        terminated(client, code)
    client = Client()
    client.send(frame(SETTINGS, 0, 0, _setting(SETTINGS_ENABLE_PUSH, 1) + _setting(0x99, 7)))
    assert client.goaway() is None  # ENABLE_PUSH 1 is valid, unknown settings are ignored


def test_goaway_on_a_stream_is_a_protocol_error() -> None:
    client = Client()
    client.send(frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0)))
    terminated(client, PROTOCOL_ERROR)


def test_a_goaway_from_the_client_refuses_new_streams() -> None:
    client = Client()
    client.send(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    client.request(1, None)
    assert client.resets() == {1: REFUSED_STREAM}


def test_initial_window_changes_apply_to_open_streams_and_may_go_negative() -> None:
    client = Client(client_settings=_setting(SETTINGS_INITIAL_WINDOW_SIZE, 3))
    (stream,) = received(client.request(1, None))
    answer(client, stream, b"0123456789")
    assert [p for k, _, _, p in client.read() if k == DATA] == [b"012"]
    client.send(frame(SETTINGS, 0, 0, _setting(SETTINGS_INITIAL_WINDOW_SIZE, 2)))
    assert stream.send_window == -1
    client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 3)))
    assert [p for k, _, _, p in client.read() if k == DATA] == [b"34"]
    client.send(frame(SETTINGS, 0, 0, _setting(SETTINGS_INITIAL_WINDOW_SIZE, 10)))
    assert [p for k, _, _, p in client.read() if k == DATA] == [b"56789"]


def test_an_initial_window_change_that_overflows_a_window_is_a_flow_control_error() -> None:
    client = Client(client_settings=_setting(SETTINGS_INITIAL_WINDOW_SIZE, 10))
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()))  # open: its window counts
    client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", (1 << 31) - 1 - 10)))
    assert client.goaway() is None
    client.send(frame(SETTINGS, 0, 0, _setting(SETTINGS_INITIAL_WINDOW_SIZE, 11)))
    terminated(client, FLOW_CONTROL_ERROR)


def test_window_overflow_and_zero_increments() -> None:
    client = Client()
    assert received(client.request(1, None))
    client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))
    assert client.resets() == {1: PROTOCOL_ERROR}
    client.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", (1 << 31) - 1)))
    terminated(client, FLOW_CONTROL_ERROR)


# ---------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([*REQUEST, ("X-Upper", "1")], "uppercase name"),
        ([*REQUEST, ("x:colon", "1")], "colon in a name"),
        ([*REQUEST[:3], (":unknown", "x"), *REQUEST[3:]], "unknown pseudo-header"),
        ([*REQUEST[:3], (":status", "200"), *REQUEST[3:]], "a response's pseudo-header"),
        ([*REQUEST, (":authority", "late")], "pseudo-header after a regular one"),
        ([*REQUEST, ("connection", "keep-alive")], "connection-specific"),
        ([*REQUEST, ("upgrade", "h2c")], "connection-specific"),
        ([*REQUEST[:5], ("te", "gzip")], "te other than trailers"),
        ([*REQUEST[:2], (":path", ""), *REQUEST[3:]], "empty :path"),
        (REQUEST[1:], "no :method"),
        ([REQUEST[0], *REQUEST[2:]], "no :scheme"),
        ([*REQUEST[:2], *REQUEST[3:]], "no :path"),
        ([REQUEST[0], *REQUEST], "duplicate :method"),
        ([REQUEST[1], *REQUEST], "duplicate :scheme"),
        ([REQUEST[2], *REQUEST], "duplicate :path"),
        ([*REQUEST, ("x-value", "a\nb")], "LF in a value"),
        ([*REQUEST, ("x-value", " padded")], "leading space in a value"),
        ([*REQUEST, ("content-length", "abc")], "content-length not a number"),
    ],
)
def test_malformed_requests_are_stream_errors(headers: list[tuple[str, str]], why: str) -> None:
    assert validate_request(headers).error, why
    client = Client()
    events = client.request(1, None, headers)
    assert not received(events) and client.resets() == {1: PROTOCOL_ERROR}
    assert client.goaway() is None
    assert received(client.request(3, None))  # the connection and its HPACK state go on


def test_content_length_must_match_the_data() -> None:
    client = Client()
    headers = [*REQUEST, ("content-length", "5")]
    client.send(
        frame(HEADERS, END_HEADERS, 1, client.block(headers)), frame(DATA, END_STREAM, 1, b"abc")
    )
    client.send(
        frame(HEADERS, END_HEADERS, 3, client.block(headers)),
        frame(DATA, 0, 3, b"abc"),
        frame(DATA, END_STREAM, 3, b"def"),
    )
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 5, client.block(headers)))
    assert client.resets() == {1: PROTOCOL_ERROR, 3: PROTOCOL_ERROR, 5: PROTOCOL_ERROR}
    client.send(
        frame(HEADERS, END_HEADERS, 7, client.block(headers)),
        frame(DATA, 0, 7, b"ab"),
        frame(DATA, END_STREAM, 7, b"cde"),
    )
    (stream,) = received(client.events)
    assert stream.id == 7 and stream.body_bytes == 5


def test_trailers_end_the_request_and_carry_no_pseudo_headers() -> None:
    client = Client()
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()), frame(DATA, 0, 1, b"x"))
    (stream,) = received(
        client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, client.block([("x-t", "1")])))
    )
    assert stream.id == 1
    client.send(frame(HEADERS, END_HEADERS, 3, client.block()))
    client.send(frame(HEADERS, END_HEADERS, 3, client.block([("x-t", "1")])))  # no END_STREAM
    client.send(frame(HEADERS, END_HEADERS, 5, client.block()))
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 5, client.block([(":path", "/")])))
    assert client.resets() == {3: PROTOCOL_ERROR, 5: PROTOCOL_ERROR}


def test_a_body_over_the_limit_is_reported_once_and_not_kept() -> None:
    client = Client(Http2Settings(max_body_bytes=10))
    events = client.send(
        frame(HEADERS, END_HEADERS, 1, client.block()),
        frame(DATA, 0, 1, b"x" * 8),
        frame(DATA, 0, 1, b"x" * 8),
        frame(DATA, END_STREAM, 1, b"x" * 8),
    )
    bodies = [e.stream for e in events if isinstance(e, BodyReceived)]
    assert len(bodies) == 2 and bodies[0] is bodies[1]  # the first part, then over the limit
    assert bodies[0].over_limit and bodies[0].body_bytes == 16 and not received(events)


def test_continuation_frames_carry_one_block() -> None:
    client = Client()
    block = client.block()
    events = client.send(
        frame(HEADERS, END_STREAM, 1, block[:3]),
        frame(CONTINUATION, 0, 1, block[3:7]),
        frame(CONTINUATION, END_HEADERS, 1, block[7:]),
    )
    assert [s.id for s in received(events)] == [1]
    client.send(frame(HEADERS, 0, 3, block[:3]), frame(PING, 0, 0, b"\x00" * 8))
    terminated(client, PROTOCOL_ERROR)  # nothing may come between


def test_push_promise_from_a_client_is_a_protocol_error() -> None:
    client = Client()
    client.send(frame(0x5, END_HEADERS, 1, b"\x00\x00\x00\x02"))
    terminated(client, PROTOCOL_ERROR)


def test_unknown_frame_types_are_ignored() -> None:
    client = Client()
    client.send(frame(0xFA, 0x7, 0, b"anything"))
    assert received(client.request(1)) and client.goaway() is None


def test_ping_is_acknowledged_with_its_payload() -> None:
    client = Client()
    client.send(frame(PING, 0, 0, b"12345678"), frame(PING, 1, 0, b"ignored!"))
    pings = [(f, p) for k, f, _, p in client.read() if k == PING]
    assert pings == [(1, b"12345678")]


def test_go_away_refuses_new_streams_and_lets_open_ones_finish() -> None:
    client = Client()
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()))
    client.server.go_away()
    assert client.goaway() == (1, NO_ERROR, b"")
    client.request(3, None)
    assert client.resets() == {3: REFUSED_STREAM}
    (stream,) = received(client.send(frame(DATA, END_STREAM, 1, b"x")))
    answer(client, stream)
    client.read()
    assert client.headers[1][-1] == {"grpc-status": "0"}


def test_answers_before_the_request_ends_reset_the_rest() -> None:
    client = Client()
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()))
    stream = client.server.streams[1]
    client.server.send_headers(stream, (*ANSWER, (b"grpc-status", b"8")), end_stream=True)
    assert client.resets() == {1: NO_ERROR}
    client.send(frame(DATA, END_STREAM, 1, b"the rest"))  # crossed the reset: ignored
    assert client.resets() == {1: NO_ERROR} and client.goaway() is None


def test_a_plain_answer_ends_with_an_empty_data_frame() -> None:
    client = Client()
    (stream,) = received(client.request(1, None))
    client.server.respond(stream, ((b":status", b"405"),), b"not here", ())
    frames = [(k, f, p) for k, f, _, p in client.read()]
    assert frames[-2:] == [(DATA, 0, b"not here"), (DATA, END_STREAM, b"")]
    assert client.headers[1] == [{":status": "405"}]


# ---------------------------------------------------------------------------- HPACK answers


def test_answers_use_the_dynamic_table() -> None:
    client = Client()
    sizes = []
    for stream_id in (1, 3, 5):
        (stream,) = received(client.request(stream_id))
        answer(client, stream)
        sizes.append([len(p) for k, _, sid, p in client.read() if k == HEADERS])
    assert sizes[1] == sizes[2] == [2, 1]  # two and one index bytes
    assert sizes[0][0] > 10 and all(b == {"grpc-status": "0"} for b in client.headers[5][1:])


def test_answers_follow_the_clients_table_size() -> None:
    client = Client(client_settings=_setting(SETTINGS_HEADER_TABLE_SIZE, 0))
    client.decoder.max_allowed_table_size = 0
    for stream_id in (1, 3):
        (stream,) = received(client.request(stream_id))
        answer(client, stream)
    client.read()
    assert client.decoder.header_table.maxsize == 0  # the first block said so
    assert client.headers[3][0] == {":status": "200", "content-type": "application/grpc"}


def test_header_encoder_matches_a_decoder_through_table_changes() -> None:
    encoder, decoder = HeaderEncoder(), hpack.Decoder()
    blocks: list[tuple[tuple[bytes, bytes], ...]] = [
        ANSWER,
        OK_TRAILERS,
        ((b"grpc-status", b"5"), (b"grpc-message", b"not found")),
        (*ANSWER, (b"grpc-accept-encoding", b"identity,deflate,gzip")),
        ((b"grpc-status", b"0"),),
        ((b":status", b"415"), (b"content-type", b"text/plain")),
    ]
    for size in (4096, 100, 0, 60, 4096, 8192):
        encoder.set_max_table_size(size)
        decoder.max_allowed_table_size = min(size, 4096)
        for fields in blocks * 3:
            decoded = decoder.decode(encoder.encode(fields), raw=True)
            assert [(bytes(n), bytes(v)) for n, v in decoded] == list(fields)
        assert encoder.table_size <= min(size, 4096)
        entries = decoder.header_table.dynamic_entries
        assert sum(32 + len(n) + len(v) for n, v in entries) == encoder.table_size


# ---------------------------------------------------------------------------- abuse: header blocks


def _size_updates(count: int) -> bytes:
    return b"\x20" * count  # "table size 0", again and again


def test_a_header_block_over_the_hard_limit_ends_the_connection_before_decoding() -> None:
    """HEADERS then CONTINUATION frames past the hard limit: the block is never decoded."""
    settings = Http2Settings(max_header_list_bytes=1000, max_header_block_bytes=20000)
    client = Client(settings)
    decoded = []
    original = client.server._decoder.decode
    client.server._decoder.decode = lambda *a, **k: decoded.append(1) or original(*a, **k)  # type: ignore[method-assign]
    client.send(frame(HEADERS, 0, 1, _size_updates(16384)))
    for _ in range(3):
        client.send(frame(CONTINUATION, 0, 1, _size_updates(16384)))
    terminated(client, ENHANCE_YOUR_CALM)
    assert not decoded


def test_a_single_headers_frame_over_the_hard_limit_is_refused_undecoded() -> None:
    settings = Http2Settings(max_header_list_bytes=1000, max_header_block_bytes=2000)
    client = Client(settings)
    client.send(frame(HEADERS, END_HEADERS, 1, _size_updates(3000)))
    terminated(client, ENHANCE_YOUR_CALM)


def test_more_than_two_table_size_updates_are_a_compression_error() -> None:
    """Size updates decode to nothing yet cost time: a block may open with two (RFC 7541
    section 4.2), and a block of thousands is refused after reading three."""
    client = Client()
    size_4096 = b"\x3f\xe1\x1f"
    client.send(frame(HEADERS, END_HEADERS, 1, size_4096 * 2 + client.block()))
    assert received(client.send(frame(DATA, END_STREAM, 1, b"")))
    client.send(frame(HEADERS, END_HEADERS, 3, _size_updates(16000)))
    terminated(client, COMPRESSION_ERROR)


def test_an_undecodable_block_is_a_compression_error() -> None:
    client = Client()
    client.send(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff"))  # index far out of range
    terminated(client, COMPRESSION_ERROR)


def test_an_oversized_header_list_refuses_its_stream_and_hpack_stays_in_step() -> None:
    """100 KB of metadata among other requests: only that stream is refused
    (RequestRejected); the entries its block added to the dynamic table are there for the
    next blocks, which decode right."""
    client = Client()
    metadata = [(f"x-big-{i}", "v" * 1000) for i in range(100)]  # indexed by the encoder
    for stream_id in range(1, 20, 2):
        headers = [*REQUEST, *metadata] if stream_id == 9 else REQUEST
        block = client.block(headers)
        pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
        frames = [frame(HEADERS, END_HEADERS if len(pieces) == 1 else 0, stream_id, pieces[0])]
        for i, piece in enumerate(pieces[1:], start=2):
            frames.append(
                frame(CONTINUATION, END_HEADERS if i == len(pieces) else 0, stream_id, piece)
            )
        client.send(*frames, frame(DATA, END_STREAM, stream_id, b"x"))
    rejected = [e for e in client.events if isinstance(e, RequestRejected)]
    assert [(e.stream.id, e.reason) for e in rejected] == [(9, Rejection.HEADER_LIST_TOO_LARGE)]
    assert "larger than the limit (65536)" in rejected[0].message
    assert [s.id for s in received(client.events)] == [1, 3, 5, 7, 11, 13, 15, 17, 19]
    # A block of index references to the big block's entries decodes to the same fields.
    refs = client.block([*REQUEST, *metadata[-3:]])
    assert len(refs) < 300  # index references, not 3000 bytes of literals
    (stream,) = received(
        client.send(frame(HEADERS, END_HEADERS, 21, refs), frame(DATA, END_STREAM, 21, b""))
    )
    assert stream.header("x-big-99") == "v" * 1000
    assert client.goaway() is None


def test_oversized_header_lists_are_bounded_in_total() -> None:
    """A client sending oversized lists over and over makes the server decode a bounded
    amount (8 hard limits at once, one per second after that), then loses its connection."""
    settings = Http2Settings(max_header_list_bytes=1000, max_header_block_bytes=2000)
    client = Client(settings)
    big = [*REQUEST, ("x-big", "v" * 1500)]
    stream_id = 1
    while client.goaway() is None:
        client.request(stream_id, None, big)
        stream_id += 2
        assert stream_id < 100
        for event in client.events:
            if isinstance(event, RequestRejected) and not event.stream.finished:
                client.server.respond(event.stream, ANSWER, b"", OK_TRAILERS)
    terminated(client, ENHANCE_YOUR_CALM)
    rejected = sum(isinstance(e, RequestRejected) for e in client.events)
    assert 8 <= rejected <= 20  # 8 x 2000 bytes of blocks of ~1600 bytes


def test_oversized_trailers_count_against_the_same_budget() -> None:
    settings = Http2Settings(max_header_list_bytes=1000, max_header_block_bytes=2000)
    client = Client(settings)
    big = [("x-big", "v" * 1500)]
    stream_id = 1
    while client.goaway() is None:
        client.send(frame(HEADERS, END_HEADERS, stream_id, client.block()))
        client.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, client.block(big)))
        stream_id += 2
        assert stream_id < 100
    terminated(client, ENHANCE_YOUR_CALM)
    assert client.resets()[1] == PROTOCOL_ERROR  # each such stream is reset


def test_the_decoded_header_cache_is_bounded() -> None:
    """Distinct blocks that leave the dynamic table alone are cached, but never more than
    HEADER_CACHE_ENTRIES blocks of HEADER_CACHE_BYTES together per connection."""
    client = Client()
    encoder = hpack.Encoder()
    for i in range(200):
        value = f"{i:04d}" + "v" * 3000
        fields = [*REQUEST, ("x-unique", value)]
        block = encoder.encode(
            [hpack.NeverIndexedHeaderTuple(n, v) for n, v in fields]  # no table change
        )
        stream_id = 2 * i + 1
        client.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
        assert client.server.header_cache_bytes <= HEADER_CACHE_BYTES
        assert client.server.header_cache_entries <= HEADER_CACHE_ENTRIES
    assert len(received(client.events)) == 200
    assert client.server.header_cache_entries > 0  # the cache still works


def test_repeated_blocks_are_decoded_once() -> None:
    client = Client()
    decoded = []
    original = client.server._decoder.decode
    client.server._decoder.decode = lambda *a, **k: decoded.append(1) or original(*a, **k)  # type: ignore[method-assign]
    block = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(n, v) for n, v in REQUEST])
    for stream_id in range(1, 200, 2):
        client.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
    assert len(decoded) == 1 and len(received(client.events)) == 100


# ---------------------------------------------------------------------------- abuse: floods


def test_rapid_reset_hands_out_no_request_and_ends_the_connection() -> None:
    """HEADERS, DATA with a request, RST_STREAM, again and again: a request reset in the
    same input never reaches the application; past the burst the connection ends with
    ENHANCE_YOUR_CALM."""
    client = Client(Http2Settings(reset_burst=100, reset_rate=10.0))
    data = []
    for i in range(150):
        stream_id = 2 * i + 1
        data += [
            frame(HEADERS, END_HEADERS, stream_id, client.block()),
            frame(DATA, END_STREAM, stream_id, b"\x00\x00\x00\x00\x00"),
            frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)),
        ]
    events = client.send(*data)
    assert not received(events)  # every request was reset before it was handed out
    terminated(client, ENHANCE_YOUR_CALM)
    last = client.goaway()
    assert last is not None and last[0] == 201  # the 101st reset's stream


def test_resets_at_a_steady_rate_keep_the_connection() -> None:
    """Cancelling calls (deadlines) is normal: a client resetting within the rate keeps its
    connection however long it goes on."""
    client = Client(Http2Settings(reset_burst=100, reset_rate=10.0))
    for i in range(1000):
        stream_id = 2 * i + 1
        client.send(frame(HEADERS, END_HEADERS, stream_id, client.block()))
        client.send(frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
        client.clock.advance(0.1)
    assert client.goaway() is None


def test_resets_of_answered_streams_do_not_count() -> None:
    client = Client(Http2Settings(reset_burst=10, reset_rate=0.0))
    for i in range(50):
        stream_id = 2 * i + 1
        (stream,) = received(client.request(stream_id))
        answer(client, stream)
        client.send(frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
        client.clock.advance(0.1)  # the control-frame budget refills; resets' would not
    assert client.goaway() is None


@pytest.mark.parametrize(
    ("what", "flood"),
    [
        ("PING", lambda sid: frame(PING, 0, 0, b"\x00" * 8)),
        ("SETTINGS", lambda sid: frame(SETTINGS, 0, 0, b"")),
        ("PRIORITY", lambda sid: frame(PRIORITY_FRAME, 0, 1, struct.pack(">IB", 0, 1))),
        ("empty DATA", lambda sid: frame(DATA, 0, 1, b"")),
        ("unknown frames", lambda sid: frame(0xFA, 0, 0, b"")),
        ("DATA on closed streams", lambda sid: frame(DATA, 0, 3, b"x")),
    ],
)
def test_floods_of_frames_without_work_end_the_connection(what: str, flood: object) -> None:
    client = Client(Http2Settings(control_frame_burst=100, control_frame_rate=10.0))
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()))
    for stream in received(client.request(3)):
        answer(client, stream)
    assert callable(flood)
    client.send(*[flood(i) for i in range(150)])
    terminated(client, ENHANCE_YOUR_CALM)
    assert what.split()[-1].lower() in client.goaway()[2].decode().lower()  # type: ignore[index]


def test_an_empty_continuation_flood_ends_the_connection() -> None:
    client = Client(Http2Settings(control_frame_burst=100, control_frame_rate=10.0))
    block = client.block()
    client.send(frame(HEADERS, 0, 1, block), *[frame(CONTINUATION, 0, 1, b"")] * 150)
    terminated(client, ENHANCE_YOUR_CALM)


def test_control_frames_at_a_steady_rate_keep_the_connection() -> None:
    client = Client(Http2Settings(control_frame_burst=100, control_frame_rate=10.0))
    for _ in range(1000):
        client.send(frame(PING, 0, 0, b"\x00" * 8))
        client.clock.advance(0.1)
    assert client.goaway() is None
    assert sum(k == PING for k, *_ in client.frames) == 1000


def test_token_bucket() -> None:
    clock = ManualClock()
    bucket = TokenBucket(3, 2.0, clock.monotonic)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert bucket.take() and not bucket.take()
    clock.advance(100)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert not bucket.take(5)


# ---------------------------------------------------------------------------- abuse: time


def test_a_request_not_complete_in_time_is_rejected() -> None:
    """A stalled body (or a slow one: one byte now and then) holds its stream only until
    the request timeout; the connection's other streams are not affected."""
    client = Client(Http2Settings(request_timeout_seconds=30.0))
    client.send(frame(HEADERS, END_HEADERS, 1, client.block()), frame(DATA, 0, 1, b"\x00"))
    client.clock.advance(10)
    client.send(frame(HEADERS, END_HEADERS, 3, client.block()))
    assert client.server.next_deadline() == 30.0
    for _ in range(19):
        client.clock.advance(1)
        client.send(frame(DATA, 0, 1, b"\x00"))  # progress, slowly
        assert not client.server.expire()
    client.clock.advance(1)
    (event,) = client.server.expire()
    assert isinstance(event, RequestRejected) and event.stream.id == 1
    assert event.reason is Rejection.REQUEST_TIMEOUT
    client.server.send_headers(event.stream, (*ANSWER, (b"grpc-status", b"4")), end_stream=True)
    assert client.resets() == {1: NO_ERROR}
    assert client.server.next_deadline() == 40.0  # stream 3's
    assert received(client.send(frame(DATA, END_STREAM, 3, b"")))
    assert client.server.next_deadline() is None


def test_a_header_block_not_complete_in_time_ends_the_connection() -> None:
    client = Client(Http2Settings(request_timeout_seconds=5.0))
    client.send(frame(HEADERS, 0, 1, client.block()[:2]))
    assert client.server.next_deadline() == 5.0
    client.clock.advance(4.9)
    assert not client.server.expire()
    client.clock.advance(0.1)
    client.events += client.server.expire()
    terminated(client, ENHANCE_YOUR_CALM)


def test_a_connection_without_preface_in_time_ends() -> None:
    clock = ManualClock()
    server = ServerConnection(Http2Settings(preface_timeout_seconds=2.0), clock.monotonic)
    server.initiate()
    assert server.receive(PREFACE[:5]) == []
    assert server.next_deadline() == 2.0
    clock.advance(2.0)
    (event,) = server.expire()
    assert isinstance(event, ConnectionTerminated) and event.code is None
    assert server.terminated and server.receive(PREFACE[5:]) == []


def test_a_bad_preface_ends_the_connection() -> None:
    server = ServerConnection(Http2Settings())
    (event,) = server.receive(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10)
    assert isinstance(event, ConnectionTerminated) and event.code == PROTOCOL_ERROR
    assert b"preface" in server.data_to_send()
