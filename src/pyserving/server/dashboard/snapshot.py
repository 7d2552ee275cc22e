"""The dashboard's state: one JSON document of what the server holds and how it is doing.

:class:`Dashboard` gathers it from the same sources the APIs and the metrics endpoint use,
nothing of its own but two small recorders: the :class:`ServableStateMonitor` (version
states, errors, the transition history), the manager's labels and resource reservations,
the model config, :class:`LoadRecorder` (load time and measured memory growth per version)
and :class:`RequestSeries` (per-model request rate, errors, p50/p99 latency and batch sizes,
sampled from :class:`ServerMetrics`' counters).

:meth:`Dashboard.state` builds the document (see ``docs/dashboard.md`` for its fields);
``since`` is the last series sequence number the caller has, so each chart point is sent
once. It reads everything without blocking model loads or requests (the monitor and
metrics locks are held only to copy).

Construct it before the first model loads (the load recorder subscribes to the event bus),
:meth:`start` it once serving, :meth:`close` it on shutdown (idempotent).
"""

from __future__ import annotations

import os
import platform as platform_module
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

import pyserving
from pyserving.core.monitor import ManagerState, ServableState
from pyserving.core.source import ServableId
from pyserving.errors import ServingError
from pyserving.server.core import ServerCore
from pyserving.server.dashboard.examples import example_request
from pyserving.server.dashboard.loads import LoadRecorder, process_rss_bytes
from pyserving.server.dashboard.series import RequestSeries, SeriesOptions
from pyserving.server.metrics import ServerMetrics
from pyserving.sources.remote import display_url, is_remote, redact

#: Transitions sent, newest first.
MAX_TRANSITIONS = 50
#: Seconds one build of the models' part of the state serves further polls (when no
#: version changed state meanwhile).
CONTENT_TTL = 0.5
#: Ended versions listed per model beside those not ended (the newest by number).
MAX_ENDED_VERSIONS = 3

#: What the page calls a platform, per servable ``backend``.
_BACKEND_PLATFORMS = {"session": "tensorflow", "function": "tensorflow"}


@dataclass(frozen=True)
class ServerInfo:
    """What the dashboard shows of the process itself: ports, the flags in force as
    ``(name, value)`` pairs (those given on the command line), and which worker it is."""

    grpc_port: int = 0
    rest_port: int = 0
    grpc_socket_path: str = ""
    flags: tuple[tuple[str, str], ...] = ()
    batching: bool = False
    #: With ``--num_workers``: this worker's index and the number of workers (the page
    #: then shows one worker's figures, and says so).
    worker_index: int | None = None
    num_workers: int = 1


