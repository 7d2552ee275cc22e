"""The gRPC transport on pyserving's own HTTP/2 server (``http2.py``), the default one.

It serves :class:`~pyserving.server.grpc.service.GrpcService`'s method table on a uvloop
event loop that speaks gRPC's HTTP/2 mapping directly: a small Predict costs tens of
microseconds of Python instead of the few hundred grpcio's Python server spends per call.

What a call goes through:

* The request's headers: ``:method`` must be POST (else HTTP 405) and ``content-type``
  ``application/grpc`` (else HTTP 415, as gRPC specifies), both with a line of text; an
  unknown ``:path`` is ``UNIMPLEMENTED``; ``grpc-timeout`` sets the deadline;
  ``grpc-encoding`` may be ``identity``, ``gzip`` or ``deflate`` (others are
  ``UNIMPLEMENTED``; answers list them in ``grpc-accept-encoding``). A header list over the
  connection's limit is ``RESOURCE_EXHAUSTED`` for that call alone, a request not complete
  within the connection's request timeout ``DEADLINE_EXCEEDED`` (see ``h2sansio.py``).
* The body: exactly one length-prefixed message; one larger than the receive limit is
  ``RESOURCE_EXHAUSTED`` (``Received message larger than max (N vs. LIMIT)``), answered as
  soon as its length prefix arrives. A compressed one is inflated on a worker thread.
* An :class:`~pyserving.server.grpc.calls.Inference` method (Predict, V2's ModelInfer): a
  small request (:data:`INLINE_REQUEST_BYTES`) is parsed on the event loop. It then starts
  on the loop when its model's recent calls took under
  :data:`~pyserving.server.call_costs.INLINE_RUN_SECONDS` (a fast model, or a batching
  model, whose call only queues the request), else on a worker thread, so a slow model
  never holds the loop; large requests are parsed on a worker. A request
  waiting for its batch holds no thread. The deadline is checked before and after the run;
  a client that resets the stream cancels its queued request. The durations are kept by
  :class:`CallCosts`, whose timer can be replaced (tests decide what counts as fast without
  depending on the machine's speed; see ``server/call_costs.py``).
* A :class:`~pyserving.server.grpc.calls.Unary` method runs on a worker thread (the
  ``pyserving-grpc`` pool, ``max_threads``), at most ``max_concurrent_streams`` per
  connection queued or running.
* Health (``grpc.health.v1.Health``): ``Check`` and the streaming ``Watch``, answered on the
  loop from the one :class:`~pyserving.server.grpc.health.HealthService`.

Errors become the call's status through :func:`~pyserving.server.grpc.calls.status_of`.
Answers are one write each: headers, the message and the ``grpc-status`` trailers.
:class:`H2GrpcServer` is thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import grpc

from pyserving.compression import GZIP, ZLIB, InflatedTooLarge, inflate
from pyserving.errors import (
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unimplemented,
)
from pyserving.server.call_costs import CallCosts
from pyserving.server.grpc.calls import (
    INLINE_REQUEST_BYTES,
    Call,
    Inference,
    Unary,
    run_unary,
    start_inference,
    status_of,
)
from pyserving.server.grpc.health import CHECK_PATH, WATCH_PATH
from pyserving.server.grpc.options import GrpcServerOptions, remove_socket, server_channel_args
from pyserving.server.grpc.service import GrpcService
from pyserving.server.h2sansio import Headers, Rejection
from pyserving.server.http2 import Http2Connection, Http2Settings, Stream
from pyserving.server.loop_server import LoopServer
from pyserving.server.service import ModelServing
from pyserving.server.turn_writes import TurnWrites

#: The compression algorithms requests may use, as answers announce them.
ACCEPT_ENCODING = b"identity,deflate,gzip"
#: An answer's headers (HPACK-encoded by the connection, in its dynamic table after the first).
RESPONSE_HEADERS: Headers = (
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", ACCEPT_ENCODING),
)
GRPC_STATUS = b"grpc-status"
GRPC_MESSAGE = b"grpc-message"
TRAILERS_OK: Headers = ((GRPC_STATUS, b"0"),)
#: What a request that is not gRPC (wrong method or content-type) is told, with 405 or 415.
NOT_GRPC_BODY = b"This is a gRPC server: requests are POST with content-type application/grpc.\n"

TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: ``grpc-encoding`` values requests may use, with their ``compression.inflate`` format.
ENCODINGS = {"gzip": GZIP, "deflate": ZLIB}


def status_trailers(code: grpc.StatusCode, message: str = "") -> Headers:
    """``grpc-status`` (and ``grpc-message``, percent-encoded) as trailer fields."""
    status = (GRPC_STATUS, str(code.value[0]).encode())
    if not message:
        return (status,)
    encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8")
    return (status, (GRPC_MESSAGE, encoded.encode("ascii")))


def parse_timeout(value: str) -> float | None:
    """A ``grpc-timeout`` value (``<digits><unit>``) in seconds; None when malformed."""
    digits = value[:-1]
    if len(value) < 2 or len(value) > 9 or not (digits.isascii() and digits.isdigit()):
        return None
    unit = TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def framed(data: bytes) -> bytes:
    """A serialized message as gRPC frames it: flag 0 (not compressed), 4-byte length."""
    return b"\x00" + len(data).to_bytes(4, "big") + data


def parse(message_type: Any, data: bytes) -> Any:
    """``data`` as a ``message_type``; ``Internal`` when it does not parse."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise Internal(f"Failed to parse {message.DESCRIPTOR.full_name}: {exc}") from None
    return message


