"""The gRPC front end on ``grpc.aio``: the same services, with batched requests held by no thread.

With batching on, a Predict waiting for its batch would hold one of the synchronous server's
threads; here it is an awaited future on the server's event loop, so a batch fills from as
many concurrent calls as clients send, whatever ``--grpc_max_threads`` is. The services,
error mapping, limits, TLS, UNIX socket and health service are those of ``grpc_server.py``:

* Predict: the request is decoded and queued for its batch
  (:meth:`PredictionServicer.start_predict`) on the event loop when it is small
  (:data:`INLINE_REQUEST_BYTES`), else on a worker thread; the event loop awaits the answer
  and builds the response. (A request the batcher cannot take, with more rows than
  ``max_batch_size``, runs where it was decoded; so does a model without batching.) The
  deadline is checked before and after, as in the synchronous server; a client that goes
  away cancels its queued request.
* Every other method runs the synchronous servicer's method on a worker thread, with a
  context that forwards ``abort`` to the call's.

The event loop runs on its own thread (``pyserving-grpc-loop``); worker threads are the
bounded ``pyserving-grpc`` pool (``max_threads``). :class:`AsyncGrpcServer` has the
interface of :class:`~pyserving.server.grpc_server.GrpcServer` and is thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from pyserving.errors import ServingError
from pyserving.server.grpc_server import (
    SERVICE_NAMES,
    CallAborted,
    CallContext,
    GrpcServerOptions,
    ModelServicer,
    PredictionServicer,
    _bind,
    _truncate,
    health_status,
    server_channel_args,
)
from pyserving.server.loop_server import LoopServer
from pyserving.server.service import ModelServing

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Predict requests up to this size are decoded and queued on the event loop (tens of
#: microseconds); larger ones on a worker thread, so a big request never stalls the loop.
INLINE_REQUEST_BYTES = 64 * 1024


class _Bridge:
    """Runs synchronous servicer methods on the worker pool for an async servicer."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self.executor = executor

    async def run(
        self,
        method: Callable[[Any, Any], T],
        request: Any,
        context: grpc.aio.ServicerContext,
    ) -> T:
        remaining = context.time_remaining()
        thread_context = CallContext(None if remaining is None else time.monotonic() + remaining)
        context.add_done_callback(lambda _context: thread_context.cancel())
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, method, request, thread_context)
        except CallAborted as exc:
            await context.abort(exc.code, exc.details)
            raise AssertionError("unreachable: abort returned") from None  # pragma: no cover


