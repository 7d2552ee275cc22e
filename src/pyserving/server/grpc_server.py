"""The TF-Serving-compatible gRPC front end.

Services, on one ``grpc.server`` listening on TCP (``0.0.0.0:port``) and optionally on a
UNIX socket (``unix:PATH``):

* ``tensorflow.serving.PredictionService``: Predict, Classify, Regress, MultiInference,
  GetModelMetadata.
* ``tensorflow.serving.ModelService``: GetModelStatus, HandleReloadConfigRequest.
* ``grpc.health.v1.Health`` when :attr:`GrpcServerOptions.enable_health`.
* ``inference.GRPCInferenceService``, the Open Inference Protocol (``v2/grpc.py``).

With :attr:`GrpcServerOptions.tls` (``--ssl_config_file``, TF Serving's ``SSLConfig``) both
addresses use TLS with that key and certificate; with ``client_verify`` a client must present
a certificate signed by ``custom_ca`` or its handshake is refused (TF Serving's
``REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY``).

This module only translates wire messages: every request becomes one call on
:class:`~pyserving.server.service.ModelServing` (or ``ServerCore.reload_config``) and its
answer becomes the response message. Errors map as TF Serving maps them:

* a :class:`~pyserving.errors.ServingError` aborts the RPC with its ``grpc_code`` and message
  (messages longer than 1024 characters are cut and end in ``...TRUNCATED``, as TF Serving's
  ``ToGRPCStatus``);
* any other exception is logged and aborts with ``INTERNAL``; the server keeps serving;
* a request whose deadline has passed before the model runs, or passes while it runs, ends
  with ``DEADLINE_EXCEEDED`` (the work is skipped, or its answer is not serialized);
* a request larger than the receive limit is refused by grpc itself (``RESOURCE_EXHAUSTED``,
  ``Received message larger than max (N vs. LIMIT)``); an input tensor that would decode to
  more than that limit (few typed values filling a huge shape) is ``INVALID_ARGUMENT``.

Threading: handlers run on a bounded ``ThreadPoolExecutor`` (``max_threads`` workers named
``pyserving-grpc``); each handler blocks while the model runs. :class:`GrpcServer` is
thread-safe; ``stop`` is idempotent.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pyserving import codec
from pyserving.errors import Code, InvalidArgument, ServingError
from pyserving.server.service import (
    ModelServing,
    ModelSpec,
    PredictResult,
    set_model_spec,
    spec_from_proto,
)

if TYPE_CHECKING:
    from pyserving.server.grpc_async import AsyncGrpcServer
    from pyserving.server.grpc_h2 import H2GrpcServer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: TF Serving cuts status messages after this many characters (``grpc_status_util.cc``).
ERROR_MESSAGE_LIMIT = 1024

#: Service names the health service reports on (besides the server-wide ``""``).
SERVICE_NAMES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
)

_INT32 = re.compile(r"^\s*[+-]?\d+\s*$")


@dataclass(frozen=True)
class GrpcTls:
    """TLS for the gRPC server: TF Serving's ``SSLConfig`` (PEM text, not file names).

    ``server_key`` / ``server_cert``: the server's private key and certificate (chain).
    ``custom_ca``: PEM certificates client certificates are verified against.
    ``client_verify``: require and verify a client certificate (needs ``custom_ca``).
    """

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False

    @classmethod
    def from_ssl_config(cls, config: Any) -> GrpcTls:
        """From a ``tensorflow.serving.SSLConfig``; ``InvalidArgument`` when incomplete."""
        if not config.server_key or not config.server_cert:
            raise InvalidArgument("SSLConfig needs both server_key and server_cert (PEM text)")
        if config.client_verify and not config.custom_ca:
            raise InvalidArgument(
                "SSLConfig: client_verify needs custom_ca, the PEM certificates client "
                "certificates are verified against"
            )
        return cls(config.server_key, config.server_cert, config.custom_ca, config.client_verify)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.server_key.encode(), self.server_cert.encode())],
            root_certificates=self.custom_ca.encode() if self.custom_ca else None,
            require_client_auth=self.client_verify,
        )


def read_ssl_config_file(path: str) -> GrpcTls:
    """Read ``--ssl_config_file`` (an ``SSLConfig`` text proto).

    Raises ``ConfigError`` (``Error parsing text-format tensorflow.serving.SSLConfig: ...``)
    or ``InvalidArgument`` for an incomplete config.
    """
    from pyserving.config import read_text_proto
    from pyserving.protos import SSLConfig

    config = read_text_proto(path, SSLConfig(), "tensorflow.serving.SSLConfig")
    return GrpcTls.from_ssl_config(config)


@dataclass(frozen=True)
class GrpcServerOptions:
    """Options of the gRPC front end (TF Serving's flags in brackets).

    ``port``: TCP port on ``0.0.0.0`` [``--port``]; 0 picks a free port (see
    :attr:`GrpcServer.port`).
    ``socket_path``: when non-empty, also listen on ``unix:<socket_path>``
    [``--grpc_socket_path``].
    ``channel_arguments``: ``"k=v,k2=v2"`` server channel arguments
    [``--grpc_channel_arguments``]; values that parse as a 32-bit integer are passed as
    ints, others as strings (see :func:`parse_channel_arguments`). They are applied after
    the message size limits, so they can override them.
    ``max_threads``: worker threads running requests [``--grpc_max_threads``].
    ``enable_health``: serve ``grpc.health.v1.Health`` [``--enable_grpc_healthcheck_service``].
    ``enable_profiler``: serve ``tensorflow.ProfilerService`` (``profiler_service.py``)
    [``--enable_profiler``].
    ``max_message_bytes``: limit on request and response size (TF Serving: ``INT32_MAX``).
    ``tls``: serve both addresses over TLS [``--ssl_config_file``]; ``None`` = plaintext.
    ``grpcio``: serve on grpcio instead of pyserving's own HTTP/2 server (``grpc_h2.py``,
    the default) [``--grpc_frontend=grpcio``]. Channel arguments the HTTP/2 server does not
    apply (anything but ``grpc_h2.SUPPORTED_CHANNEL_ARGUMENTS``) select grpcio too.
    ``asyncio``: on grpcio, serve on ``grpc.aio`` (see ``grpc_async.py``): a Predict waiting
    for its batch holds no thread. The server turns it on with batching; without batching
    the synchronous server answers sooner (one thread hand-off less per request).
    ``tensor_content``: Predict outputs carry their values as raw bytes in
    ``tensor_content`` instead of the typed ``*_val`` fields (strings stay in ``string_val``)
    [``--enable_serialization_as_tensor_content``].
    """

    port: int = 8500
    socket_path: str = ""
    channel_arguments: str = ""
    max_threads: int = 8
    enable_health: bool = False
    enable_profiler: bool = True
    max_message_bytes: int = 2**31 - 1
    tls: GrpcTls | None = None
    tensor_content: bool = False
    grpcio: bool = False
    asyncio: bool = False
    #: Bind the TCP port with ``SO_REUSEPORT`` (``--num_workers``: workers share the port;
    #: grpcio's servers always do).
    reuse_port: bool = False


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """Parse ``--grpc_channel_arguments``: a comma-separated list of ``key=value``.

    As TF Serving: a value that parses as a signed 32-bit integer (surrounding blanks
    allowed) is passed as ``int``, anything else as ``str``. The value is everything after
    the first ``=``. Empty items are skipped; an item without ``=`` or with an empty key
    raises :class:`~pyserving.errors.InvalidArgument`.
    """
    result: list[tuple[str, int | str]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument(
                f"Invalid --grpc_channel_arguments entry {item!r}: expected key=value"
            )
        if _INT32.match(value) and -(2**31) <= int(value) <= 2**31 - 1:
            result.append((key, int(value)))
        else:
            result.append((key, value))
    return result


def _truncate(message: str) -> str:
    if len(message) > ERROR_MESSAGE_LIMIT:
        return message[:ERROR_MESSAGE_LIMIT] + "...TRUNCATED"
    return message


def _spec(request: Any) -> ModelSpec:
    """The request's model spec; ``INVALID_ARGUMENT: Missing ModelSpec`` when absent."""
    if not request.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    return spec_from_proto(request.model_spec)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: ServicerContext.abort returned")  # pragma: no cover


