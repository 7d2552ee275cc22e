"""The gRPC front end on pyserving's own HTTP/2 server (``http2.py``), the default one.

The same services, error mapping, limits, TLS, UNIX socket and health service as
``grpc_server.py`` (grpcio), served on a uvloop event loop that speaks gRPC's HTTP/2
mapping directly: a small Predict costs tens of microseconds of Python instead of the few
hundred grpcio's Python server spends per call (REST does the same on ``http1.py``).

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
  soon as its length prefix arrives.
* Predict: a small request (:data:`INLINE_REQUEST_BYTES`) is decoded on the event loop. It
  then runs on the loop when its model's recent calls took under :data:`INLINE_RUN_SECONDS`
  (a fast model, or a batching model, whose call only queues the request), else on a worker
  thread, so a slow model never holds the loop; large requests are decoded on a worker. A
  request waiting for its batch holds no thread. The deadline is checked before and after
  the run; a client that resets the stream cancels its queued request. The durations are
  kept by :class:`CallCosts`, whose timer can be replaced (tests decide what counts as fast
  without depending on the machine's speed). The Open Inference Protocol's ``ModelInfer``
  (``v2/grpc.py``) is served the same way.
* Every other method runs the synchronous servicer's method on a worker thread (the
  ``pyserving-grpc`` pool, ``max_threads``), with a context giving the deadline,
  cancellation and ``abort``.
* Health (``grpc.health.v1.Health``): ``Check`` and the streaming ``Watch``, answered on the
  loop.

Answers are one write each: headers, the message and the ``grpc-status`` trailers.
:class:`H2GrpcServer` has the interface of :class:`~pyserving.server.grpc_server.GrpcServer`
and is thread-safe. Channel arguments other than :data:`SUPPORTED_CHANNEL_ARGUMENTS` are
grpcio's own; with any of them the server runs on grpcio instead (see
:func:`~pyserving.server.grpc_server.start_grpc_server`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import ssl
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
from grpc_health.v1 import health_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from pyserving.compression import GZIP, ZLIB, InflatedTooLarge, inflate
from pyserving.errors import ServingError
from pyserving.server.call_costs import INLINE_RUN_SECONDS, CallCosts
from pyserving.server.grpc_server import (
    SERVICE_NAMES,
    CallAborted,
    CallContext,
    GrpcServerOptions,
    GrpcTls,
    ModelServicer,
    PredictionServicer,
    _truncate,
    health_status,
    remove_socket,
    server_channel_args,
)
from pyserving.server.h2sansio import Headers, Rejection
from pyserving.server.http2 import Http2Connection, Http2Settings, Stream
from pyserving.server.loop_server import LoopServer
from pyserving.server.service import ModelServing

log = logging.getLogger(__name__)

#: Channel arguments this front end applies; any other one selects grpcio.
SUPPORTED_CHANNEL_ARGUMENTS = frozenset(
    {
        "grpc.max_receive_message_length",
        "grpc.max_send_message_length",
        "grpc.max_concurrent_streams",
    }
)

#: Predict requests up to this size are decoded on the event loop; larger ones on a worker.
INLINE_REQUEST_BYTES = 64 * 1024
#: How long ``set_serving_status`` waits for the loop to apply a health status.
STATUS_WAIT_SECONDS = 1.0

#: The compression algorithms requests may use, as answers announce them.
ACCEPT_ENCODING = b"identity,deflate,gzip"
#: An answer's headers (HPACK-encoded by the connection, in its dynamic table after the first).
RESPONSE_HEADERS: Headers = (
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", ACCEPT_ENCODING),
)
_GRPC_STATUS = b"grpc-status"
_GRPC_MESSAGE = b"grpc-message"
TRAILERS_OK: Headers = ((_GRPC_STATUS, b"0"),)
#: What a request that is not gRPC (wrong method or content-type) is told, with 405 or 415.
NOT_GRPC_BODY = b"This is a gRPC server: requests are POST with content-type application/grpc.\n"

_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: ``grpc-encoding`` values requests may use, with their ``compression.inflate`` format.
_ENCODINGS = {"gzip": GZIP, "deflate": ZLIB}


def status_trailers(code: grpc.StatusCode, message: str = "") -> Headers:
    """``grpc-status`` (and ``grpc-message``, percent-encoded) as trailer fields."""
    status = (_GRPC_STATUS, str(code.value[0]).encode())
    if not message:
        return (status,)
    encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8")
    return (status, (_GRPC_MESSAGE, encoded.encode("ascii")))


def parse_timeout(value: str) -> float | None:
    """A ``grpc-timeout`` value (``<digits><unit>``) in seconds; None when malformed."""
    digits = value[:-1]
    if len(value) < 2 or len(value) > 9 or not (digits.isascii() and digits.isdigit()):
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


@dataclass(frozen=True)
class _Method:
    """A unary method: its request type and the servicer method answering it."""

    request_type: Any
    run: Callable[[Any, CallContext], Any]


@dataclass(frozen=True)
class _Fast:
    """A method served as Predict is (Predict, V2's ModelInfer): its request type, the
    servicer answering it (``start_predict``, ``predict_response``) and the model a request
    names (the key of its call costs)."""

    request_type: Any
    servicer: Any
    model: Callable[[Any], str]


class _Health:
    """``grpc.health.v1.Health`` state: a status per service name, and open Watch calls.
    Used on the event loop only."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.watchers: dict[str, list[tuple[Http2Connection, Stream]]] = {}
        self.closed = False  # shutting down: Watch calls end at once

    def set(self, service: str, status: int) -> None:
        changed = self.statuses.get(service) != status
        self.statuses[service] = status
        if changed:
            for connection, stream in list(self.watchers.get(service, ())):
                connection.send_data(stream, _message(_health_response(status)))

    def check(self, request: Any) -> Any:
        status = self.statuses.get(request.service)
        if status is None:
            raise CallAborted(grpc.StatusCode.NOT_FOUND, "")
        return _health_response(status)

    def watch(self, connection: Http2Connection, stream: Stream, request: Any) -> None:
        service = request.service
        status = self.statuses.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        if self.closed:
            connection.respond(
                stream, RESPONSE_HEADERS, _message(_health_response(status)), TRAILERS_OK
            )
            return
        watchers = self.watchers.setdefault(service, [])
        watchers.append((connection, stream))

        def forget() -> None:
            with contextlib.suppress(ValueError):
                watchers.remove((connection, stream))

        stream.on_cancel.append(forget)
        connection.send_headers(stream, RESPONSE_HEADERS)
        connection.send_data(stream, _message(_health_response(status)))

    def end_watches(self) -> None:
        self.closed = True
        for watchers in self.watchers.values():
            for connection, stream in watchers:
                connection.send_trailers(stream, TRAILERS_OK)
        self.watchers.clear()


def _health_response(status: int) -> Any:
    return health_pb2.HealthCheckResponse(status=status)


def _message(message: Any) -> bytes:
    """A message as gRPC frames it: flag 0 (not compressed), 4-byte length, bytes."""
    data = message if isinstance(message, bytes) else message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


class GrpcHandler:
    """Answers gRPC calls arriving on :class:`Http2Connection` streams (see the module
    docstring). Runs on the server's event loop; work goes to ``executor``. ``costs``
    measures models' Predict calls and picks loop or worker (default: a real-time
    :class:`CallCosts`)."""

    def __init__(
        self,
        serving: ModelServing,
        options: GrpcServerOptions,
        executor: concurrent.futures.Executor,
        loop: asyncio.AbstractEventLoop,
        costs: CallCosts | None = None,
    ) -> None:
        channel_args, max_tensor_bytes = server_channel_args(options)
        self.max_receive = _limit(channel_args["grpc.max_receive_message_length"])
        self.max_send = _limit(channel_args["grpc.max_send_message_length"])
        default_streams = Http2Settings().max_concurrent_streams
        self.max_streams = _limit(channel_args.get("grpc.max_concurrent_streams", default_streams))
        self._executor = executor
        self._loop = loop
        self._predictor = PredictionServicer(
            serving, max_tensor_bytes=max_tensor_bytes, tensor_content=options.tensor_content
        )
        models = ModelServicer(serving)
        prediction = "/tensorflow.serving.PredictionService/"
        self._methods: dict[str, _Method] = {
            prediction + "Classify": _Method(
                classification_pb2.ClassificationRequest, self._predictor.Classify
            ),
            prediction + "Regress": _Method(
                regression_pb2.RegressionRequest, self._predictor.Regress
            ),
            prediction + "MultiInference": _Method(
                inference_pb2.MultiInferenceRequest, self._predictor.MultiInference
            ),
            prediction + "GetModelMetadata": _Method(
                get_model_metadata_pb2.GetModelMetadataRequest, self._predictor.GetModelMetadata
            ),
            "/tensorflow.serving.ModelService/GetModelStatus": _Method(
                get_model_status_pb2.GetModelStatusRequest, models.GetModelStatus
            ),
            "/tensorflow.serving.ModelService/HandleReloadConfigRequest": _Method(
                model_management_pb2.ReloadConfigRequest, models.HandleReloadConfigRequest
            ),
        }
        if options.enable_profiler:
            from pyserving.server.profiler_service import ProfilerServicer

            for path, (request_type, run) in ProfilerServicer().methods().items():
                self._methods[path] = _Method(request_type, run)
        from pyserving.server.v2.grpc import INFER_PATH, V2Servicer

        v2 = V2Servicer(serving)
        for path, (request_type, run) in v2.methods().items():
            self._methods[path] = _Method(request_type, run)
        self._fast = {
            prediction + "Predict": _Fast(
                predict_pb2.PredictRequest, self._predictor, lambda r: r.model_spec.name
            ),
            INFER_PATH: _Fast(v2.infer_request_type, v2, v2.model_name),
        }
        self.health: _Health | None = _Health() if options.enable_health else None
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
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({max(declared, stream.body_bytes - 5)} vs. "
            f"{self.max_receive})",
        )
        return False

    def request_rejected(
        self, connection: Http2Connection, stream: Stream, reason: Rejection, message: str
    ) -> None:
        """The connection refused the request: an oversized header list is
        ``RESOURCE_EXHAUSTED`` (as grpcio answers), a request not complete in time
        ``DEADLINE_EXCEEDED``."""
        if reason is Rejection.HEADER_LIST_TOO_LARGE:
            self._fail(connection, stream, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        else:
            self._fail(connection, stream, grpc.StatusCode.DEADLINE_EXCEEDED, message)

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
        except CallAborted as exc:
            self._fail(connection, stream, exc.code, exc.details)

    def _dispatch(
        self, connection: Http2Connection, stream: Stream, path: str, message: bytes
    ) -> None:
        """Route a complete request message to its method (on the loop)."""
        if stream.cancelled or connection.transport is None:
            return  # reset or disconnected while its message was inflated
        try:
            fast = self._fast.get(path)
            if fast is not None:
                self._predict(connection, stream, message, fast)
            elif path.startswith("/grpc.health.v1.Health/") and self.health is not None:
                self._health(connection, stream, path, message)
            else:
                method = self._methods.get(path)
                if method is None:
                    raise CallAborted(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
                self._unary(connection, stream, method, message)
        except CallAborted as exc:
            self._fail(connection, stream, exc.code, exc.details)

    def _inflate(
        self, connection: Http2Connection, stream: Stream, path: str, message: bytes
    ) -> None:
        """On a worker: decompress a request message, then dispatch it on the loop."""
        wbits = _ENCODINGS.get(stream.header("grpc-encoding", "identity"))
        try:
            if wbits is None:
                raise CallAborted(
                    grpc.StatusCode.INTERNAL, "Compressed message without grpc-encoding"
                )
            try:
                inflated = inflate(message, wbits, self.max_receive)
            except InflatedTooLarge:
                # Inflated only up to the limit: a small "bomb" never takes more memory.
                raise CallAborted(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message after decompression larger than max "
                    f"(more than {self.max_receive})",
                ) from None
            except (zlib.error, EOFError) as exc:
                raise CallAborted(grpc.StatusCode.INTERNAL, f"Cannot decompress: {exc}") from None
        except CallAborted as exc:
            failure = exc
            self._later(connection, stream, lambda: _raise(failure))
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
                raise CallAborted(grpc.StatusCode.INTERNAL, f"Invalid grpc-timeout: {timeout}")
            deadline = time.monotonic() + seconds
        context = CallContext(deadline)
        stream.context = context
        stream.on_cancel.append(context.cancel)
        if encoding and encoding != "identity" and encoding not in _ENCODINGS:
            raise CallAborted(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Compression algorithm '{encoding}' is not supported",
            )
        return path

    def _message_bytes(self, stream: Stream) -> tuple[bytes, bool]:
        """The request's one message and whether it is compressed; ``CallAborted`` when the
        body is not one length-prefixed message."""
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        stream.body = []
        if len(body) < 5:
            raise CallAborted(grpc.StatusCode.INTERNAL, "Request without a message")
        size = int.from_bytes(body[1:5], "big")
        if len(body) != 5 + size:
            raise CallAborted(
                grpc.StatusCode.INTERNAL, "Request body is not exactly one length-prefixed message"
            )
        return body[5:], bool(body[0])

    # -- answers -------------------------------------------------------------------------

    def _fail(
        self, connection: Http2Connection, stream: Stream, code: grpc.StatusCode, message: str
    ) -> None:
        """A trailers-only answer with ``code`` and ``message``."""
        connection.send_headers(stream, RESPONSE_HEADERS + status_trailers(code, message), True)

    def _answer(self, connection: Http2Connection, stream: Stream, response: Any) -> None:
        data = response.SerializeToString()
        if len(data) > self.max_send:
            self._fail(
                connection,
                stream,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {self.max_send})",
            )
            return
        connection.respond(stream, RESPONSE_HEADERS, _message(data), TRAILERS_OK)

    def _finish(
        self, connection: Http2Connection, stream: Stream, outcome: Callable[[], Any]
    ) -> None:
        """Answer with ``outcome()`` (a response message), or the status of what it raises."""
        try:
            response = outcome()
        except CallAborted as exc:
            self._fail(connection, stream, exc.code, exc.details)
        except ServingError as exc:
            log.debug("gRPC call failed: %s", exc.message)
            self._fail(connection, stream, exc.grpc_code, _truncate(exc.message))
        except Exception as exc:
            log.exception("gRPC call failed with an unexpected error")
            message = _truncate(f"{type(exc).__name__}: {exc}")
            self._fail(connection, stream, grpc.StatusCode.INTERNAL, message)
        else:
            self._answer(connection, stream, response)

    def _later(
        self, connection: Http2Connection, stream: Stream, outcome: Callable[[], Any]
    ) -> None:
        """:meth:`_finish` on the event loop, from any thread (dropped once the server has
        stopped and its loop is closed)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finish, connection, stream, outcome)

    def _submit(self, connection: Http2Connection, work: Callable[..., None], *args: Any) -> None:
        """Run ``work`` on a worker thread, on the loop's behalf of ``connection``.

        At most ``max_concurrent_streams`` such jobs per connection are queued or running,
        also for calls the client has reset meanwhile (a reset frees the stream at once, not
        its work): past that a call is ``RESOURCE_EXHAUSTED`` at once, so a client resetting
        calls as fast as it opens them cannot queue unbounded work ("rapid reset")."""
        with self._jobs_lock:
            jobs = self._jobs.get(connection, 0)
            if jobs >= self.max_streams:
                raise CallAborted(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Too many calls in progress on this connection (limit {self.max_streams})",
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

    # -- Predict -------------------------------------------------------------------------

    def _predict(
        self, connection: Http2Connection, stream: Stream, body: bytes, fast: _Fast
    ) -> None:
        context: CallContext = stream.context
        if len(body) > INLINE_REQUEST_BYTES:
            work = self._predict_on_worker
            self._submit(connection, work, connection, stream, body, None, fast)
            return
        request = _parse(fast.request_type, body)
        if not self.costs.runs_inline(fast.model(request)):
            work = self._predict_on_worker
            self._submit(connection, work, connection, stream, b"", request, fast)
            return
        if context.expired():
            raise CallAborted(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        future = self._start(request, context, fast)
        if future.done():
            self._finish(connection, stream, lambda: self._predict_response(future, context, fast))
        else:
            self._answer_when_done(connection, stream, future, context, fast)

    def _predict_on_worker(
        self, connection: Http2Connection, stream: Stream, body: bytes, request: Any, fast: _Fast
    ) -> None:
        context: CallContext = stream.context
        if not context.is_active():
            return
        try:
            if request is None:
                request = _parse(fast.request_type, body)
            if context.expired():
                raise CallAborted(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            future = self._start(request, context, fast)
        except Exception as exc:
            error = exc
            self._later(connection, stream, lambda: _raise(error))
            return
        if future.done():
            self._answer_from_worker(
                connection, stream, lambda: self._predict_response(future, context, fast)
            )
        else:
            self._answer_when_done(connection, stream, future, context, fast)

    def _answer_from_worker(
        self, connection: Http2Connection, stream: Stream, build: Callable[[], Any]
    ) -> None:
        """On a worker: build the response and serialize it here, off the loop; the loop
        answers with it, or with the status of what ``build`` raised."""
        try:
            data = build().SerializeToString()
        except Exception as exc:
            error = exc
            self._later(connection, stream, lambda: _raise(error))
            return
        self._later(connection, stream, lambda: _Serialized(data))

    def _answer_when_done(
        self,
        connection: Http2Connection,
        stream: Stream,
        future: concurrent.futures.Future[Any],
        context: CallContext,
        fast: _Fast,
    ) -> None:
        """Answer a queued Predict on the loop once its batch has run."""

        def done(f: concurrent.futures.Future[Any]) -> None:
            self._later(connection, stream, lambda: self._predict_response(f, context, fast))

        future.add_done_callback(done)

    def _start(
        self, request: Any, context: CallContext, fast: _Fast
    ) -> concurrent.futures.Future[Any]:
        """Run (or queue) a Predict, recording how long a successful call took for its model
        (a call that only queued the request for its batch counts as free; failures are not
        recorded)."""
        timer = self.costs.timer
        start = timer()
        future = fast.servicer.start_predict(request)
        context.future = future
        if not context.is_active():
            future.cancel()  # reset while it started: a queued request leaves its batch
        if future.done():
            if future.cancelled() or future.exception() is not None:
                return future  # a fast failure says nothing of the model's cost
            elapsed = timer() - start
        else:
            elapsed = 0.0  # only queued for its batch
        self.costs.record(fast.model(request), elapsed)
        return future

    def _predict_response(
        self, future: concurrent.futures.Future[Any], context: CallContext, fast: _Fast
    ) -> Any:
        if future.cancelled():
            raise CallAborted(grpc.StatusCode.CANCELLED, "Cancelled")
        result = future.result()
        if context.expired():
            raise CallAborted(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return fast.servicer.predict_response(result)

    # -- other methods -------------------------------------------------------------------

    def _unary(
        self, connection: Http2Connection, stream: Stream, method: _Method, body: bytes
    ) -> None:
        context: CallContext = stream.context

        def work() -> None:
            if context.is_active():
                self._answer_from_worker(
                    connection,
                    stream,
                    lambda: method.run(_parse(method.request_type, body), context),
                )

        self._submit(connection, work)

    def _health(self, connection: Http2Connection, stream: Stream, path: str, body: bytes) -> None:
        assert self.health is not None
        request = _parse(health_pb2.HealthCheckRequest, body)
        if path == "/grpc.health.v1.Health/Check":
            self._answer(connection, stream, self.health.check(request))
        elif path == "/grpc.health.v1.Health/Watch":
            self.health.watch(connection, stream, request)
        else:
            raise CallAborted(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


class _Serialized:
    """An already serialized response message (built on a worker thread)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def _raise(error: Exception) -> Any:
    raise error


def _parse(message_type: Any, data: bytes) -> Any:
    message = message_type()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise CallAborted(
            grpc.StatusCode.INTERNAL, f"Failed to parse {message.DESCRIPTOR.full_name}: {exc}"
        ) from None
    return message


def _limit(value: int | str) -> int:
    """A size limit from a channel argument: negative means none."""
    number = int(value)
    return 2**31 - 1 if number < 0 else number


def ssl_context(tls: GrpcTls) -> ssl.SSLContext:
    """A server TLS context for ``tls``, offering HTTP/2 (``h2``) by ALPN, as gRPC needs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="pyserving-tls-") as directory:
        cert = os.path.join(directory, "cert.pem")
        key = os.path.join(directory, "key.pem")
        for path, text in ((cert, tls.server_cert), (key, tls.server_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise RuntimeError(f"Cannot use the server key and certificate: {exc}") from None
    if tls.client_verify:
        context.load_verify_locations(cadata=tls.custom_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


class H2GrpcServer(LoopServer):
    """A running HTTP/2 gRPC front end (see :func:`start_h2_grpc_server`).

    Same interface as :class:`~pyserving.server.grpc_server.GrpcServer`: ``port``,
    ``socket_path``, ``set_serving_status``, ``stop`` (idempotent, blocking),
    ``wait_for_termination``, and a context manager that stops without grace.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.ThreadPoolExecutor,
        handler: GrpcHandler,
    ) -> None:
        super().__init__(loop, executor)
        self._handler = handler
        self._listeners: list[asyncio.Server] = []
        self._connections: set[Http2Connection] = set()

    def set_serving_status(self, ready: bool) -> None:
        """As :meth:`GrpcServer.set_serving_status`: applied on the loop, and in force when
        this returns unless the loop is busy for over :data:`STATUS_WAIT_SECONDS` (callers
        may hold the manager's lock, so the wait is short; the change still lands).
        Ignored once the server is stopping."""
        health = self._handler.health
        if health is None:
            return
        status = health_status(ready)

        def update() -> None:
            if self._stopped:
                return  # stop() reported NOT_SERVING for good
            for name in ("", *SERVICE_NAMES):
                health.set(name, status)

        if self._on_loop_thread():
            update()
            return
        done = threading.Event()

        def run() -> None:
            update()
            done.set()

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            return
        done.wait(STATUS_WAIT_SECONDS)

    def stop(self, grace: float | None = None) -> None:
        """As :meth:`GrpcServer.stop`: new calls are refused at once (GOAWAY), calls in
        flight get ``grace`` seconds (None: none), then connections close. Idempotent."""

        async def shutdown() -> None:
            health = self._handler.health
            if health is not None:
                for name in list(health.statuses):
                    health.set(name, health_status(False))
                health.end_watches()
            for listener in self._listeners:
                listener.close()
            for connection in list(self._connections):
                connection.go_away()
            if grace:
                # Requests already on the wire are refused (REFUSED_STREAM: the client
                # retries them elsewhere) rather than cut by a closing socket.
                await asyncio.sleep(min(grace, 0.05))
                end = time.monotonic() + grace
                while time.monotonic() < end and any(c.streams for c in self._connections):
                    await asyncio.sleep(0.01)
            for connection in list(self._connections):
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

    Raises as :func:`~pyserving.server.grpc_server.start_grpc_server`: ``InvalidArgument``
    for malformed channel arguments, ``RuntimeError`` when an address cannot be bound or the
    TLS key and certificate cannot be used.
    """
    import uvloop

    loop = uvloop.new_event_loop()
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, options.max_threads), thread_name_prefix="pyserving-grpc"
    )
    try:
        handler = GrpcHandler(serving, options, executor, loop, costs)
        tls = ssl_context(options.tls) if options.tls is not None else None
    except BaseException:
        executor.shutdown(wait=False)
        loop.close()
        raise
    server = H2GrpcServer(loop, executor, handler)
    settings = handler.settings(limits)

    def protocol() -> Http2Connection:
        return Http2Connection(handler, settings, server._connections)

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
        server._listeners.append(tcp)
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
            server._listeners.append(unix)
            server.socket_path = options.socket_path

    server._start(start(), "HTTP/2")
    return server


__all__ = [
    "INLINE_RUN_SECONDS",
    "SUPPORTED_CHANNEL_ARGUMENTS",
    "CallCosts",
    "GrpcHandler",
    "H2GrpcServer",
    "parse_timeout",
    "ssl_context",
    "start_h2_grpc_server",
    "status_trailers",
]
