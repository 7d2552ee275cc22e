"""The TF-Serving-compatible REST API over :class:`ModelServing`: routes and request work
(:class:`RestHandler`), served on the REST port by ``http1.py`` (and as a raw ASGI app by
:class:`RestApp`, for embedding in an ASGI server).

Routes (TF Serving's, case-insensitive; ``/v2/...``: the Open Inference Protocol, see
``v2/rest.py``)::

    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:(predict|classify|regress)
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]          model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata  signature metadata
    GET  /v1/models                                             every model's status

``GET /v1/models`` (pyserving's own; TF Serving has no list) answers
``{"models": [{"name": ..., "model_version_status": [...]}, ...]}``: each served model, by
name, with the same ``model_version_status`` list ``GET /v1/models/{name}`` gives (empty for
a model whose versions are not known yet).

Errors answer ``{"error": "..."}`` with TF Serving's status mapping (see ``errors.py``).
Request bodies may be gzip-encoded. The work of a request (JSON decoding, the model run,
JSON encoding) happens in :meth:`RestHandler.start`, which the transport calls on a bounded
thread pool (``rest_api_num_threads``), or, for a small predict whose model is fast, on its
event loop (see ``http1.py``); ``rest_api_timeout_in_ms`` bounds how long a client waits. A
predict request for a batching model only decodes and queues it for its batch (a
:class:`PendingResponse`); the event loop awaits the batch's answer and encodes it, so a
request waiting for its batch holds no thread.

Request size (``--rest_api_max_body_bytes``): a body longer than the limit, as declared by
``Content-Length`` or as received, is answered ``413 {"error": ...}`` without reading the
rest of it (the server discards what still arrives); a gzip body is decompressed only up to
the limit, so a small body that inflates past it (a "gzip bomb") gets the same 413.

Request names never reach the file system: a model name, label or version in a URL is only
a key into the loaded model set (``/v1/models/..%2Fetc`` is a model named ``../etc``, which
is not found).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import orjson
from google.protobuf import json_format
from tensorflow_serving.apis import input_pb2

from pyserving import codec
from pyserving.compression import GZIP, ZLIB, InflatedTooLarge, inflate
from pyserving.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
)
from pyserving.inference import SignatureNotFound
from pyserving.platforms.generic import is_open_signature, request_signature
from pyserving.server.service import ModelServing, ModelSpec, PredictResult

log = logging.getLogger(__name__)

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# TF Serving's routes, matched on the path as sent: percent-escapes in a model name or label
# are decoded after matching (so a name may hold "/" or ":"), none elsewhere; versions are
# ASCII digits.
_POST = re.compile(
    r"^/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:(classify|regress|predict)$",
    re.IGNORECASE,
)
_LIST = re.compile(r"^/v1/models/?$", re.IGNORECASE)
_GET = re.compile(
    r"^/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?(/metadata)?$", re.IGNORECASE
)
_CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    (b"access-control-allow-headers", b"Content-Type"),
]


class RequestTooLarge(ResourceExhausted):
    """A request body (or its decompressed form) is over ``--rest_api_max_body_bytes``.

    RESOURCE_EXHAUSTED as a status code; over HTTP it is ``413 Payload Too Large``.
    """

    def to_http(self) -> tuple[int, dict[str, str]]:
        return 413, {"error": self.message}


def _too_large(limit: int, what: str = "Request body") -> RequestTooLarge:
    return RequestTooLarge(f"{what} exceeds the limit of {limit} bytes (--rest_api_max_body_bytes)")


@dataclass(frozen=True)
class RestResponse:
    """An answer: status, body, content type, and any further headers."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


def error_response(error: ServingError) -> RestResponse:
    """``{"error": message}`` with the error's HTTP status. A message quoting what a client
    sent may hold text that is not valid UTF-8 (lone surrogates standing for invalid bytes);
    those characters are written as backslash escapes, so the answer is always valid JSON."""
    status, body = error.to_http()
    try:
        return RestResponse(status, orjson.dumps(body))
    except TypeError:
        safe = {k: v.encode("utf-8", "backslashreplace").decode("utf-8") for k, v in body.items()}
        return RestResponse(status, orjson.dumps(safe))


