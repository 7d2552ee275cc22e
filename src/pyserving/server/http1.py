"""The REST API's HTTP/1.1 server: ``httptools`` driven directly on a uvloop event loop.

As the gRPC front end drives HTTP/2 (``http2.py``), :class:`Http1Connection` is an
``asyncio.Protocol`` that feeds the bytes read to ``httptools.HttpRequestParser`` (the
HTTP/1.1 parser uvicorn used) and hands complete requests to a
:class:`~pyserving.server.rest.RestHandler`, with no ASGI layer between: no per-request task,
event or message dicts. Where a request runs:

* A POST ``:predict`` (``/v1``) or ``/infer`` (``/v2``) with a body up to
  :data:`INLINE_REQUEST_BYTES` and no ``Content-Encoding`` runs on the event loop when its
  model's recent calls (JSON decoding, the model, JSON encoding) took under
  :data:`INLINE_RUN_SECONDS` (0.4 ms) on average; it is answered within
  the turn of the loop that read it, as the gRPC front end answers a small Predict. The durations
  are kept by a :class:`~pyserving.server.call_costs.CallCosts` (injectable: tests decide
  what counts as fast). A model not measured yet, or a slow one, runs on a worker.
* Everything else (status, metadata, other verbs, large or compressed bodies, extra routes
  such as health and metrics) runs ``RestHandler.start`` on the worker pool
  (``rest_api_num_threads``), as before.
* A predict request for a batching model only queues its request (a pending response): the
  loop answers once the batch has run, and no thread waits for it.

Answers are written at once on a connection alone on the port; with others open, at the end
of the loop's turn, back to back with the other answers of the turn
(:mod:`~pyserving.server.turn_writes`), in order on each connection.

HTTP behaviour:

* keep-alive (HTTP/1.1 by default, closed after an HTTP/1.0 request or ``Connection:
  close``) and pipelining: requests on a connection are answered one at a time, in order;
  while more than :attr:`Http1Limits.max_pipelined` complete requests wait, the connection
  is not read;
* ``Expect: 100-continue``: ``100 Continue`` is sent when the request's turn comes and its
  body is not refused; a request refused before that (413) is answered with ``Connection:
  close``;
* chunked request bodies (decoded by the parser);
* ``--rest_api_max_body_bytes``: a body declared (``Content-Length``) or received beyond
  the limit is answered ``413 {"error": ...}`` at once; the rest of it is read and discarded
  and the connection serves on;
* hostile clients: a request line and headers over :attr:`Http1Limits.max_head_bytes` get
  ``431`` and the connection closes; a request whose headers are not complete within
  :attr:`Http1Limits.head_timeout` seconds of its first byte, or whose body pauses for more
  than :attr:`Http1Limits.body_idle_timeout`, has its connection closed (slowloris), as has
  a connection idle between requests for :attr:`Http1Limits.keep_alive_timeout`; bytes that
  are not HTTP/1.1 get ``400 {"error": ...}`` and the connection closes;
* ``rest_api_timeout_in_ms``: a request not answered in time gets ``504 {"error": "Request
  timed out after N ms"}`` (its work runs on, its answer is dropped);
* the handler's answer to a HEAD request is written without its body; with
  ``--rest_api_enable_cors_support``, ``OPTIONS`` is answered 200 and every answer carries
  the CORS headers;
* TLS (``--rest_api_ssl_certfile``/``keyfile``, client certificates required with
  ``--rest_api_ssl_client_ca_file``) is the event loop's TLS transport;
* shutdown: the listening socket closes, idle connections close, and connections with a
  request in progress close after its answer (``Connection: close``), within the grace
  period.

Threading: every :class:`Http1Connection` method runs on the server's loop; workers come back
with ``loop.call_soon_threadsafe``. :class:`RestServer` is thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

import httptools

from pyserving.errors import DeadlineExceeded, InvalidArgument, Unavailable
from pyserving.server.call_costs import CallCosts
from pyserving.server.rest import (
    PendingResponse,
    RestHandler,
    RestResponse,
    _too_large,
    error_response,
    unescaped,
)
from pyserving.server.turn_writes import TurnWrites

log = logging.getLogger(__name__)

#: Predict bodies up to this size may run on the event loop; larger ones run on a worker.
INLINE_REQUEST_BYTES = 64 * 1024
#: A model whose recent REST calls took less than this (seconds, moving average) runs on the
#: event loop. A REST call's measured time includes decoding and encoding its JSON, which
#: costs the same on either thread, ~0.1-0.15 ms more than a gRPC call's protobuf: this
#: leaves the model about what the gRPC front end's
#: :data:`~pyserving.server.call_costs.INLINE_RUN_SECONDS` leaves it. (With 0.2 ms here, a
#: fast model's REST calls measured while other processes took the CPU crossed it now and
#: then and went to workers for a while.)
INLINE_RUN_SECONDS = 400e-6
#: Name of the thread running the REST server's event loop.
LOOP_THREAD_NAME = "pyserving-rest-loop"
#: While the transport holds more unsent bytes than this, the connection is not read.
WRITE_HIGH_WATER = 4 << 20

_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/[0-9]+|/labels/[^/:]+)?:predict$", re.I)
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CORS = (
    b"access-control-allow-origin: *\r\n"
    b"access-control-allow-methods: POST, GET\r\n"
    b"access-control-allow-headers: Content-Type\r\n"
)
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii")
    for status in http.HTTPStatus
}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} \r\n".encode("ascii")


@dataclass(frozen=True)
class Http1Limits:
    """What one connection may cost the server (defaults suit production)."""

    #: Largest request line plus headers, in bytes; beyond it: 431 and the connection closes.
    max_head_bytes: int = 64 * 1024
    #: Seconds from a request's first byte until its headers must be complete.
    head_timeout: float = 30.0
    #: Longest pause, in seconds, while a request's body is arriving.
    body_idle_timeout: float = 60.0
    #: Seconds an idle keep-alive connection stays open (uvicorn's default: 5).
    keep_alive_timeout: float = 5.0
    #: Complete requests that may wait behind the one being answered before reading stops.
    max_pipelined: int = 16


@dataclass(frozen=True)
class RestServerOptions:
    """The REST port: address, limits, TLS. ``max_body_bytes`` None = no limit."""

    port: int = 0
    host: str = "0.0.0.0"
    timeout_ms: int = 30000
    enable_cors: bool = False
    max_body_bytes: int | None = 1 << 30
    #: HTTPS: PEM certificate (chain) and key ("" = plain HTTP).
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    #: PEM CA certificates client certificates must be signed by ("" = none asked for).
    ssl_client_ca_file: str = ""
    #: ``SO_REUSEPORT`` on the listening socket (several processes serving one port).
    reuse_port: bool = False
    backlog: int = 2048


def listening_socket(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 2048
) -> socket.socket:
    """The REST port's listening TCP socket: bound, listening, non-blocking, with
    ``SO_REUSEADDR`` and, when ``reuse_port``, ``SO_REUSEPORT`` (so that several processes
    may each bind the same port and the kernel spreads connections over them).
    ``OSError`` when it cannot be bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def ssl_context(certfile: str, keyfile: str = "", client_ca_file: str = "") -> ssl.SSLContext:
    """The REST port's TLS context: the server certificate, and with ``client_ca_file``
    client certificates signed by those CAs required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile or None)
    if client_ca_file:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the request line and headers are over the limit."""


