"""Time, injectable: the manager and the load harness read time and wait only through a Clock.

``SystemClock`` is real time. ``ManualClock`` is test time that moves only when told: by
default waiting advances it and returns at once, which makes retry intervals and poll loops
deterministic in tests; with ``blocking=True`` a wait blocks until its event is set or the
test advances the clock past its deadline, so a test can act while a thread waits.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time in seconds and an interruptible wait."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` or until ``event`` is set; return whether it is set."""
        ...


class SystemClock:
    """Real time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class ManualClock:
    """Test time that moves only when told to. Thread-safe.

    By default ``wait`` returns at once, advancing the clock by ``seconds``: retry intervals
    cost nothing. With ``blocking=True`` a ``wait`` blocks instead until its event is set or
    until :meth:`advance` moves the time to its deadline, so a test can catch a thread in the
    middle of a wait (:meth:`wait_for_waiters`), change things under it and check that the
    wait ended without the time moving. A blocked wait notices its event within a few
    milliseconds of real time.
    """

    #: Real seconds between a blocked wait's looks at its event.
    POLL_SECONDS = 0.002

    def __init__(self, start: float = 0.0, *, blocking: bool = False) -> None:
        self._now = start
        self._blocking = blocking
        self._waiters = 0
        self._cond = threading.Condition()

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        if not self._blocking:
            self.advance(max(0.0, seconds))
            return event.is_set()
        with self._cond:
            deadline = self._now + max(0.0, seconds)
            self._waiters += 1
            self._cond.notify_all()
        try:
            while not event.wait(self.POLL_SECONDS):
                with self._cond:
                    if self._now >= deadline:
                        return event.is_set()
            return True
        finally:
            with self._cond:
                self._waiters -= 1
                self._cond.notify_all()

    @property
    def waiters(self) -> int:
        """How many threads are blocked in ``wait`` now (always 0 unless ``blocking``)."""
        with self._cond:
            return self._waiters

    def wait_for_waiters(self, count: int, timeout: float) -> bool:
        """Block (real time, at most ``timeout`` s) until ``count`` threads are in ``wait``;
        return whether they are."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waiters >= count, timeout)