def _check_deadline(context: grpc.ServicerContext) -> None:
    """Abort with DEADLINE_EXCEEDED (or CANCELLED) when the client no longer waits."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    if not context.is_active():
        _abort(context, grpc.StatusCode.CANCELLED, "Cancelled")


def _call(context: grpc.ServicerContext, method: str, work: Callable[[], T]) -> T:
    """Run ``work`` for RPC ``method`` with TF Serving's error mapping.

    The deadline is checked before and after ``work``. ``abort`` is called outside the
    ``try`` so its own exception is never mistaken for a failure of ``work``.
    """
    _check_deadline(context)
    try:
        result = work()
    except ServingError as exc:
        log.debug("%s failed: %s", method, exc.message)
        code, message = exc.grpc_code, exc.message
    except Exception as exc:
        log.exception("%s failed with an unexpected error", method)
        code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
    else:
        _check_deadline(context)
        return result
    _abort(context, code, _truncate(message))


#: Bytes per element assumed for string tensors when bounding their decoded size (an object
#: array's pointer plus the list it is filled from).
_STRING_ELEMENT_BYTES = 16


def decoded_size_bytes(proto: Any) -> int | None:
    """What a TensorProto takes once decoded (elements x item size), from its shape alone;
    ``None`` when the shape or dtype is malformed (decoding then reports the error)."""
    shape = proto.tensor_shape
    if shape.unknown_rank or any(d.size < 0 for d in shape.dim):
        return None
    try:
        dtype = codec.numpy_dtype(proto.dtype)
    except ServingError:
        return None
    itemsize = _STRING_ELEMENT_BYTES if dtype.kind == "O" else dtype.itemsize
    return math.prod(d.size for d in shape.dim) * itemsize


def _decode_inputs(
    inputs: Mapping[str, Any], max_tensor_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Request inputs as arrays; a malformed one is ``tensor parsing error: <alias>``.

    A TensorProto whose typed values are fewer than its shape holds is filled out (TF's
    ``Tensor::FromProto``), so a few bytes on the wire can describe a huge tensor. Inputs
    that together would decode to more than ``max_tensor_bytes`` (the largest request the
    server accepts) are refused the way TF Serving refuses a tensor it cannot allocate:
    ``tensor parsing error: <alias>``, naming the input that crosses the limit.
    """
    if max_tensor_bytes is not None:
        total = 0
        for name, proto in inputs.items():
            total += decoded_size_bytes(proto) or 0
            if total > max_tensor_bytes:
                log.debug("inputs would decode to over %d bytes at %s; refused", total, name)
                raise InvalidArgument(f"tensor parsing error: {name}")
    return {
        name: codec.tensor_proto_to_ndarray(proto, name=name) for name, proto in inputs.items()
    }