class Dashboard:
    """The state behind ``/dashboard``; thread-safe."""

    def __init__(
        self,
        core: ServerCore,
        metrics: ServerMetrics,
        info: ServerInfo | None = None,
        *,
        series: SeriesOptions | None = None,
        wall_clock: Callable[[], float] = time.time,
        rss: Callable[[], int] = process_rss_bytes,
    ) -> None:
        self.core = core
        self.metrics = metrics
        self.info = info or ServerInfo()
        self._wall = wall_clock
        self._rss = rss
        self._started = wall_clock()
        #: wall time = monotonic time + this (fixed, so equal states encode equally)
        self._wall_offset = self._started - core.manager.options.clock.monotonic()
        #: flag values as shown: credentials in them (URLs, keys) replaced with ***
        self._flags = [[name, redact(value)] for name, value in self.info.flags]
        self.loads = LoadRecorder(rss)
        self._content: tuple[ServableState | None, float, bytes, str] | None = None
        self._content_lock = threading.Lock()
        self._unsubscribe = core.manager.bus.subscribe(self.loads.on_state)
        self.series = RequestSeries(metrics.model_totals, series)
        self._platforms: dict[ServableId, str] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start sampling the request series."""
        self.series.start()

    def close(self) -> None:
        """Stop sampling and listening (idempotent)."""
        self.series.close()
        self._unsubscribe()

    # ------------------------------------------------------------------ the document

    def state(self, since: int = 0, tag: str = "") -> dict[str, Any]:
        """The state document as a dict (see :meth:`state_json`)."""
        result: dict[str, Any] = orjson.loads(self.state_json(since, tag))
        return result

    def state_json(self, since: int = 0, tag: str = "") -> bytes:
        """The state document, JSON: ``server``, ``series``, ``points`` (per model, the
        chart points after sequence number ``since``), ``tag``, ``models`` and
        ``transitions``. ``tag`` identifies the content of the last two; when the caller
        already has that content (it sends the tag it got), both are ``null``, so a page
        polling an unchanged server receives only the server facts and new chart points."""
        wall = self._wall()
        content, current_tag = self._models_json(wall)
        seq, points = self.series.since(since)
        head = to_json(
            {
                "server": self._server(wall),
                "series": {
                    "seq": seq,
                    "step_s": self.series.options.step,
                    "points": self.series.options.points,
                    "columns": ["seq", "requests", "errors", "p50_ms", "p99_ms", "batch"],
                },
                "points": points,
                "tag": current_tag,
            }
        )
        if tag == current_tag:
            return head[:-1] + b',"models":null,"transitions":null}'
        return head[:-1] + b"," + content[1:]

    def _models_json(self, wall: float) -> tuple[bytes, str]:
        """``{"models": ..., "transitions": ...}`` as JSON, and its tag. Viewers polling
        together share one build: it is reused while no version changed state and it is
        younger than :data:`CONTENT_TTL` (labels, config and loading times are then at most
        that much behind)."""
        history = self.core.monitor.history()
        last = history[-1] if history else None  # the newest transition, kept: no id reuse
        with self._content_lock:
            cached = self._content
            if cached is not None and cached[0] is last and 0 <= wall - cached[1] < CONTENT_TTL:
                return cached[2], cached[3]
        mono = self.core.manager.options.clock.monotonic()
        offset = self._wall_offset

        def wall_time(state_time: float) -> float:
            return round(state_time + offset, 3)

        config = self.core.config
        models = [
            self._model(model, wall_time, mono)
            for model in sorted(config.model_config_list.config, key=lambda m: m.name)
        ]
        history = history[-MAX_TRANSITIONS:]
        content = to_json(
            {
                "models": models,
                "transitions": [_transition(s, wall_time) for s in reversed(history)],
            }
        )
        tag = f"{zlib.crc32(content):08x}{len(content):x}"
        with self._content_lock:
            self._content = (last, wall, content, tag)
        return content, tag

    def _server(self, wall: float) -> dict[str, Any]:
        tracker = self.core.manager.resources
        used = tracker.used()
        total = tracker.total
        return {
            "name": "pyserving",
            "version": pyserving.__version__,
            "python": platform_module.python_version(),
            "tensorflow": _module_version("tensorflow"),
            "pid": os.getpid(),
            "started": round(self._started, 3),
            "now": round(wall, 3),
            "uptime_s": round(wall - self._started, 1),
            "ports": {
                "grpc": self.info.grpc_port,
                "rest": self.info.rest_port,
                "grpc_socket": self.info.grpc_socket_path,
            },
            "flags": self._flags,
            "batching": self.info.batching,
            "worker": (
                None
                if self.info.worker_index is None
                else {"index": self.info.worker_index, "count": self.info.num_workers}
            ),
            "memory": {
                "rss_bytes": self._rss(),
                "reserved_bytes": used.ram_bytes,
                "budget_bytes": None if total is None else total.ram_bytes,
            },
        }

    def _model(
        self,
        model: Any,
        wall_time: Callable[[float], float],
        mono: float,
    ) -> dict[str, Any]:
        name = model.name
        states = self.core.monitor.get_version_states(name)
        shown = [s for s in states.values() if s.state is not ManagerState.END]
        ended = sorted(
            (s for s in states.values() if s.state is ManagerState.END),
            key=lambda s: s.id.version,
            reverse=True,
        )
        shown.extend(ended[:MAX_ENDED_VERSIONS])
        shown.sort(key=lambda s: s.id.version, reverse=True)
        versions = [self._version(s, wall_time, mono) for s in shown]
        available = [s.id.version for s in states.values() if s.state is ManagerState.AVAILABLE]
        policy = model.model_version_policy.WhichOneof("policy_choice") or "latest"
        return {
            "name": name,
            "base_path": _shown_path(model.base_path),
            "platform": model.model_platform or self._platform(name, available),
            "version_policy": policy,
            "status": _model_status(states.values()),
            "labels": dict(sorted(self.core.manager.version_labels(name).items())),
            "versions": versions,
            "hidden_versions": len(states) - len(shown),
        }

    def _version(
        self, state: ServableState, wall_time: Callable[[float], float], mono: float
    ) -> dict[str, Any]:
        reservation = self.core.manager.resources.reservation(state.id)
        record = self.loads.get(state.id)
        out: dict[str, Any] = {
            "version": state.id.version,
            "state": state.state.value,
            "since": wall_time(state.time),
            "cause": state.cause,
            "error": None,
            "ram_estimate_bytes": None if reservation is None else reservation.ram_bytes,
            "ram_growth_bytes": None,
            "load_s": None,
        }
        if state.error is not None:
            out["error"] = f"{state.error.code.name}: {state.error.message}"
        if record is not None:
            out["ram_growth_bytes"] = record.growth_bytes
            out["load_s"] = None if record.load_seconds is None else round(record.load_seconds, 3)
        if state.state is ManagerState.LOADING:
            out["loading_s"] = round(max(0.0, mono - state.time), 1)
            progress = self._download_progress(state.id)
            if progress is not None:
                out["progress"] = {"done_bytes": progress[0], "total_bytes": progress[1]}
        return out

    def _download_progress(self, id: ServableId) -> tuple[int, int] | None:
        """Bytes copied and listed, while a version from an object store is being copied."""
        return self.core.cache.progress(id.name, id.version)

    def _platform(self, name: str, available: list[int]) -> str:
        """The platform serving the newest AVAILABLE version (from its servable's backend),
        remembered per version; "" when nothing is available."""
        if not available:
            return ""
        id = ServableId(name, max(available))
        with self._lock:
            known = self._platforms.get(id)
        if known is not None:
            return known
        try:
            with self.core.handle(name, id.version) as handle:
                backend = str(getattr(handle.servable, "backend", "session"))
        except ServingError:
            return ""
        found = _BACKEND_PLATFORMS.get(backend, backend)
        with self._lock:
            if len(self._platforms) > 10_000:
                self._platforms.clear()
            self._platforms[id] = found
        return found

    # ------------------------------------------------------------------ try it

    def example(self, name: str) -> dict[str, Any]:
        """A predict body for ``name``'s newest AVAILABLE version (see ``examples.py``);
        ``NotFound`` when none is available."""
        with self.core.handle(name) as handle:
            out = example_request(handle.servable)
            out["model"] = name
            out["version"] = handle.id.version
            return out


def _transition(state: ServableState, wall_time: Callable[[float], float]) -> dict[str, Any]:
    return {
        "time": wall_time(state.time),
        "model": state.id.name,
        "version": state.id.version,
        "state": state.state.value,
        "cause": state.cause,
        "duration_s": None if state.duration is None else round(state.duration, 3),
        "error": None if state.error is None else state.error.message,
    }


def _model_status(states: Any) -> str:
    """AVAILABLE when a version serves; else LOADING while one is on its way; else ERROR
    when the newest version failed; else END (or UNKNOWN before any version is seen)."""
    values = list(states)
    if not values:
        return "UNKNOWN"
    if any(s.state is ManagerState.AVAILABLE for s in values):
        return "AVAILABLE"
    if any(s.state in (ManagerState.START, ManagerState.LOADING) for s in values):
        return "LOADING"
    newest = max(values, key=lambda s: s.id.version)
    return "ERROR" if newest.error is not None else newest.state.value


def _shown_path(base_path: str) -> str:
    """A base path as the page shows it: an object store URL without credentials, query
    string or fragment (as logs and statuses show it)."""
    return display_url(base_path) if is_remote(base_path) else base_path


def _module_version(name: str) -> str:
    module = sys.modules.get(name)
    return str(getattr(module, "__version__", "")) if module is not None else ""


def to_json(value: Any) -> bytes:
    """JSON; a string that is not valid UTF-8 (lone surrogates, e.g. in an error quoting a
    file name) is written with backslash escapes instead of failing the whole document."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(_clean(value))


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
