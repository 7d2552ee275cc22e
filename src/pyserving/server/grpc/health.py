"""``grpc.health.v1.Health``: one status per service name, for every transport.

The server reports ``SERVING`` while every configured model has an AVAILABLE version and
``NOT_SERVING`` otherwise (``app.py`` calls :meth:`HealthService.set_ready` on every model
state change), under the server-wide name ``""`` and each TF Serving service name
(:data:`SERVICE_NAMES`). ``Check`` of another name is ``NOT_FOUND``; ``Watch`` of another
name reports ``SERVICE_UNKNOWN``. From :meth:`HealthService.shut_down` on (the server is
stopping) every name is ``NOT_SERVING`` for good and open watches end.

Thread-safe: a status set is in force for every ``Check`` once :meth:`set_ready` returns;
watchers are told under the lock, so they see changes in order (their callbacks must not
block: the transports hand the message to their event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health_pb2

from pyserving.errors import NotFound

#: Service names the health service reports on (besides the server-wide ``""``).
SERVICE_NAMES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
)
CHECK_PATH = "/grpc.health.v1.Health/Check"
WATCH_PATH = "/grpc.health.v1.Health/Watch"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

#: Told each status a watched name takes (a ``HealthCheckResponse``), then None when the
#: watch ends.
Watcher = Callable[[Any], None]


class HealthService:
    """The health statuses and their watchers (see the module docstring)."""

    request_type = health_pb2.HealthCheckRequest

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._statuses: dict[str, int] = {}
        self._watchers: dict[str, list[Watcher]] = {}
        self._closed = False

    def set_ready(self, ready: bool) -> None:
        """Report ``SERVING`` (``ready``) or ``NOT_SERVING``; ignored once shut down."""
        status = SERVING if ready else NOT_SERVING
        with self._lock:
            if self._closed:
                return
            for name in ("", *SERVICE_NAMES):
                self._set(name, status)

    def _set(self, name: str, status: int) -> None:
        if self._statuses.get(name) == status:
            return
        self._statuses[name] = status
        response = health_pb2.HealthCheckResponse(status=status)
        for watcher in list(self._watchers.get(name, ())):
            watcher(response)

    def check(self, request: Any) -> Any:
        """``Check``: the name's status; ``NotFound`` (no message) for an unknown name."""
        status = self._statuses.get(request.service)
        if status is None:
            raise NotFound("")
        return health_pb2.HealthCheckResponse(status=status)

    def watch(self, request: Any, watcher: Watcher) -> Callable[[], None]:
        """``Watch``: ``watcher`` is told the name's status now and each change after,
        until the returned function is called (the client left) or the service shuts down
        (``watcher(None)``)."""
        name = request.service
        with self._lock:
            status = self._statuses.get(name, SERVICE_UNKNOWN)
            watcher(health_pb2.HealthCheckResponse(status=status))
            if self._closed:
                watcher(None)
                return lambda: None
            watchers = self._watchers.setdefault(name, [])
            watchers.append(watcher)

        def forget() -> None:
            with self._lock:
                if watcher in watchers:
                    watchers.remove(watcher)

        return forget

    def shut_down(self) -> None:
        """Report ``NOT_SERVING`` for every name from now on and end every watch."""
        with self._lock:
            for name in list(self._statuses):
                self._set(name, NOT_SERVING)
            self._closed = True
            watchers = [w for ws in self._watchers.values() for w in ws]
            self._watchers.clear()
            for watcher in watchers:
                watcher(None)


__all__ = [
    "CHECK_PATH",
    "SERVICE_NAMES",
    "WATCH_PATH",
    "HealthService",
]