class CallAborted(Exception):
    """Ends a call with ``code`` and ``details``: raised by :meth:`CallContext.abort` on a
    worker thread and turned into the call's status by the event-loop front ends."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """What the synchronous servicers use of a ServicerContext, for a call an event-loop
    front end runs on a worker thread.

    Thread-safe. ``time_remaining`` counts down to ``deadline`` (``time.monotonic()``;
    None: no deadline); ``is_active`` turns false once :meth:`cancel` is called (the client
    reset the call or went away), which also cancels :attr:`future`, the call's queued
    request if any; ``abort`` raises :class:`CallAborted`.
    """

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self._cancelled = threading.Event()
        self.future: concurrent.futures.Future[Any] | None = None

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def is_active(self) -> bool:
        return not self._cancelled.is_set()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise CallAborted(code, details)

    def cancel(self) -> None:
        self._cancelled.set()
        future = self.future
        if future is not None:
            future.cancel()


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` over :class:`ModelServing`.

    ``max_tensor_bytes``: the largest decoded size of a request's inputs (``None``: no limit);
    :func:`start_grpc_server` sets it to the server's receive limit. ``tensor_content``: see
    :attr:`GrpcServerOptions.tensor_content`.
    """

    def __init__(
        self,
        serving: ModelServing,
        *,
        max_tensor_bytes: int | None = None,
        tensor_content: bool = False,
    ) -> None:
        self._serving = serving
        self._max_tensor_bytes = max_tensor_bytes
        self._tensor_content = tensor_content

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(
            context,
            "Predict",
            lambda: self.predict_response(self.start_predict(request).result()),
        )

    def start_predict(self, request: Any) -> concurrent.futures.Future[PredictResult]:
        """Decode ``request`` and run it, or for a batching model queue it for its batch
        (:meth:`ModelServing.predict_future`); errors are the future's."""
        try:
            spec = _spec(request)
        except ServingError as exc:
            failed: concurrent.futures.Future[PredictResult] = concurrent.futures.Future()
            failed.set_exception(exc)
            return failed
        return self._serving.predict_future(
            spec,
            lambda _signature_def: _decode_inputs(request.inputs, self._max_tensor_bytes),
            tuple(request.output_filter),
        )

    def predict_response(self, result: PredictResult) -> predict_pb2.PredictResponse:
        """The ``PredictResponse`` of a finished predict."""
        response = predict_pb2.PredictResponse()
        set_model_spec(response.model_spec, result.id, result.signature_name)
        for name, array in result.outputs.items():
            response.outputs[name].CopyFrom(
                codec.ndarray_to_tensor_proto(array, use_tensor_content=self._tensor_content)
            )
        return response

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> classification_pb2.ClassificationResponse:
            id, signature_name, result = self._serving.classify(_spec(request), request.input)
            response = classification_pb2.ClassificationResponse()
            set_model_spec(response.model_spec, id, signature_name)
            response.result.CopyFrom(result)
            return response

        return _call(context, "Classify", work)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> regression_pb2.RegressionResponse:
            id, signature_name, result = self._serving.regress(_spec(request), request.input)
            response = regression_pb2.RegressionResponse()
            set_model_spec(response.model_spec, id, signature_name)
            response.result.CopyFrom(result)
            return response

        return _call(context, "Regress", work)

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(context, "MultiInference", lambda: self._serving.multi_inference(request))

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(
            context,
            "GetModelMetadata",
            lambda: self._serving.metadata(_spec(request), tuple(request.metadata_field)),
        )


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: model status and config reload."""

    def __init__(self, serving: ModelServing) -> None:
        self._serving = serving

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _call(context, "GetModelStatus", lambda: self._serving.status(_spec(request)))

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Replace the model set; answers once it has settled.

        As TF Serving: success answers a response whose ``status.error_code`` is OK; a
        failure is the RPC's status (code and message), so no response body arrives.
        """

        def work() -> model_management_pb2.ReloadConfigResponse:
            config = request.config
            if config.WhichOneof("config") != "model_config_list":
                raise InvalidArgument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported"
                )
            for index, model in enumerate(config.model_config_list.config):
                log.info(
                    "Config entry index: %d path: %s name: %s platform: %s",
                    index,
                    model.base_path,
                    model.name,
                    model.model_platform,
                )
            try:
                self._serving.core.reload_config(config)
            except ServingError as exc:
                log.error("ReloadConfig failed: %s", exc.message)
                raise
            response = model_management_pb2.ReloadConfigResponse()
            response.status.error_code = int(Code.OK)
            response.status.error_message = ""
            return response

        return _call(context, "HandleReloadConfigRequest", work)