class _Request:
    """One request on a connection, from its headers until it is answered and read."""

    __slots__ = (
        "answered",
        "body",
        "chunks",
        "complete",
        "continued",
        "error",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "path",
        "size",
        "started",
        "timer",
    )

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.body = b""
        self.size = 0
        self.keep_alive = True
        self.expect_continue = False
        self.continued = False
        #: The request line, headers and body are all in.
        self.complete = False
        #: Its work has started (on the loop or a worker).
        self.started = False
        #: Its answer is written (or will never be: the connection is gone).
        self.answered = False
        #: The answer it gets without being run (413, 400).
        self.error: RestResponse | None = None
        self.timer: asyncio.TimerHandle | None = None


class _Dates:
    """The ``date`` header line, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        return self._line


class Http1Connection(asyncio.Protocol):
    """The server side of one HTTP/1.1 connection (see the module docstring)."""

    def __init__(self, server: RestServer) -> None:
        self._server = server
        self._loop = server.loop
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._queue: deque[_Request] = deque()
        self._request: _Request | None = None  # the one being parsed
        self._url = b""
        self._head_bytes = 0
        self._paused = False  # reading paused: too many pipelined requests
        self._done_reading = False  # after an error or upgrade: no more requests
        self._write_paused = False
        self._closing = False  # server shutdown: close after the answer in progress
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._deadline = math.inf
        self._timeout_deadline = math.inf
        self._out: list[bytes] = []  # answers written at the end of the loop's turn
        self._close_after_out = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._server.connections.add(self)
        self._set_deadline(self._loop.time() + self._limits.keep_alive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for request in self._queue:
            request.answered = True  # a worker still running it drops its answer
            if request.timer is not None:
                request.timer.cancel()
        self._queue.clear()
        self._server.connection_closed(self)

    def pause_writing(self) -> None:
        """The client reads slower than answers are written: stop reading its requests."""
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade (h2c, websocket) is not offered: the request is answered as it is
            # and the connection closes after it (what follows is not HTTP/1.1).
            request = self._request
            if request is not None and request in self._queue:
                self.on_message_complete()
            if self._queue:
                self._queue[-1].keep_alive = False
            self._stop_reading()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                limit = self._limits.max_head_bytes
                self._refuse(431, f"Request line and headers exceed the limit of {limit} bytes")
            else:
                self._refuse(400, f"Invalid HTTP request: {exc}")
        self._advance()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` in turn (after the requests before it), then close."""
        request = _Request()
        request.complete = True
        request.keep_alive = False
        request.error = RestResponse(status, error_response(InvalidArgument(message)).body)
        if self._request is not None and self._request in self._queue:
            self._queue.remove(self._request)  # its answer would be the refusal's
        self._request = None
        self._queue.append(request)
        self._stop_reading()

    def _stop_reading(self) -> None:
        """Read no more requests on this connection."""
        self._done_reading = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = _Request()
        self._url = b""
        self._head_bytes = 0
        self._set_deadline(self._loop.time() + self._limits.head_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        assert self._request is not None
        self._request.headers[name.lower()] = value

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.max_head_bytes:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        parser = self._parser
        request.method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        request.keep_alive = version != "1.0" and parser.should_keep_alive()
        # As sent (percent-escapes kept): the handler decodes the parts it routes on.
        request.path = httptools.parse_url(self._url).path.decode("ascii")
        headers = request.headers
        limit = self._server.max_body_bytes
        if limit is not None:
            declared = headers.get(b"content-length", b"").strip()
            if declared.isdigit() and int(declared) > limit:
                request.error = error_response(_too_large(limit))
        request.expect_continue = (
            version == "1.1" and headers.get(b"expect", b"").lower() == b"100-continue"
        )
        self._queue.append(request)
        self._set_deadline(self._loop.time() + self._limits.body_idle_timeout)
        if len(self._queue) > self._limits.max_pipelined:
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        request = self._request
        assert request is not None
        self._set_deadline(self._loop.time() + self._limits.body_idle_timeout)
        if request.error is not None or request.answered:
            return  # refused: the rest is discarded
        request.size += len(body)
        limit = self._server.max_body_bytes
        if limit is not None and request.size > limit:
            request.error = error_response(_too_large(limit))
            request.chunks = []
            return
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        chunks = request.chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.chunks = []
        request.complete = True
        self._deadline = math.inf  # until it is answered (the request timeout's turn)

    # -- requests, in order --------------------------------------------------------------

    def _advance(self) -> None:
        """Serve the requests at the head of the queue as far as they can go now."""
        queue = self._queue
        while queue and self.transport is not None:
            request = queue[0]
            if request.answered:
                if not request.complete:
                    return  # its (refused) body is still arriving
                queue.popleft()
                continue
            if request.error is not None:
                self._answer(request, request.error)
                continue
            if not request.complete:
                if request.expect_continue and not request.continued:
                    request.continued = True
                    self._write(_CONTINUE)
                return
            if request.started:
                return  # running
            request.started = True
            self._start(request)
        if self.transport is None:
            return
        if not queue and self._request is None:
            if self._closing:
                self._close_when_written()
                return
            self._set_deadline(self._loop.time() + self._limits.keep_alive_timeout)
        self._update_reading()

    def _start(self, request: _Request) -> None:
        server = self._server
        if request.method == "OPTIONS" and server.enable_cors:
            self._answer(request, RestResponse(200, b""))
            return
        model = server.measured_model(request)
        costs = server.costs
        if model is not None and costs.runs_inline(model):
            timer = costs.timer
            start = timer()
            result = server.handler.start(
                request.method, request.path, request.headers, request.body
            )
            elapsed = timer() - start
            self._started(request, result, model, elapsed, on_loop=True)
            return
        if server.timeout is not None:
            request.timer = self._loop.call_later(server.timeout, self._timed_out, request)
        try:
            server.executor.submit(self._run_on_worker, request, model)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._answer(request, error_response(Unavailable("The server is shutting down")))

    def _started(
        self,
        request: _Request,
        result: RestResponse | PendingResponse,
        model: str | None,
        elapsed: float,
        on_loop: bool = False,
    ) -> None:
        """On the loop: ``handler.start``'s result for ``request``, which took ``elapsed``
        seconds (recorded for ``model``, run on the loop when ``on_loop``: a request that
        only queued for its batch counts as free, an error not at all)."""
        costs = self._server.costs
        if isinstance(result, PendingResponse):
            if model is not None:
                costs.record(model, 0.0, on_loop=on_loop)
            if request.answered:
                return
            if request.timer is None and self._server.timeout is not None:
                request.timer = self._loop.call_later(
                    self._server.timeout, self._timed_out, request
                )
            self._await_batch(request, result)
            return
        if model is not None and result.status == 200:
            costs.record(model, elapsed, on_loop=on_loop)
        self._answer(request, result)

    def _run_on_worker(self, request: _Request, model: str | None) -> None:
        """On a worker thread: the request's work; the loop answers with its result."""
        if request.answered:
            return  # timed out while queued, or the client left
        timer = self._server.costs.timer
        start = timer()
        result = self._server.handler.start(
            request.method, request.path, request.headers, request.body
        )
        elapsed = timer() - start
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self._loop.call_soon_threadsafe(self._worker_done, request, result, model, elapsed)

    def _worker_done(
        self,
        request: _Request,
        result: RestResponse | PendingResponse,
        model: str | None,
        elapsed: float,
    ) -> None:
        self._started(request, result, model, elapsed)
        self._advance()

    def _await_batch(self, request: _Request, pending: PendingResponse) -> None:
        loop = self._loop

        def done(_future: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
                loop.call_soon_threadsafe(self._batch_done, request, pending)

        pending.future.add_done_callback(done)

    def _batch_done(self, request: _Request, pending: PendingResponse) -> None:
        if not request.answered:
            # Encoded here, on the loop: the answer is small next to a model run, and a
            # worker would cost two more thread hand-offs.
            self._answer(request, pending.finish())
            self._advance()

    def _timed_out(self, request: _Request) -> None:
        request.timer = None
        timeout = self._server.timeout or 0.0
        self._answer(
            request,
            error_response(DeadlineExceeded(f"Request timed out after {int(timeout * 1000)} ms")),
        )
        self._advance()

    # -- output --------------------------------------------------------------------------

    def _answer(self, request: _Request, response: RestResponse) -> None:
        """Write ``response`` as ``request``'s answer (once); close after it when the
        request or the server says so."""
        if request.answered:
            return
        request.answered = True
        if request.timer is not None:
            request.timer.cancel()
            request.timer = None
        transport = self.transport
        if transport is None:
            return
        close = (
            not request.keep_alive
            or self._closing
            or (not request.complete and request.expect_continue and not request.continued)
        )
        server = self._server
        body = response.body
        parts = [
            _status_line(response.status),
            b"content-type: ",
            response.content_type,
            b"\r\ncontent-length: ",
            str(len(body)).encode("ascii"),
            b"\r\n",
            server.dates.line(),
        ]
        for name, value in response.headers:
            parts += (name, b": ", value, b"\r\n")
        if server.enable_cors:
            parts.append(_CORS)
        if close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if request.method != "HEAD":
            parts.append(body)
        self._write(b"".join(parts))
        if close:
            self._queue.clear()
            self._stop_reading()
            self._close_when_written()

    def _write(self, data: bytes) -> None:
        """Queue ``data`` for the end of the loop's turn (:mod:`~pyserving.server.turn_writes`:
        the answers to the requests read in one turn go out back to back). With one
        connection open there is nothing to write it with: written now."""
        if not self._out:
            if len(self._server.connections) == 1 and self.transport is not None:
                self.transport.write(data)
                return
            self._server.writes.add(self)
        self._out.append(data)

    def _close_when_written(self) -> None:
        """Close the connection once the queued answers are written."""
        if self._out:
            self._close_after_out = True
        elif self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        """Write the queued answers (called by the server at the end of the loop's turn)."""
        out = self._out
        if not out:
            return
        transport = self.transport
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if self._close_after_out:
            transport.close()

    # -- flow control and deadlines ------------------------------------------------------

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._done_reading:
            return
        pause = self._write_paused or len(self._queue) > self._limits.max_pipelined
        if pause != self._paused:
            self._paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _set_deadline(self, when: float) -> None:
        """Close the connection at ``when`` unless a later call moves the deadline (the
        timer is re-armed only when it must fire earlier)."""
        self._deadline = when
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self.transport is None:
            return
        if self._loop.time() >= self._deadline:
            log.debug("Closing an HTTP connection: no request, headers or body in time")
            self._close_when_written()
        elif self._deadline != math.inf:
            self._set_deadline(self._deadline)

    def shutdown(self) -> None:
        """The server stops: close now if idle, else after the answer in progress."""
        self._closing = True
        if self.transport is not None and not self._queue and self._request is None:
            self._close_when_written()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RestServer:
    """The REST port on its own uvloop event loop and thread (``pyserving-rest-loop``):
    :class:`Http1Connection` s answering with ``handler``, work on ``executor`` (owned by the
    caller, who shuts it down after :meth:`stop`). Start it with :func:`start_rest_server`."""

    def __init__(
        self,
        handler: RestHandler,
        executor: concurrent.futures.Executor,
        options: RestServerOptions,
        *,
        costs: CallCosts | None = None,
        limits: Http1Limits | None = None,
    ) -> None:
        import uvloop

        self.handler = handler
        self.executor = executor
        self.options = options
        self.costs = costs if costs is not None else CallCosts(threshold=INLINE_RUN_SECONDS)
        self.limits = limits if limits is not None else Http1Limits()
        self.timeout = options.timeout_ms / 1000.0 if options.timeout_ms > 0 else None
        self.enable_cors = options.enable_cors
        self.max_body_bytes = options.max_body_bytes
        self.dates = _Dates()
        self.connections: set[Http1Connection] = set()
        self.port = 0
        self.loop = uvloop.new_event_loop()
        self.writes = TurnWrites(self.loop)
        self._listener: asyncio.AbstractServer | None = None
        self._no_connections: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=LOOP_THREAD_NAME, daemon=True)

    def measured_model(self, request: _Request) -> str | None:
        """The model whose cost decides where ``request`` runs: a POST predict or infer
        with a small, uncompressed body; None for everything else (which runs on a
        worker)."""
        if (
            request.method != "POST"
            or len(request.body) > INLINE_REQUEST_BYTES
            or b"content-encoding" in request.headers
        ):
            return None
        match = _PREDICT.match(request.path) or _INFER.match(request.path)
        if match is None:
            return None
        return unescaped(match.group(1))

    def connection_closed(self, connection: Http1Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._no_connections is not None:
            self._no_connections.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def start(self) -> None:
        """Bind the port and start serving; ``RuntimeError`` when the port cannot be bound
        or the TLS files cannot be used."""
        options = self.options
        address = f"{options.host}:{options.port}"
        try:
            tls = (
                ssl_context(options.ssl_certfile, options.ssl_keyfile, options.ssl_client_ca_file)
                if options.ssl_certfile
                else None
            )
            sock = listening_socket(
                options.host,
                options.port,
                reuse_port=options.reuse_port,
                backlog=options.backlog,
            )
        except (OSError, ssl.SSLError) as exc:
            self.loop.close()
            raise RuntimeError(f"Failed to start the REST server at {address}: {exc}") from None
        self.port = int(sock.getsockname()[1])

        async def serve() -> None:
            self._listener = await self.loop.create_server(
                lambda: Http1Connection(self), sock=sock, ssl=tls
            )

        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(serve(), self.loop).result(30)
        except BaseException:
            sock.close()
            self.stop(None)
            raise

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting; give requests in progress ``grace`` seconds (None: none) to be
        answered, then close every connection and stop the loop. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._listener is not None:
                self._listener.close()
            self._no_connections = asyncio.Event()
            for connection in list(self.connections):
                connection.shutdown()
            if grace and self.connections:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._no_connections.wait(), grace)
            for connection in list(self.connections):
                connection.close()
            await asyncio.sleep(0)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result((grace or 0) + 30)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("REST server shutdown did not finish in time")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> RestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(None)


def start_rest_server(
    handler: RestHandler,
    executor: concurrent.futures.Executor,
    options: RestServerOptions,
    *,
    costs: CallCosts | None = None,
    limits: Http1Limits | None = None,
) -> RestServer:
    """Bind and start the REST port (see :class:`RestServer`); ``costs`` decides which
    predicts run on the event loop (default: a real-time :class:`CallCosts` with the
    threshold :data:`INLINE_RUN_SECONDS`), ``limits``
    replaces :class:`Http1Limits`' defaults. ``RuntimeError`` when it cannot start."""
    server = RestServer(handler, executor, options, costs=costs, limits=limits)
    server.start()
    return server


__all__ = [
    "INLINE_REQUEST_BYTES",
    "INLINE_RUN_SECONDS",
    "Http1Connection",
    "Http1Limits",
    "RestServer",
    "RestServerOptions",
    "listening_socket",
    "ssl_context",
    "start_rest_server",
]