def channel_limit(value: int | str) -> int:
    """A size limit from a channel argument: negative means none."""
    number = int(value)
    return 2**31 - 1 if number < 0 else number


class GrpcHandler:
    """Answers gRPC calls arriving on :class:`Http2Connection` streams (see the module
    docstring). Runs on the server's event loop; work goes to ``executor``. ``costs``
    measures models' Predict calls and picks loop or worker (default: a real-time
    :class:`CallCosts`). ``stream.context`` holds the call's :class:`Call` once its headers
    are checked (before that, the message's declared length)."""

    def __init__(
        self,
        serving: ModelServing,
        options: GrpcServerOptions,
        executor: concurrent.futures.Executor,
        loop: asyncio.AbstractEventLoop,
        costs: CallCosts | None = None,
    ) -> None:
        channel_args, max_tensor_bytes = server_channel_args(options)
        self.max_receive = channel_limit(channel_args["grpc.max_receive_message_length"])
        self.max_send = channel_limit(channel_args["grpc.max_send_message_length"])
        default_streams = Http2Settings().max_concurrent_streams
        self.max_streams = channel_limit(
            channel_args.get("grpc.max_concurrent_streams", default_streams)
        )
        self._executor = executor
        self._loop = loop
        self.service = GrpcService(
            serving,
            max_tensor_bytes=max_tensor_bytes,
            tensor_content=options.tensor_content,
            enable_health=options.enable_health,
            enable_profiler=options.enable_profiler,
        )
        self._methods = self.service.methods
        self.health = self.service.health
        self.costs = costs if costs is not None else CallCosts()
        self._jobs: dict[Http2Connection, int] = {}  # worker jobs per connection
        self._jobs_lock = threading.Lock()

    # -- http2.StreamHandler -------------------------------------------------------------

    def settings(self, limits: Http2Settings | None = None) -> Http2Settings:
        """The HTTP/2 limits of this front end's connections: ``limits`` (default: the
        defaults of :class:`Http2Settings`) with the stream count and body size of the
        channel arguments."""
        return dataclasses.replace(
            limits or Http2Settings(),
            max_concurrent_streams=self.max_streams,
            max_body_bytes=self.max_receive + 5,
        )

    def body_received(self, connection: Http2Connection, stream: Stream) -> bool:
        """Refuse a message whose declared length (or body) is over the receive limit.

        The length prefix is read once, from the first five bytes, and kept in
        ``stream.context`` until the request is complete."""
        declared = stream.context
        if not isinstance(declared, int):
            head = b""
            for chunk in stream.body:  # at most five chunks: they are never empty
                head += chunk[: 5 - len(head)]
                if len(head) == 5:
                    break
            declared = int.from_bytes(head[1:5], "big") if len(head) == 5 else None
            stream.context = declared
        declared = declared or 0
        if declared <= self.max_receive and stream.body_bytes <= self.max_receive + 5:
            return True
        self._fail(
            connection,
            stream,
            ResourceExhausted(
                f"Received message larger than max ({max(declared, stream.body_bytes - 5)} vs. "
                f"{self.max_receive})"
            ),
        )
        return False

    def request_rejected(
        self, connection: Http2Connection, stream: Stream, reason: Rejection, message: str
    ) -> None:
        """The connection refused the request: an oversized header list is
        ``RESOURCE_EXHAUSTED`` (as grpcio answers), a request not complete in time
        ``DEADLINE_EXCEEDED``."""
        if reason is Rejection.HEADER_LIST_TOO_LARGE:
            self._fail(connection, stream, ResourceExhausted(message))
        else:
            self._fail(connection, stream, DeadlineExceeded(message))

    def request_received(self, connection: Http2Connection, stream: Stream) -> None:
        try:
            path = self._check_headers(connection, stream)
            if path is None:
                return
            message, compressed = self._message_bytes(stream)
            if compressed:
                # Inflating may take long (up to the receive limit): never on the loop.
                self._submit(connection, self._inflate, connection, stream, path, message)
            else:
                self._dispatch(connection, stream, path, message)
        except Exception as exc:
            self._fail(connection, stream, exc)

    def _dispatch(
        self, connection: Http2Connection, stream: Stream, path: str, message: bytes
    ) -> None:
        """Route a complete request message to its method (on the loop)."""
        if stream.cancelled or connection.transport is None:
            return  # reset or disconnected while its message was inflated
        try:
            method = self._methods.get(path)
            if isinstance(method, Inference):
                self._inference(connection, stream, message, method)
            elif isinstance(method, Unary):
                self._unary(connection, stream, method, message)
            elif self.health is not None and path in (CHECK_PATH, WATCH_PATH):
                self._health(connection, stream, path, message)
            else:
                raise Unimplemented("Method not found!")
        except Exception as exc:
            self._fail(connection, stream, exc, path)

    def _inflate(
        self, connection: Http2Connection, stream: Stream, path: str, message: bytes
    ) -> None:
        """On a worker: decompress a request message, then dispatch it on the loop."""
        wbits = ENCODINGS.get(stream.header("grpc-encoding", "identity"))
        try:
            if wbits is None:
                raise Internal("Compressed message without grpc-encoding")
            try:
                inflated = inflate(message, wbits, self.max_receive)
            except InflatedTooLarge:
                # Inflated only up to the limit: a small "bomb" never takes more memory.
                raise ResourceExhausted(
                    f"Received message after decompression larger than max "
                    f"(more than {self.max_receive})"
                ) from None
            except (zlib.error, EOFError) as exc:
                raise Internal(f"Cannot decompress: {exc}") from None
        except Exception as exc:
            self._fail_later(connection, stream, exc, path)
            return
        with contextlib.suppress(RuntimeError):  # the server stopped meanwhile
            self._loop.call_soon_threadsafe(self._dispatch, connection, stream, path, inflated)

    # -- request checks ------------------------------------------------------------------

    def _check_headers(self, connection: Http2Connection, stream: Stream) -> str | None:
        """The method path; None when the request was answered (not gRPC: HTTP 405 or 415
        with a short text)."""
        fields = stream.fields
        method = fields.get(":method", "")
        if method != "POST" or not fields.get("content-type", "").startswith("application/grpc"):
            status = b"405" if method != "POST" else b"415"
            headers = ((b":status", status), (b"content-type", b"text/plain; charset=utf-8"))
            connection.respond(stream, headers, NOT_GRPC_BODY, ())
            return None
        path = fields.get(":path", "")
        timeout = fields.get("grpc-timeout", "")
        encoding = fields.get("grpc-encoding", "")
        deadline = None
        if timeout:
            seconds = parse_timeout(timeout)
            if seconds is None:
                raise Internal(f"Invalid grpc-timeout: {timeout}")
            deadline = time.monotonic() + seconds
        call = Call(deadline)
        stream.context = call
        stream.on_cancel.append(call.cancel)
        if encoding and encoding != "identity" and encoding not in ENCODINGS:
            raise Unimplemented(f"Compression algorithm '{encoding}' is not supported")
        return path

    def _message_bytes(self, stream: Stream) -> tuple[bytes, bool]:
        """The request's one message and whether it is compressed; ``Internal`` when the
        body is not one length-prefixed message."""
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        stream.body = []
        if len(body) < 5:
            raise Internal("Request without a message")
        size = int.from_bytes(body[1:5], "big")
        if len(body) != 5 + size:
            raise Internal("Request body is not exactly one length-prefixed message")
        return body[5:], bool(body[0])

    # -- answers -------------------------------------------------------------------------

    def _fail(
        self, connection: Http2Connection, stream: Stream, error: BaseException, path: str = ""
    ) -> None:
        """A trailers-only answer with the status of ``error``."""
        code, message = status_of(error, path or stream.fields.get(":path", ""))
        connection.send_headers(stream, RESPONSE_HEADERS + status_trailers(code, message), True)

    def _answer(self, connection: Http2Connection, stream: Stream, data: bytes) -> None:
        """Answer with the serialized response ``data``."""
        if len(data) > self.max_send:
            self._fail(
                connection,
                stream,
                ResourceExhausted(
                    f"Sent message larger than max ({len(data)} vs. {self.max_send})"
                ),
            )
            return
        connection.respond(stream, RESPONSE_HEADERS, framed(data), TRAILERS_OK)

    def _finish(
        self, connection: Http2Connection, stream: Stream, build: Callable[[], Any]
    ) -> None:
        """On the loop: answer with the response ``build()`` returns, or the status of what
        it raises."""
        try:
            data = build().SerializeToString()
        except Exception as exc:
            self._fail(connection, stream, exc)
        else:
            self._answer(connection, stream, data)

    def _finish_on_worker(
        self, connection: Http2Connection, stream: Stream, build: Callable[[], Any]
    ) -> None:
        """On a worker: build the response and serialize it here, off the loop; the loop
        answers with it, or with the status of what ``build`` raised."""
        try:
            data = build().SerializeToString()
        except Exception as exc:
            self._fail_later(connection, stream, exc)
            return
        with contextlib.suppress(RuntimeError):  # the server stopped; its loop is closed
            self._loop.call_soon_threadsafe(self._answer, connection, stream, data)

    def _fail_later(
        self, connection: Http2Connection, stream: Stream, error: BaseException, path: str = ""
    ) -> None:
        """:meth:`_fail` on the loop, from any thread."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._fail, connection, stream, error, path)

    def _submit(self, connection: Http2Connection, work: Callable[..., None], *args: Any) -> None:
        """Run ``work`` on a worker thread, on the loop's behalf of ``connection``.

        At most ``max_concurrent_streams`` such jobs per connection are queued or running,
        also for calls the client has reset meanwhile (a reset frees the stream at once, not
        its work): past that a call is ``RESOURCE_EXHAUSTED`` at once, so a client resetting
        calls as fast as it opens them cannot queue unbounded work ("rapid reset")."""
        with self._jobs_lock:
            jobs = self._jobs.get(connection, 0)
            if jobs >= self.max_streams:
                raise ResourceExhausted(
                    f"Too many calls in progress on this connection (limit {self.max_streams})"
                )
            self._jobs[connection] = jobs + 1

        def run() -> None:
            try:
                work(*args)
            finally:
                with self._jobs_lock:
                    left = self._jobs[connection] - 1
                    if left:
                        self._jobs[connection] = left
                    else:
                        del self._jobs[connection]

        self._executor.submit(run)

    # -- Inference methods (Predict, ModelInfer) -----------------------------------------

    def _inference(
        self, connection: Http2Connection, stream: Stream, body: bytes, method: Inference
    ) -> None:
        call: Call = stream.context
        if len(body) > INLINE_REQUEST_BYTES:
            work = self._inference_on_worker
            self._submit(connection, work, connection, stream, body, None, method)
            return
        request = parse(method.request_type, body)
        if not self.costs.runs_inline(method.model(request)):
            work = self._inference_on_worker
            self._submit(connection, work, connection, stream, b"", request, method)
            return
        future = start_inference(method, request, call, self.costs, on_loop=True)
        if future.done():
            self._finish(connection, stream, lambda: self._answer_of(future, call, method))
        else:
            self._answer_when_done(connection, stream, future, call, method)

    def _inference_on_worker(
        self,
        connection: Http2Connection,
        stream: Stream,
        body: bytes,
        request: Any,
        method: Inference,
    ) -> None:
        call: Call = stream.context
        if call.cancelled:
            return
        try:
            if request is None:
                request = parse(method.request_type, body)
            future = start_inference(method, request, call, self.costs)
        except Exception as exc:
            self._fail_later(connection, stream, exc)
            return
        if future.done():
            self._finish_on_worker(
                connection, stream, lambda: self._answer_of(future, call, method)
            )
        else:
            self._answer_when_done(connection, stream, future, call, method)

    def _answer_when_done(
        self,
        connection: Http2Connection,
        stream: Stream,
        future: concurrent.futures.Future[Any],
        call: Call,
        method: Inference,
    ) -> None:
        """Answer a queued request on the loop once its batch has run."""

        def done(f: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the server stopped; its loop is closed
                self._loop.call_soon_threadsafe(
                    self._finish, connection, stream, lambda: self._answer_of(f, call, method)
                )

        future.add_done_callback(done)

    @staticmethod
    def _answer_of(future: concurrent.futures.Future[Any], call: Call, method: Inference) -> Any:
        """The response of a finished request: its result's, or the status of its failure
        or of the deadline that passed while it ran."""
        result = future.result()
        call.check()
        return method.answer(result)

    # -- other methods -------------------------------------------------------------------

    def _unary(
        self, connection: Http2Connection, stream: Stream, method: Unary, body: bytes
    ) -> None:
        call: Call = stream.context

        def work() -> None:
            if not call.cancelled:
                self._finish_on_worker(
                    connection,
                    stream,
                    lambda: run_unary(method, parse(method.request_type, body), call),
                )

        self._submit(connection, work)

    def _health(self, connection: Http2Connection, stream: Stream, path: str, body: bytes) -> None:
        health = self.health
        assert health is not None
        request = parse(health.request_type, body)
        if path == CHECK_PATH:
            self._answer(connection, stream, health.check(request).SerializeToString())
            return
        loop = self._loop

        def send(response: Any) -> None:  # on the loop
            if stream.cancelled or connection.transport is None:
                return
            if response is None:
                connection.send_trailers(stream, TRAILERS_OK)
            else:
                connection.send_data(stream, framed(response.SerializeToString()))

        def watcher(response: Any) -> None:  # any thread; the loop sends in order
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(send, response)

        connection.send_headers(stream, RESPONSE_HEADERS)
        stream.on_cancel.append(health.watch(request, watcher))


class H2GrpcServer(LoopServer):
    """A running HTTP/2 gRPC front end (see :func:`start_h2_grpc_server`).

    ``port``, ``socket_path``, ``set_serving_status``, ``stop`` (idempotent, blocking),
    ``wait_for_termination``, and a context manager that stops without grace (see
    :class:`~pyserving.server.loop_server.LoopServer`).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.ThreadPoolExecutor,
        handler: GrpcHandler,
    ) -> None:
        super().__init__(loop, executor, handler.health)
        self.handler = handler
        self.listeners: list[asyncio.Server] = []
        self.connections: set[Http2Connection] = set()

    def stop(self, grace: float | None = None) -> None:
        """New calls are refused at once (GOAWAY), calls in flight get ``grace`` seconds
        (None: none), then connections close. The health service reports NOT_SERVING from
        the start and its watches end. Idempotent; blocks until stopped."""

        async def shutdown() -> None:
            for listener in self.listeners:
                listener.close()
            for connection in list(self.connections):
                connection.go_away()
            if grace:
                # Requests already on the wire are refused (REFUSED_STREAM: the client
                # retries them elsewhere) rather than cut by a closing socket.
                await asyncio.sleep(min(grace, 0.05))
                end = time.monotonic() + grace
                while time.monotonic() < end and any(c.streams for c in self.connections):
                    await asyncio.sleep(0.01)
            for connection in list(self.connections):
                connection.close()
            await asyncio.sleep(0)

        self._stop(shutdown(), (grace or 0) + 30)


