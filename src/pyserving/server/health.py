"""Liveness and readiness, shared by the REST endpoints and the gRPC health service.

* live: the process answers (always true while it serves).
* ready: every configured model has at least one AVAILABLE version.

REST (on the REST port): ``GET /v2/health/live`` and ``GET /v2/health/ready`` (the paths
KServe and Kubernetes probes commonly use), also as ``/healthz`` and ``/readyz``: 200 when
true, 503 when not, with a JSON body naming the models that are not ready.
"""

from __future__ import annotations

import orjson

from pyserving.server.core import ServerCore
from pyserving.server.rest import RestHandler, RestResponse

LIVE_PATHS = ("/v2/health/live", "/healthz")
READY_PATHS = ("/v2/health/ready", "/readyz")


def unready_models(core: ServerCore) -> list[str]:
    """Configured models with no AVAILABLE version."""
    return [name for name in core.model_names() if not core.manager.available_versions(name)]


def is_ready(core: ServerCore) -> bool:
    return not unready_models(core)


def install_health_routes(handler: RestHandler, core: ServerCore) -> None:
    """Add the liveness and readiness endpoints to a REST handler."""

    def live() -> RestResponse:
        return RestResponse(200, orjson.dumps({"live": True}))

    def ready() -> RestResponse:
        missing = unready_models(core)
        if missing:
            return RestResponse(503, orjson.dumps({"ready": False, "unavailable_models": missing}))
        return RestResponse(200, orjson.dumps({"ready": True}))

    for path in LIVE_PATHS:
        handler.extra_routes[path] = live
    for path in READY_PATHS:
        handler.extra_routes[path] = ready