def health_status(ready: bool) -> int:
    """The health service's SERVING (``ready``) or NOT_SERVING."""
    if ready:
        return int(health_pb2.HealthCheckResponse.SERVING)
    return int(health_pb2.HealthCheckResponse.NOT_SERVING)


def remove_socket(path: str) -> None:
    """Remove the UNIX socket file at ``path`` ("" = none); anything else there is kept."""
    if path:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)


class GrpcServer:
    """A running gRPC front end (see :func:`start_grpc_server`).

    ``port`` is the bound TCP port; ``socket_path`` the UNIX socket ("" when none).
    ``stop`` is idempotent; the server is a context manager that stops without grace.
    """

    def __init__(
        self,
        server: grpc.Server,
        executor: concurrent.futures.ThreadPoolExecutor,
        port: int,
        socket_path: str,
        health_servicer: health.HealthServicer | None,
    ) -> None:
        self._server = server
        self._executor = executor
        self.port = port
        self.socket_path = socket_path
        self._health = health_servicer
        self._lock = threading.Lock()
        self._stopped = False

    def set_serving_status(self, ready: bool) -> None:
        """Report SERVING (``ready``) or NOT_SERVING on the health service (no-op without it).

        Applies to the server-wide service name ``""`` and to each TF Serving service.
        """
        if self._health is None:
            return
        status = health_status(ready)
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let RPCs in flight finish for ``grace`` seconds, then cancel.

        ``None`` cancels RPCs in flight at once. Blocks until the server has stopped;
        idempotent. The health service reports NOT_SERVING from the start of the stop.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self._executor.shutdown(wait=False, cancel_futures=True)
        remove_socket(self.socket_path)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` passes; True when it stopped."""
        # grpc's own wait_for_termination returns True when the timeout was reached.
        return not self._server.wait_for_termination(timeout)

    def __enter__(self) -> GrpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(None)


def server_channel_args(options: GrpcServerOptions) -> tuple[dict[str, int | str], int]:
    """The server's channel arguments (message size limits, then the user's), and the
    largest decoded size of a request's inputs (the receive limit)."""
    channel_args: dict[str, int | str] = {
        "grpc.max_receive_message_length": options.max_message_bytes,
        "grpc.max_send_message_length": options.max_message_bytes,
    }
    channel_args.update(parse_channel_arguments(options.channel_arguments))
    receive_limit = channel_args["grpc.max_receive_message_length"]
    max_tensor_bytes = (
        receive_limit if isinstance(receive_limit, int) and receive_limit > 0 else 2**31 - 1
    )
    return channel_args, max_tensor_bytes


def uses_grpcio(options: GrpcServerOptions) -> bool:
    """Whether ``options`` are served by grpcio: asked for, or needed by a channel argument
    only grpcio applies. ``InvalidArgument`` for malformed channel arguments."""
    from pyserving.server.grpc_h2 import SUPPORTED_CHANNEL_ARGUMENTS

    arguments = {key for key, _ in parse_channel_arguments(options.channel_arguments)}
    return options.grpcio or not arguments <= SUPPORTED_CHANNEL_ARGUMENTS


def start_grpc_server(
    serving: ModelServing, options: GrpcServerOptions
) -> GrpcServer | AsyncGrpcServer | H2GrpcServer:
    """Build, bind and start the gRPC server over ``serving``: pyserving's HTTP/2 server
    (``grpc_h2.py``) unless :func:`uses_grpcio`.

    Raises :class:`~pyserving.errors.InvalidArgument` for malformed channel arguments and
    ``RuntimeError`` when a listening address cannot be bound. The health service (when
    enabled) starts as SERVING, as TF Serving's default health service: the server is
    started once the models are loaded.
    """
    if not uses_grpcio(options):
        from pyserving.server.grpc_h2 import start_h2_grpc_server

        return start_h2_grpc_server(serving, options)
    if not options.grpcio:
        log.info(
            "gRPC served by grpcio: --grpc_channel_arguments names arguments only grpcio "
            "applies (%s)",
            options.channel_arguments,
        )
    if options.asyncio:
        from pyserving.server.grpc_async import start_async_grpc_server

        return start_async_grpc_server(serving, options)
    channel_args, max_tensor_bytes = server_channel_args(options)
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, options.max_threads), thread_name_prefix="pyserving-grpc"
    )
    server = grpc.server(executor, options=list(channel_args.items()))
    try:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(
                serving, max_tensor_bytes=max_tensor_bytes, tensor_content=options.tensor_content
            ),
            server,
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(serving), server)
        health_servicer: health.HealthServicer | None = None
        if options.enable_health:
            health_servicer = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if options.enable_profiler:
            from pyserving.server.profiler_service import ProfilerServicer

            server.add_generic_rpc_handlers((ProfilerServicer().grpc_handler(),))
        from pyserving.server.v2.grpc import V2Servicer

        server.add_generic_rpc_handlers((V2Servicer(serving).grpc_handler(),))
        credentials = options.tls.credentials() if options.tls is not None else None
        address = f"0.0.0.0:{options.port}"
        port = _bind(server, address, credentials)
        if options.socket_path:
            _bind(server, f"unix:{options.socket_path}", credentials)
        server.start()
    except BaseException:
        server.stop(None)
        executor.shutdown(wait=False)
        raise
    grpc_server = GrpcServer(server, executor, port, options.socket_path, health_servicer)
    grpc_server.set_serving_status(True)
    log.debug("gRPC server bound to 0.0.0.0:%d", port)
    if options.socket_path:
        log.info("Running gRPC ModelServer at UNIX socket %s ...", options.socket_path)
    return grpc_server


def _bind(
    server: grpc.Server | grpc.aio.Server,
    address: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    try:
        if credentials is None:
            port = int(server.add_insecure_port(address))
        else:
            port = int(server.add_secure_port(address, credentials))
    except RuntimeError as exc:
        raise RuntimeError(f"Failed to bind gRPC server to {address}: {exc}") from None
    if port == 0 and not address.startswith("unix:"):
        raise RuntimeError(f"Failed to bind gRPC server to {address}")
    return port


__all__ = [
    "CallAborted",
    "CallContext",
    "GrpcServer",
    "GrpcServerOptions",
    "GrpcTls",
    "ModelServicer",
    "PredictionServicer",
    "parse_channel_arguments",
    "read_ssl_config_file",
    "start_grpc_server",
    "uses_grpcio",
]
