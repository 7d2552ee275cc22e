"""A server-side HTTP/2 connection on an asyncio event loop, for gRPC.

:class:`Http2Connection` is the I/O half of :class:`~pyserving.server.h2sansio.ServerConnection`
(which holds every protocol rule and limit): an ``asyncio.Protocol`` that feeds it the bytes
read, writes what it queues (once per read, at the end of the loop's turn when other
connections are open: :mod:`~pyserving.server.turn_writes`), arms one timer for its next
deadline, and hands the events it returns to a :class:`StreamHandler`. The handler answers through
:meth:`Http2Connection.respond`, or :meth:`~Http2Connection.send_headers` /
:meth:`~Http2Connection.send_data` / :meth:`~Http2Connection.send_trailers` for answers sent
in parts; headers are (name, value) tuples of bytes, HPACK-encoded by the connection.

What the adapter itself decides:

* a handler that raises (a bug) resets only its stream (``INTERNAL_ERROR``); a request
  refused by the connection that the handler leaves unanswered is reset (``CANCEL``), and so
  is a body over the limit once the handler has answered it;
* a stream reset by the client, by a stream error or with the connection runs its
  ``on_cancel`` callbacks once; a request reset in the same read that completed it never
  reaches the handler;
* while the client reads its answers slower than they are written (:data:`WRITE_HIGH_WATER`),
  its connection is not read (its requests, PINGs and SETTINGS wait).

Threading: every method runs on the connection's event loop. Handlers that finish on
another thread must come back with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol, cast

from pyserving.server.h2sansio import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    BodyReceived,
    ConnectionTerminated,
    Event,
    Headers,
    Http2Settings,
    Rejection,
    RequestReceived,
    RequestRejected,
    ServerConnection,
    Stream,
    StreamReset,
    frame,
    hpack_literal,
)
from pyserving.server.turn_writes import TurnWrites

log = logging.getLogger(__name__)

#: While the transport holds more unsent bytes than this, the connection stops reading.
WRITE_HIGH_WATER = 4 << 20


class StreamHandler(Protocol):
    """What :class:`Http2Connection` calls; every call is on the connection's loop."""

    def request_received(self, connection: Http2Connection, stream: Stream) -> None:
        """The request of ``stream`` is complete (headers and body); answer it (now or
        later) with :meth:`Http2Connection.respond` or its parts."""

    def body_received(self, connection: Http2Connection, stream: Stream) -> bool:
        """Part of the body arrived (``stream.body``), and more is to come or it is over
        ``max_body_bytes`` (``stream.over_limit``). False refuses the request: the handler
        has answered with an error, and the stream is reset. Over the limit it is refused
        whatever this says."""

    def request_rejected(
        self, connection: Http2Connection, stream: Stream, reason: Rejection, message: str
    ) -> None:
        """The connection refuses ``stream``'s request (``reason``, ``message`` for the
        client): answer with an error now (a trailers-only answer), or it is reset."""


