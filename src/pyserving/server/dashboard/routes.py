"""The dashboard's routes on the REST port (registered on :class:`RestHandler`, so they run
on whatever transport serves REST, like the health endpoints).

::

    GET /dashboard                        302 to dashboard/ (relative: works under a proxy prefix)
    GET /dashboard/                       the page (static/index.html)
    GET /dashboard/static/dashboard.js    its script
    GET /dashboard/static/dashboard.css   its style sheet
    GET /dashboard/api/state[/SINCE[/TAG]]  the state document (chart points after SINCE;
                                          models and transitions null when still TAG)
    GET /dashboard/api/example/NAME       a "try it" predict body for model NAME

Every answer carries a Content-Security-Policy allowing only the server's own script, style
sheet and API (no inline script or style, no other origin, no framing), ``nosniff`` and
``no-referrer``. The page and its assets are read once, at installation, from the package
(shipped as package data); they use no external asset.
"""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

from pyserving.errors import NotFound, ServingError
from pyserving.server.dashboard.snapshot import Dashboard, to_json
from pyserving.server.rest import RestHandler, RestResponse, error_response

log = logging.getLogger(__name__)

PREFIX = "/dashboard"

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)

_NO_STORE = ((b"cache-control", b"no-store"),)
_NO_CACHE = ((b"cache-control", b"no-cache"),)

#: The page's files: name in ``static/`` -> content type.
STATIC_FILES = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}


def read_static(name: str) -> bytes:
    """A file of the page, from the installed package."""
    return (
        importlib.resources.files("pyserving.server.dashboard")
        .joinpath("static")
        .joinpath(name)
        .read_bytes()
    )


def _json(status: int, value: Any) -> RestResponse:
    return RestResponse(status, to_json(value), b"application/json", SECURITY_HEADERS + _NO_STORE)


def install_dashboard_routes(handler: RestHandler, dashboard: Dashboard) -> None:
    """Serve ``dashboard`` under ``/dashboard`` on ``handler``."""
    files = {name: read_static(name) for name in STATIC_FILES}

    def redirect() -> RestResponse:
        return RestResponse(
            302, b"", b"text/plain", (*SECURITY_HEADERS, (b"location", b"dashboard/"))
        )

    def page() -> RestResponse:
        return RestResponse(
            200, files["index.html"], STATIC_FILES["index.html"], SECURITY_HEADERS + _NO_CACHE
        )

    def static(rest: str) -> RestResponse:
        content_type = STATIC_FILES.get(rest)
        if content_type is None or rest == "index.html":
            return _json(404, {"error": f"Not found: {PREFIX}/static/{rest}"})
        return RestResponse(200, files[rest], content_type, SECURITY_HEADERS + _NO_CACHE)

    def state(rest: str) -> RestResponse:
        since_text, _, tag = rest.lstrip("/").partition("/")
        since = 0
        if since_text:
            if not since_text.isdigit() or len(since_text) > 18:
                return _json(400, {"error": f"Bad sequence number: {since_text[:40]}"})
            since = int(since_text)
        if len(tag) > 64:
            return _json(400, {"error": "Bad tag"})
        body = dashboard.state_json(since, tag)
        return RestResponse(200, body, b"application/json", SECURITY_HEADERS + _NO_STORE)

    def example(name: str) -> RestResponse:
        try:
            return _json(200, dashboard.example(name))
        except ServingError as exc:
            if isinstance(exc, NotFound):
                exc = NotFound(f"Model {name} has no available version to try")
            response = error_response(exc)
            return RestResponse(
                response.status, response.body, response.content_type, SECURITY_HEADERS
            )

    handler.extra_routes[PREFIX] = redirect
    handler.extra_routes[PREFIX + "/"] = page
    handler.extra_routes[PREFIX + "/index.html"] = page
    handler.extra_routes[PREFIX + "/api/state"] = lambda: state("")
    handler.prefix_routes[PREFIX + "/static/"] = static
    handler.prefix_routes[PREFIX + "/api/state/"] = state
    handler.prefix_routes[PREFIX + "/api/example/"] = example