def start_h2_grpc_server(
    serving: ModelServing,
    options: GrpcServerOptions,
    *,
    costs: CallCosts | None = None,
    limits: Http2Settings | None = None,
) -> H2GrpcServer:
    """Build, bind and start the HTTP/2 gRPC front end over ``serving``; ``costs`` decides
    which Predicts run on the event loop (default: a real-time :class:`CallCosts`);
    ``limits`` replaces the HTTP/2 limits' defaults (timeouts, abuse budgets; the stream
    count and body size always follow the channel arguments).

    Raises ``InvalidArgument`` for malformed channel arguments, ``RuntimeError`` when an
    address cannot be bound or the TLS key and certificate cannot be used.
    """
    import uvloop

    loop = uvloop.new_event_loop()
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, options.max_threads), thread_name_prefix="pyserving-grpc"
    )
    try:
        handler = GrpcHandler(serving, options, executor, loop, costs)
        tls = options.tls.ssl_context() if options.tls is not None else None
    except BaseException:
        executor.shutdown(wait=False)
        loop.close()
        raise
    server = H2GrpcServer(loop, executor, handler)
    settings = handler.settings(limits)
    writes = TurnWrites(loop)

    def protocol() -> Http2Connection:
        return Http2Connection(handler, settings, server.connections, writes=writes)

    async def start() -> None:
        address = f"0.0.0.0:{options.port}"
        try:
            tcp: asyncio.Server = await loop.create_server(  # type: ignore[assignment]
                protocol,
                "0.0.0.0",
                options.port,
                ssl=tls,
                backlog=1024,
                reuse_address=True,
                reuse_port=options.reuse_port,
            )
        except OSError as exc:
            raise RuntimeError(f"Failed to bind gRPC server to {address}: {exc}") from None
        server.listeners.append(tcp)
        server.port = int(tcp.sockets[0].getsockname()[1])
        if options.socket_path:
            remove_socket(options.socket_path)
            try:
                unix: asyncio.Server = await loop.create_unix_server(  # type: ignore[assignment]
                    protocol, options.socket_path, ssl=tls
                )
            except OSError as exc:
                raise RuntimeError(
                    f"Failed to bind gRPC server to unix:{options.socket_path}: {exc}"
                ) from None
            server.listeners.append(unix)
            server.socket_path = options.socket_path

    server.start(start(), "HTTP/2")
    return server


__all__ = [
    "GrpcHandler",
    "H2GrpcServer",
    "parse_timeout",
    "start_h2_grpc_server",
    "status_trailers",
]