async def _check_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class AsyncPredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` on ``grpc.aio`` over a
    :class:`PredictionServicer` (see the module docstring)."""

    def __init__(self, servicer: PredictionServicer, bridge: _Bridge) -> None:
        self._servicer = servicer
        self._bridge = bridge

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _check_deadline(context)
        loop = asyncio.get_running_loop()
        try:
            if request.ByteSize() <= INLINE_REQUEST_BYTES:
                future = self._servicer.start_predict(request)
            else:
                future = await loop.run_in_executor(
                    self._bridge.executor, self._servicer.start_predict, request
                )
            result = await asyncio.wrap_future(future)
        except ServingError as exc:
            log.debug("Predict failed: %s", exc.message)
            code, message = exc.grpc_code, exc.message
        except Exception as exc:
            log.exception("Predict failed with an unexpected error")
            code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
        else:
            await _check_deadline(context)
            return self._servicer.predict_response(result)
        await context.abort(code, _truncate(message))

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._bridge.run(self._servicer.Classify, request, context)

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._bridge.run(self._servicer.Regress, request, context)

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._bridge.run(self._servicer.MultiInference, request, context)

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._bridge.run(self._servicer.GetModelMetadata, request, context)


class AsyncModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService`` on ``grpc.aio`` over a :class:`ModelServicer`."""

    def __init__(self, servicer: ModelServicer, bridge: _Bridge) -> None:
        self._servicer = servicer
        self._bridge = bridge

    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._bridge.run(self._servicer.GetModelStatus, request, context)

    async def HandleReloadConfigRequest(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._bridge.run(self._servicer.HandleReloadConfigRequest, request, context)


def _v2_handler(serving: ModelServing, bridge: _Bridge) -> grpc.GenericRpcHandler:
    """``inference.GRPCInferenceService`` on ``grpc.aio``: ModelInfer served as Predict (it
    has Predict's ``start_predict`` / ``predict_response``), the other methods on workers."""
    from pyserving.server.v2.grpc import V2Servicer

    v2 = V2Servicer(serving)

    def on_worker(method: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await bridge.run(method, request, context)

        return run

    replacements = {p.rsplit("/", 1)[1]: on_worker(m) for p, (_t, m) in v2.methods().items()}
    replacements["ModelInfer"] = AsyncPredictionServicer(v2, bridge).Predict  # type: ignore[arg-type]
    return v2.grpc_handler(replacements)


class AsyncGrpcServer(LoopServer):
    """A running ``grpc.aio`` front end (see :func:`start_async_grpc_server`).

    Same interface as :class:`~pyserving.server.grpc_server.GrpcServer`: ``port``,
    ``socket_path``, ``set_serving_status``, ``stop`` (idempotent),
    ``wait_for_termination``, and a context manager that stops without grace.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, executor: concurrent.futures.ThreadPoolExecutor
    ) -> None:
        super().__init__(loop, executor)
        self._server: grpc.aio.Server | None = None
        self._health: Any = None

    def set_serving_status(self, ready: bool) -> None:
        """As :meth:`GrpcServer.set_serving_status`."""
        if self._health is None:
            return
        status = health_status(ready)

        async def update() -> None:
            for name in ("", *SERVICE_NAMES):
                await self._health.set(name, status)

        self._run(update())

    def stop(self, grace: float | None = None) -> None:
        """As :meth:`GrpcServer.stop`: blocks until stopped; idempotent."""

        async def shutdown() -> None:
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            if self._server is not None:
                await self._server.stop(grace)

        self._stop(shutdown(), None)


def start_async_grpc_server(serving: ModelServing, options: GrpcServerOptions) -> AsyncGrpcServer:
    """Build, bind and start the ``grpc.aio`` front end over ``serving``.

    Raises as :func:`~pyserving.server.grpc_server.start_grpc_server`: ``InvalidArgument``
    for malformed channel arguments, ``RuntimeError`` when an address cannot be bound.
    """
    channel_args, max_tensor_bytes = server_channel_args(options)
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, options.max_threads), thread_name_prefix="pyserving-grpc"
    )
    server = AsyncGrpcServer(asyncio.new_event_loop(), executor)
    bridge = _Bridge(executor)
    servicer = PredictionServicer(
        serving, max_tensor_bytes=max_tensor_bytes, tensor_content=options.tensor_content
    )

    async def start() -> None:
        aio_server = grpc.aio.server(
            options=list(channel_args.items()), migration_thread_pool=executor
        )
        server._server = aio_server
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            AsyncPredictionServicer(servicer, bridge), aio_server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            AsyncModelServicer(ModelServicer(serving), bridge), aio_server
        )
        if options.enable_health:
            server._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(server._health, aio_server)
        if options.enable_profiler:
            from pyserving.server.profiler_service import ProfilerServicer

            # Synchronous handlers: grpc.aio runs them on the migration thread pool.
            aio_server.add_generic_rpc_handlers((ProfilerServicer().grpc_handler(),))
        aio_server.add_generic_rpc_handlers((_v2_handler(serving, bridge),))
        credentials = options.tls.credentials() if options.tls is not None else None
        server.port = _bind(aio_server, f"0.0.0.0:{options.port}", credentials)
        if options.socket_path:
            _bind(aio_server, f"unix:{options.socket_path}", credentials)
            server.socket_path = options.socket_path
        await aio_server.start()

    server._start(start(), "asyncio")
    return server


__all__ = [
    "AsyncGrpcServer",
    "AsyncModelServicer",
    "AsyncPredictionServicer",
    "start_async_grpc_server",
]
