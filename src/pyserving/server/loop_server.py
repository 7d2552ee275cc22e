"""The lifecycle of a gRPC front end that runs on an event loop of its own thread.

Both gRPC transports (pyserving's HTTP/2 server, ``grpc/h2.py``, and grpcio's ``grpc.aio``,
``grpc/aio.py``) run their loop on a daemon thread named ``pyserving-grpc-loop`` beside a
bounded worker pool named ``pyserving-grpc``, report health the same way and stop the same
way: the health service turns NOT_SERVING, a shutdown coroutine runs on the loop, then the
loop stops, the thread is joined, the pool is shut down and the UNIX socket file removed.
:class:`LoopServer` holds that part.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from pyserving.server.grpc.health import HealthService
from pyserving.server.grpc.options import remove_socket

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Name of the thread running a front end's event loop.
LOOP_THREAD_NAME = "pyserving-grpc-loop"


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: run until stopped, then close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class LoopServer:
    """A front end on ``loop``, run by a new ``pyserving-grpc-loop`` thread, with its
    ``executor`` for blocking work and its ``health`` service (None: not served).

    Subclasses implement ``stop(grace)`` as :meth:`_stop` with their shutdown coroutine.
    ``port`` and ``socket_path`` are set by the subclass's start-up. Thread-safe; stopping
    is idempotent; the server is a context manager that stops without grace.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.ThreadPoolExecutor,
        health: HealthService | None = None,
    ) -> None:
        self.health = health
        self._loop = loop
        self._executor = executor
        self._thread = threading.Thread(
            target=_run_loop, args=(loop,), name=LOOP_THREAD_NAME, daemon=True
        )
        self._thread.start()
        self.port = 0
        self.socket_path = ""
        self._lock = threading.Lock()
        self._stopped = False
        self._terminated = threading.Event()

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self, grace: float | None = None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_serving_status(self, ready: bool) -> None:
        """Report SERVING (``ready``) or NOT_SERVING on the health service (no-op without
        it), for the server-wide name ``""`` and each TF Serving service; in force when this
        returns. Ignored once the server is stopping."""
        if self.health is not None:
            self.health.set_ready(ready)

    def start(self, start: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``start`` (binding the addresses) on the loop; stop and re-raise if it
        fails; else report SERVING on the health service and log the addresses."""
        try:
            self._run(start)
        except BaseException:
            self.stop(None)
            raise
        self.set_serving_status(True)
        log.debug("gRPC server (%s) bound to 0.0.0.0:%d", what, self.port)
        if self.socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", self.socket_path)

    def _stop(self, shutdown: Coroutine[Any, Any, None], timeout: float | None) -> None:
        """Turn the health service NOT_SERVING (ending its watches), run ``shutdown`` on
        the loop (at most ``timeout`` seconds), then stop the loop, join its thread, shut
        the pool down and remove the socket file. Only the first call does anything; every
        call returns when all of that is done."""
        with self._lock:
            if self._stopped:
                shutdown.close()
                self._terminated.wait()  # another caller is stopping the server
                return
            self._stopped = True
        if self.health is not None:
            self.health.shut_down()
        try:
            if self._thread.is_alive():
                self._run(shutdown, timeout)
            else:
                shutdown.close()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._executor.shutdown(wait=False, cancel_futures=True)
            remove_socket(self.socket_path)
            self._terminated.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` passes; True when it stopped."""
        return self._terminated.wait(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(None)


__all__ = ["LOOP_THREAD_NAME", "LoopServer"]
