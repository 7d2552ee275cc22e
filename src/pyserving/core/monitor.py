"""ServableStateMonitor: the observable lifecycle of every servable version.

The manager publishes a ``ServableState`` on an ``EventBus`` at every transition; the monitor
keeps the latest state of each version (for model status), a bounded history of events, and
lets callers wait for states. Thread-safe; subscribers are called synchronously on the
publishing thread and must be quick and must not raise (exceptions are logged and dropped).
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyserving.core.source import ServableId
from pyserving.errors import ServingError

log = logging.getLogger(__name__)


class ManagerState(enum.Enum):
    """The states TF Serving reports in model status."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class ServableState:
    """One version's state; ``error`` set means the version ended (or is ending) in failure."""

    id: ServableId
    state: ManagerState
    error: ServingError | None = None
    time: float = 0.0
    #: seconds the transition that led here took (load or unload duration), when known.
    duration: float | None = None
    #: why the transition happened, in words (e.g. "newest aspired version").
    cause: str = ""


Subscriber = Callable[[ServableState], None]


class EventBus:
    """Synchronous publish/subscribe of ``ServableState`` events."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, state: ServableState) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(state)
            except Exception:
                log.exception("servable state subscriber failed")


class ServableStateMonitor:
    """Keeps the latest state per version and a bounded event history."""

    def __init__(self, bus: EventBus, max_history: int = 1000) -> None:
        self._states: dict[str, dict[int, ServableState]] = {}
        self._history: collections.deque[ServableState] = collections.deque(maxlen=max_history)
        self._cond = threading.Condition()
        self._released = False
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        """Stop listening (idempotent); waits end (see :meth:`release_waiters`)."""
        self._unsubscribe()
        self.release_waiters()

    def release_waiters(self) -> None:
        """End every wait now and from now on (:meth:`wait_for` returns False at once), as
        the server shuts down: a wait for versions that may never settle must not keep it
        alive. States are still recorded."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    @property
    def released(self) -> bool:
        """Whether :meth:`release_waiters` was called."""
        return self._released

    def _on_event(self, state: ServableState) -> None:
        with self._cond:
            self._states.setdefault(state.id.name, {})[state.id.version] = state
            self._history.append(state)
            self._cond.notify_all()

    def get_state(self, id: ServableId) -> ServableState | None:
        with self._cond:
            return self._states.get(id.name, {}).get(id.version)

    def get_version_states(self, name: str) -> dict[int, ServableState]:
        """Latest state of every version of ``name`` ever seen (empty when unknown)."""
        with self._cond:
            return dict(self._states.get(name, {}))

    def get_all_states(self) -> dict[str, dict[int, ServableState]]:
        with self._cond:
            return {name: dict(v) for name, v in self._states.items()}

    def history(self) -> list[ServableState]:
        """Recent events, oldest first (bounded by ``max_history``)."""
        with self._cond:
            return list(self._history)

    def forget(self, name: str) -> None:
        """Drop what is known of ``name`` (after a model is removed from the config)."""
        with self._cond:
            self._states.pop(name, None)

    def wait_for(
        self, predicate: Callable[[ServableStateMonitor], bool], timeout: float | None = None
    ) -> bool:
        """Block until ``predicate(self)`` holds or ``timeout`` passes; return whether it held
        (False at once once :meth:`release_waiters` was called)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                if self._released:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_until_available(self, id: ServableId, timeout: float | None = None) -> ServableState:
        """Wait until ``id`` is AVAILABLE or END; return its state (or the last one seen)."""

        def settled(m: ServableStateMonitor) -> bool:
            s = m._states.get(id.name, {}).get(id.version)
            return s is not None and s.state in (ManagerState.AVAILABLE, ManagerState.END)

        self.wait_for(settled, timeout)
        state = self.get_state(id)
        if state is None:
            return ServableState(id, ManagerState.START)
        return state

    def wait_until_settled(
        self, names: Iterable[str], timeout: float | None = None
    ) -> dict[str, bool]:
        """Wait until every version seen of each model is AVAILABLE or END.

        A model counts as settled only once at least one of its versions has been seen.
        Returns ``{name: has_an_available_version}``.
        """
        wanted = list(names)
        done = (ManagerState.AVAILABLE, ManagerState.END)

        def is_settled(m: ServableStateMonitor, name: str) -> bool:
            versions = m._states.get(name, {})
            return bool(versions) and all(s.state in done for s in versions.values())

        self.wait_for(lambda m: all(is_settled(m, n) for n in wanted), timeout)
        with self._cond:
            return {
                n: any(s.state is ManagerState.AVAILABLE for s in self._states.get(n, {}).values())
                for n in wanted
            }
