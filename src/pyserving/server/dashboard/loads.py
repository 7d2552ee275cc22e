"""What each version's load took: its duration and the process memory it added.

:class:`LoadRecorder` is an event-bus subscriber (subscribe it before models load): at a
version's LOADING event it reads the process's resident set size, at its AVAILABLE event
reads it again; the difference is the version's *measured growth*, shown beside its RAM
estimate and the memory budget. It is the growth of the whole process over the load, so
loads that overlap (``--num_load_threads`` > 1) share what they added between them, and the
first TensorFlow load also pays TensorFlow's own one-time initialisation. Reading the RSS is
one read of ``/proc/self/statm`` (injectable for tests).

Thread-safe; bounded (the newest ``max_versions`` versions are remembered).
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyserving.core.monitor import ManagerState, ServableState
from pyserving.core.source import ServableId

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss_bytes() -> int:
    """This process's resident set size in bytes (0 where ``/proc`` is not available)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class LoadRecord:
    """``load_seconds``: the load's duration (None until it completed); ``growth_bytes``:
    the process RSS after the load minus before (None until AVAILABLE)."""

    load_seconds: float | None = None
    growth_bytes: int | None = None


class LoadRecorder:
    """Subscribe :meth:`on_state` to the manager's event bus."""

    def __init__(
        self, rss: Callable[[], int] = process_rss_bytes, max_versions: int = 2000
    ) -> None:
        self._rss = rss
        self._max = max_versions
        self._lock = threading.Lock()
        self._before: dict[ServableId, int] = {}
        self._records: collections.OrderedDict[ServableId, LoadRecord] = collections.OrderedDict()

    def on_state(self, state: ServableState) -> None:
        if state.state is ManagerState.LOADING:
            rss_before = self._rss()
            with self._lock:
                self._before[state.id] = rss_before
        elif state.state is ManagerState.AVAILABLE:
            after = self._rss()
            with self._lock:
                before: int | None = self._before.pop(state.id, None)
                growth = None if before is None or not after else after - before
                self._records[state.id] = LoadRecord(state.duration, growth)
                self._records.move_to_end(state.id)
                while len(self._records) > self._max:
                    self._records.popitem(last=False)
        elif state.state is ManagerState.END:
            with self._lock:
                self._before.pop(state.id, None)

    def get(self, id: ServableId) -> LoadRecord | None:
        with self._lock:
            return self._records.get(id)
