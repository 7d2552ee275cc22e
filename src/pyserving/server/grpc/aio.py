"""The gRPC transport on grpcio's ``grpc.aio`` (``--grpc_frontend=grpcio``, or channel
arguments only grpcio applies).

It serves :class:`~pyserving.server.grpc.service.GrpcService`'s method table as grpcio
generic handlers on an event loop of its own thread:

* An :class:`~pyserving.server.grpc.calls.Inference` method (Predict, V2's ModelInfer): the
  request is started (decoded, run or queued for its batch) on the event loop when it is
  small (:data:`~pyserving.server.grpc.calls.INLINE_REQUEST_BYTES`) and its model's recent
  calls were fast or only queued for a batch (the transports' shared
  :class:`~pyserving.server.call_costs.CallCosts`), else on a worker thread; the loop
  awaits the answer, so a request waiting for its batch holds no thread, and builds the
  response. The deadline is checked before and after; a client that goes away cancels its
  queued request.
* A :class:`~pyserving.server.grpc.calls.Unary` method runs on a worker thread (the
  ``pyserving-grpc`` pool, ``max_threads``).
* Health: ``Check`` on the loop and the streaming ``Watch``, from the one
  :class:`~pyserving.server.grpc.health.HealthService`.

Errors become the call's status through :func:`~pyserving.server.grpc.calls.status_of`;
grpc itself refuses a request over the receive limit (``RESOURCE_EXHAUSTED``). TLS, the UNIX
socket and every channel argument are grpcio's. :class:`AsyncGrpcServer` is thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from pyserving.server.call_costs import CallCosts
from pyserving.server.grpc.calls import (
    INLINE_REQUEST_BYTES,
    Call,
    Inference,
    Method,
    Unary,
    run_unary,
    start_inference,
    status_of,
)
from pyserving.server.grpc.health import CHECK_PATH, WATCH_PATH, HealthService
from pyserving.server.grpc.options import GrpcServerOptions, server_channel_args
from pyserving.server.grpc.service import GrpcService
from pyserving.server.loop_server import LoopServer
from pyserving.server.service import ModelServing

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _call_of(context: grpc.aio.ServicerContext) -> Call:
    """The :class:`Call` of a grpc.aio call: its deadline, cancelled when it ends early."""
    call = Call.with_timeout(context.time_remaining())
    context.add_done_callback(lambda _context: call.cancel())
    return call


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, path: str) -> Any:
    code, message = status_of(error, path)
    await context.abort(code, message)


def _unary_handler(path: str, method: Unary, executor: concurrent.futures.Executor) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _call_of(context)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, run_unary, method, request, call)
        except Exception as exc:
            error = exc
        await _abort(context, error, path)

    return handle


def _inference_handler(
    path: str, method: Inference, executor: concurrent.futures.Executor, costs: CallCosts
) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _call_of(context)
        try:
            if request.ByteSize() <= INLINE_REQUEST_BYTES and costs.runs_inline(
                method.model(request)
            ):
                future = start_inference(method, request, call, costs, on_loop=True)
            else:
                loop = asyncio.get_running_loop()
                future = await loop.run_in_executor(
                    executor, start_inference, method, request, call, costs
                )
            result = await asyncio.wrap_future(future)
            call.check()
            return method.answer(result)
        except Exception as exc:
            error = exc
        await _abort(context, error, path)

    return handle


def _health_handlers(health: HealthService) -> grpc.GenericRpcHandler:
    async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return health.check(request)
        except Exception as exc:
            error = exc
        await _abort(context, error, CHECK_PATH)

    async def watch(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def watcher(response: Any) -> None:  # any thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(queue.put_nowait, response)

        forget = health.watch(request, watcher)
        try:
            while (response := await queue.get()) is not None:
                yield response
        finally:
            forget()

    request_type = health.request_type
    handlers = {
        CHECK_PATH.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=request_type.FromString,
            response_serializer=_serialize,
        ),
        WATCH_PATH.rsplit("/", 1)[1]: grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=request_type.FromString,
            response_serializer=_serialize,
        ),
    }
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", handlers)


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def generic_handlers(
    service: GrpcService, executor: concurrent.futures.Executor, costs: CallCosts
) -> list[grpc.GenericRpcHandler]:
    """``service``'s method table (and health service) as grpcio generic handlers; ``costs``
    decides which Inference calls start on the event loop."""
    result = []
    for name, methods in service.services().items():
        handlers = {}
        for method_name, method in methods.items():
            path = f"/{name}/{method_name}"
            behaviour = _behaviour(path, method, executor, costs)
            handlers[method_name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=method.request_type.FromString,
                response_serializer=_serialize,
            )
        result.append(grpc.method_handlers_generic_handler(name, handlers))
    if service.health is not None:
        result.append(_health_handlers(service.health))
    return result


def _behaviour(
    path: str, method: Method, executor: concurrent.futures.Executor, costs: CallCosts
) -> Handler:
    if isinstance(method, Inference):
        return _inference_handler(path, method, executor, costs)
    return _unary_handler(path, method, executor)


class AsyncGrpcServer(LoopServer):
    """A running ``grpc.aio`` front end (see :func:`start_aio_grpc_server`): ``port``,
    ``socket_path``, ``set_serving_status``, ``stop`` (idempotent, blocking),
    ``wait_for_termination``, and a context manager that stops without grace."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.ThreadPoolExecutor,
        health: HealthService | None,
    ) -> None:
        super().__init__(loop, executor, health)
        self.server: grpc.aio.Server | None = None

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let calls in flight finish for ``grace`` seconds (None:
        cancel them at once). The health service reports NOT_SERVING from the start."""

        async def shutdown() -> None:
            if self.server is not None:
                await self.server.stop(grace)

        self._stop(shutdown(), None)


def _bind(server: grpc.aio.Server, address: str, credentials: Any) -> int:
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


def start_aio_grpc_server(
    serving: ModelServing, options: GrpcServerOptions, *, costs: CallCosts | None = None
) -> AsyncGrpcServer:
    """Build, bind and start the ``grpc.aio`` front end over ``serving``; ``costs`` decides
    which Predicts start on the event loop (default: a real-time :class:`CallCosts`).

    Raises ``InvalidArgument`` for malformed channel arguments, ``RuntimeError`` when an
    address cannot be bound.
    """
    channel_args, max_tensor_bytes = server_channel_args(options)
    service = GrpcService(
        serving,
        max_tensor_bytes=max_tensor_bytes,
        tensor_content=options.tensor_content,
        enable_health=options.enable_health,
        enable_profiler=options.enable_profiler,
    )
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, options.max_threads), thread_name_prefix="pyserving-grpc"
    )
    server = AsyncGrpcServer(asyncio.new_event_loop(), executor, service.health)

    async def start() -> None:
        aio_server = grpc.aio.server(
            options=list(channel_args.items()), migration_thread_pool=executor
        )
        server.server = aio_server
        handlers = generic_handlers(service, executor, costs or CallCosts())
        aio_server.add_generic_rpc_handlers(handlers)
        credentials = options.tls.credentials() if options.tls is not None else None
        server.port = _bind(aio_server, f"0.0.0.0:{options.port}", credentials)
        if options.socket_path:
            _bind(aio_server, f"unix:{options.socket_path}", credentials)
            server.socket_path = options.socket_path
        await aio_server.start()

    server.start(start(), "grpc.aio")
    return server


__all__ = ["AsyncGrpcServer", "generic_handlers", "start_aio_grpc_server"]