def predict_response(result: PredictResult, fmt: str) -> RestResponse:
    """A predict answer in the request's format (``row`` or ``columnar``)."""
    return RestResponse(200, codec.format_predict_response(result.outputs, fmt))


@dataclass(frozen=True)
class PendingResponse:
    """A predict request queued for its batch: ``future`` resolves to its result, which
    :meth:`finish` turns into the response with ``encode`` (an error response for a failed
    future, or for what ``encode`` raises)."""

    future: concurrent.futures.Future[Any]
    encode: Callable[[Any], RestResponse]
    method: str
    path: str

    def finish(self) -> RestResponse:
        """The response of the completed future (call only once it is done)."""
        return _guarded(self.method, self.path, lambda: self.encode(self.future.result()))


#: Extra handlers on the REST port (metrics, health), by exact path, for GET.
ExtraRoute = Callable[[], RestResponse]
#: Extra handlers by path prefix, for GET (the dashboard): called with the rest of the path.
PrefixRoute = Callable[[str], RestResponse]


def _guarded(method: str, path: str, work: Callable[[], T]) -> T | RestResponse:
    """``work()``, with errors turned into error responses (a bug must not take the server
    down: anything but a ``ServingError`` is logged and answers as an internal error)."""
    try:
        return work()
    except ServingError as exc:
        return error_response(exc)
    except Exception as exc:
        log.exception("REST request %s %s failed", method, path)
        return error_response(ServingError(f"Internal error: {type(exc).__name__}: {exc}"))


class RestHandler:
    """Synchronous request handling: ``handle(method, path, headers, body)``. Thread-safe.

    ``max_body_bytes`` bounds the decompressed size of a gzip body (``None`` = no limit).
    """

    def __init__(self, serving: ModelServing, *, max_body_bytes: int | None = None) -> None:
        self.serving = serving
        self.max_body_bytes = max_body_bytes
        self.extra_routes: dict[str, ExtraRoute] = {}
        self.prefix_routes: dict[str, PrefixRoute] = {}
        from pyserving.server.v2.rest import V2Routes
        from pyserving.server.v2.service import V2Service

        #: The Open Inference Protocol's routes (paths under ``/v2``; see ``v2/rest.py``).
        self.v2 = V2Routes(V2Service(serving))

    def handle(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes
    ) -> RestResponse:
        """The response, once complete (waits for a batched request's batch)."""
        response = self.start(method, path, headers, body)
        if isinstance(response, PendingResponse):
            concurrent.futures.wait([response.future])
            return response.finish()
        return response

    def start(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes
    ) -> RestResponse | PendingResponse:
        """The response, or for a predict request waiting for its batch, a pending one."""
        return _guarded(method, path, lambda: self._dispatch(method, path, headers, body))

    def _dispatch(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes
    ) -> RestResponse | PendingResponse:
        # The server's own routes (metrics, health, the dashboard) are matched on the
        # decoded path; TF Serving's /v1 routes on the path as sent (see _POST).
        decoded = unescaped(path)
        extra = self.extra_routes.get(decoded)
        if extra is not None and method == "GET":
            return extra()
        if self.prefix_routes and method == "GET":
            for prefix, route in self.prefix_routes.items():
                if decoded.startswith(prefix):
                    return route(decoded[len(prefix) :])
        if path == "/v2" or path.startswith("/v2/"):
            if method == "POST":
                body = _decode_body(headers, body, self.max_body_bytes)
            # The V2 routes are matched on the decoded path (as ASGI servers route).
            return self.v2.handle(method, decoded, headers, body)
        if not path.lower().startswith("/v1/"):
            return RestResponse(404, orjson.dumps({"error": f"Not found: {method} {path}"}))
        if method == "POST":
            match = _POST.match(path)
            if match:
                name, version, label, verb = match.groups()
                spec = _spec(unescaped(name), version, label and unescaped(label))
                payload = _decode_body(headers, body, self.max_body_bytes)
                verb = verb.lower()
                if verb == "predict":
                    return self._predict(spec, payload, method, path)
                return self._examples(spec, payload, verb)
        elif method == "GET":
            if _LIST.match(path):
                return self._list_models()
            match = _GET.match(path)
            if match:
                name, version, label, metadata = match.groups()
                spec = _spec(unescaped(name), version, label and unescaped(label))
                if metadata:
                    return self._json_proto(self.serving.metadata(spec))
                return self._json_proto(self.serving.status(spec))
        raise InvalidArgument(f"Malformed request: {method} {path}")

    def _predict(
        self, spec: ModelSpec, payload: bytes, method: str, path: str
    ) -> RestResponse | PendingResponse:
        body = _parse_json_object(payload)
        spec = ModelSpec(spec.name, spec.version, spec.label, _signature_name(body))
        try:
            model = self.serving.bind(spec, entrypoint="REST")
        except SignatureNotFound as exc:
            raise InvalidArgument(
                f'Serving signature name: "{exc.signature_name}" not found in signature def'
            ) from None
        with model:
            signature_def = model.signature_def
            if is_open_signature(signature_def):
                # A model that declares no signature: its inputs are the request's.
                signature_def = request_signature(body)
            fmt, inputs = codec.parse_predict_request(body, signature_def)
            future = model.predict(inputs)
        if future.done():
            return predict_response(future.result(), fmt)
        return PendingResponse(future, lambda result: predict_response(result, fmt), method, path)

    def _examples(self, spec: ModelSpec, payload: bytes, verb: str) -> RestResponse:
        body = _parse_json_object(payload)
        signature_name, request_input = codec.parse_examples_request(body)
        spec = ModelSpec(spec.name, spec.version, spec.label, signature_name)
        assert isinstance(request_input, input_pb2.Input)
        if verb == "classify":
            _id, _sig, cresult = self.serving.classify(spec, request_input, entrypoint="REST")
            return RestResponse(200, codec.format_classify_response(cresult))
        _id, _sig, rresult = self.serving.regress(spec, request_input, entrypoint="REST")
        return RestResponse(200, codec.format_regress_response(rresult))

    def _list_models(self) -> RestResponse:
        models = [
            {"name": name, **_message_to_dict(status)}
            for name, status in self.serving.list_models()
        ]
        return RestResponse(200, orjson.dumps({"models": models}))

    @staticmethod
    def _json_proto(message: Any) -> RestResponse:
        return RestResponse(200, proto_to_json(message))