class Http2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection on asyncio (see the module docstring).

    ``connections``: a set the connection adds itself to while it is open. ``clock``: the
    protocol's time (tests replace it; timers are armed on the loop for the same delays).
    ``writes``: the loop's :class:`~pyserving.server.turn_writes.TurnWrites`; with it,
    what a read or an answer queues is written at the end of the loop's turn, together with
    the other connections' output (see :meth:`_flush_soon`); without it, at once.
    """

    def __init__(
        self,
        handler: StreamHandler,
        settings: Http2Settings,
        connections: set[Http2Connection] | None = None,
        clock: Callable[[], float] = time.monotonic,
        writes: TurnWrites | None = None,
    ) -> None:
        self._handler = handler
        self._connections = connections
        self._writes = writes
        self._flush_queued = False
        self._h2 = ServerConnection(settings, clock)
        self._clock = clock
        self.transport: asyncio.Transport | None = None
        self._dispatching = False  # answers are written once, after the events
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0
        self.peer = ""

    @property
    def streams(self) -> dict[int, Stream]:
        """The open streams (requests arriving or being answered), by id."""
        return self._h2.streams

    @property
    def protocol(self) -> ServerConnection:
        """The connection's protocol state machine."""
        return self._h2

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        if self._connections is not None:
            self._connections.add(self)
        self._h2.initiate()
        self._flush()
        self._arm_timer()

    def pause_writing(self) -> None:
        """The client reads slower than answers are written: stop reading its requests (and
        PINGs, SETTINGS) until the transport's buffer drains."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connections is not None:
            self._connections.discard(self)
        self.transport = None
        streams = list(self._h2.streams.values())
        self._h2.streams.clear()
        for stream in streams:
            stream.cancelled = True
            _run_cancel_callbacks(stream)

    def data_received(self, data: bytes) -> None:
        self._dispatching = True
        try:
            self._dispatch(self._h2.receive(data))
        finally:
            self._dispatching = False
            self._flush_soon(after_read=True)
        self._arm_timer()

    # -- events --------------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        handler = self._handler
        for event in events:
            kind = type(event)
            if kind is RequestReceived:
                stream = cast(RequestReceived, event).stream
                if not stream.cancelled:
                    self._call(handler.request_received, stream)
            elif kind is BodyReceived:
                stream = cast(BodyReceived, event).stream
                if stream.cancelled or stream.finished:
                    continue
                accepted = self._call(handler.body_received, stream)
                if not accepted or stream.over_limit:
                    self.reset(stream, CANCEL)  # answered already (an error), or not at all
            elif kind is StreamReset:
                _run_cancel_callbacks(cast(StreamReset, event).stream)
            elif kind is RequestRejected:
                rejected = cast(RequestRejected, event)
                stream = rejected.stream
                if stream.cancelled:
                    continue
                try:
                    handler.request_rejected(self, stream, rejected.reason, rejected.message)
                except Exception:
                    log.exception("HTTP/2 stream handler failed on a rejected request")
                self.reset(stream, CANCEL)  # unless answered
            elif kind is ConnectionTerminated:
                terminated = cast(ConnectionTerminated, event)
                log.debug("HTTP/2 connection error from %s: %s", self.peer, terminated.message)
                self._flush()
                if self.transport is not None:
                    self.transport.close()

    def _call(
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

    def _arm_timer(self) -> None:
        """Make sure the loop wakes up by the protocol's next deadline."""
        deadline = self._h2.next_deadline()
        if deadline is None or self.transport is None:
            return
        if self._timer is not None:
            if self._timer_deadline <= deadline:
                return
            self._timer.cancel()
        delay = max(0.0, deadline - self._clock())
        self._timer_deadline = deadline
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        events = self._h2.expire()
        for event in events:
            if isinstance(event, ConnectionTerminated) and event.code is None:
                log.debug("HTTP/2 client %s sent no preface in time; closing", self.peer)
                self.transport.close()
                return
        self._dispatching = True
        try:
            self._dispatch(events)
        finally:
            self._dispatching = False
            self._flush()
        self._arm_timer()

    # -- output --------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def flush(self) -> None:
        """Write what is queued (:class:`~pyserving.server.turn_writes.TurnWrites`)."""
        self._flush_queued = False
        self._flush()

    def _flush_soon(self, after_read: bool = False) -> None:
        """Write what is queued at the end of the loop's turn. After a read with no other
        connection open there is nothing to write with: at once. Answers completed outside
        a read (a worker's, a batch's) always wait for the turn's end: a batch's answers go
        out in one write."""
        if self._writes is None or (
            after_read and self._connections is not None and len(self._connections) <= 1
        ):
            self._flush()
        elif not self._flush_queued:
            self._flush_queued = True
            self._writes.add(self)

    def _sent(self) -> None:
        if not self._dispatching:
            self._flush_soon()

    # -- answers -------------------------------------------------------------------------

    def respond(self, stream: Stream, headers: Headers, data: bytes, trailers: Headers) -> None:
        """Send a whole answer: ``headers``, DATA (may be empty; it waits for the client's
        windows), then ``trailers``, which end the stream. One write."""
        if self.transport is None:
            return
        self._h2.respond(stream, headers, data, trailers)
        self._sent()

    def send_headers(self, stream: Stream, headers: Headers, end_stream: bool = False) -> None:
        """A HEADERS block (with END_STREAM for a trailers-only answer)."""
        if self.transport is None:
            return
        self._h2.send_headers(stream, headers, end_stream)
        self._sent()

    def send_data(self, stream: Stream, data: bytes) -> None:
        """DATA bytes, sent as the windows allow (the rest waits for WINDOW_UPDATE)."""
        if self.transport is None:
            return
        self._h2.send_data(stream, data)
        self._sent()

    def send_trailers(self, stream: Stream, trailers: Headers) -> None:
        """The trailing HEADERS block; ends the stream once all DATA is sent."""
        if self.transport is None:
            return
        self._h2.send_trailers(stream, trailers)
        self._sent()

    def reset(self, stream: Stream, code: int = CANCEL) -> None:
        """End ``stream`` with RST_STREAM (no answer follows); its ``on_cancel`` callbacks
        run."""
        if self.transport is None or stream.cancelled or stream.finished:
            return
        self._h2.reset(stream, code)
        _run_cancel_callbacks(stream)
        self._sent()

    def close(self) -> None:
        """Close the connection now (streams still open are cancelled)."""
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def go_away(self) -> None:
        """Announce shutdown (GOAWAY, NO_ERROR): streams already open are answered, new ones
        are refused; the connection closes once the open streams are done."""
        if self.transport is None:
            return
        self._h2.go_away(NO_ERROR)
        self._sent()


def _run_cancel_callbacks(stream: Stream) -> None:
    callbacks, stream.on_cancel = stream.on_cancel, []
    for callback in callbacks:
        try:
            callback()
        except Exception:  # pragma: no cover - a handler's bug must not end the loop
            log.exception("stream cancel callback failed")


__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "ENHANCE_YOUR_CALM",
    "FRAME_HEADER",
    "GOAWAY",
    "HEADERS",
    "MAX_WINDOW",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY_FLAG",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "RST_STREAM",
    "SETTINGS",
    "SETTINGS_HEADER_TABLE_SIZE",
    "SETTINGS_INITIAL_WINDOW_SIZE",
    "SETTINGS_MAX_FRAME_SIZE",
    "WINDOW_UPDATE",
    "Http2Connection",
    "Http2Settings",
    "Rejection",
    "Stream",
    "StreamHandler",
    "frame",
    "hpack_literal",
]