def proto_to_json(message: Any) -> bytes:
    """TF Serving's JSON for status and metadata: proto field names, defaults printed."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if isinstance(message, get_model_metadata_pb2.GetModelMetadataResponse):
        # The metadata map holds google.protobuf.Any; TF Serving prints the unpacked message.
        out: dict[str, Any] = {
            "model_spec": _message_to_dict(message.model_spec),
            "metadata": {},
        }
        for key, packed in message.metadata.items():
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            packed.Unpack(sig_map)
            out["metadata"][key] = _message_to_dict(sig_map)
        return orjson.dumps(out)
    return orjson.dumps(_message_to_dict(message))


def _message_to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return result


def unescaped(part: str) -> str:
    """``part`` of a request path with its percent-escapes decoded (as UTF-8)."""
    return unquote(part) if "%" in part else part


def _spec(name: str, version: str | None, label: str | None) -> ModelSpec:
    if version is not None:
        try:
            number = int(version)
        except ValueError:
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.") from None
        if number > 2**63 - 1:
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
        return ModelSpec(name, number)
    return ModelSpec(name, None, label)


#: Content codings of compressed bodies that are not decompressed here.
_UNSUPPORTED_CODINGS = frozenset({b"br", b"zstd", b"compress", b"x-compress"})


def _decode_body(headers: dict[bytes, bytes], body: bytes, limit: int | None = None) -> bytes:
    """The body as sent, or decompressed (``Content-Encoding: gzip`` or ``deflate``, the
    zlib format, or raw deflate as some clients send it), at most ``limit`` bytes of it. A
    compression this server cannot read (``br``, ``zstd``, ``compress``) is refused rather
    than read as JSON; any other value is ignored, as TF Serving ignores it."""
    encoding = headers.get(b"content-encoding", b"").strip().lower()
    if not encoding or encoding == b"identity":
        return body
    if encoding in (b"gzip", b"x-gzip"):
        try:
            return gunzip(body, limit)
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidArgument(f"Failed to decompress gzip request body: {exc}") from None
    if encoding == b"deflate":
        try:
            try:
                return inflate(body, ZLIB, limit)
            except zlib.error:  # no zlib header: raw deflate
                return inflate(body, -zlib.MAX_WBITS, limit)
        except InflatedTooLarge as exc:
            raise _too_large(exc.limit, "Decompressed request body") from None
        except (EOFError, zlib.error) as exc:
            raise InvalidArgument(f"Failed to decompress deflate request body: {exc}") from None
    if encoding in _UNSUPPORTED_CODINGS:  # compressed in a way this server cannot read
        raise InvalidArgument(
            f"Unsupported Content-Encoding: {encoding.decode('latin-1')} (gzip and deflate "
            "are supported)"
        )
    return body  # another value: the body as it is, as TF Serving reads it


def gunzip(data: bytes, limit: int | None = None) -> bytes:
    """Decompress gzip ``data`` (one or more members, as ``gzip.decompress``), producing at
    most ``limit`` bytes: ``RequestTooLarge`` as soon as the output would exceed it, before
    more is inflated. Raises ``zlib.error``/``EOFError`` for data that is not gzip or is cut
    short."""
    try:
        return inflate(data, GZIP, limit)
    except InflatedTooLarge as exc:
        raise _too_large(exc.limit, "Decompressed request body") from None


def _parse_json_object(payload: bytes) -> dict[str, Any]:
    return codec.parse_json_object(payload)


def _signature_name(body: dict[str, Any]) -> str:
    return codec.get_signature_name(body)


class RestApp:
    """ASGI application running :class:`RestHandler` on a bounded executor."""

    def __init__(
        self,
        handler: RestHandler,
        executor: concurrent.futures.Executor,
        *,
        timeout_ms: int = 30000,
        enable_cors: bool = False,
        max_body_bytes: int | None = None,
    ) -> None:
        self.handler = handler
        self.executor = executor
        self.timeout = timeout_ms / 1000.0 if timeout_ms > 0 else None
        self.enable_cors = enable_cors
        self.max_body_bytes = max_body_bytes

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        """The whole request body; ``RequestTooLarge`` as soon as it is over the limit."""
        limit = self.max_body_bytes
        if limit is not None:
            declared = headers.get(b"content-length", b"").strip()
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(limit)
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is not None and size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        # The path as sent (the handler decodes what it routes on); ASGI's "path" is
        # decoded already.
        raw = scope.get("raw_path")
        path: str = (
            raw.decode("latin-1").partition("?")[0] if raw else quote(scope["path"], safe="/:")
        )
        headers = dict(scope["headers"])
        try:
            body = await self._read_body(headers, receive)
        except RequestTooLarge as exc:
            response = error_response(exc)
        else:
            response = await self._respond(method, path, headers, body)
        out_headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode()),
        ]
        out_headers.extend(response.headers)
        if self.enable_cors:
            out_headers.extend(_CORS_HEADERS)
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes
    ) -> RestResponse:
        if method == "OPTIONS" and self.enable_cors:
            return RestResponse(200, b"")
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        future = loop.run_in_executor(
            self.executor, self.handler.start, method, path, headers, body
        )
        try:
            started = await asyncio.wait_for(future, self.timeout)
            if isinstance(started, PendingResponse):
                # Encoded here, on the loop: the answer is small next to a model run, and a
                # pool thread would cost two more thread hand-offs.
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                await asyncio.wait_for(asyncio.wrap_future(started.future), left)
                return started.finish()
            return started
        except TimeoutError:
            return error_response(
                DeadlineExceeded(f"Request timed out after {int((self.timeout or 0) * 1000)} ms")
            )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = [
    "NotFound",
    "PendingResponse",
    "RequestTooLarge",
    "RestApp",
    "RestHandler",
    "RestResponse",
    "error_response",
    "gunzip",
    "proto_to_json",
]
