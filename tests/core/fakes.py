"""FakeLoader: a Loader whose cost, failures and timing the test controls."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.errors import Internal


@dataclass
class FakeServable:
    name: str
    version: int
    unloaded: bool = False


@dataclass
class LoadLog:
    """Shared record of what every FakeLoader did, in order."""

    events: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, name: str, version: int) -> None:
        with self.lock:
            self.events.append((what, name, version))


class FakeLoader(Loader):
    """Loads instantly (or when ``gate`` is set), failing the first ``fail_times`` attempts.

    ``started`` is set when an attempt begins (before it waits for ``gate``)."""

    def __init__(
        self,
        name: str,
        version: int,
        *,
        ram: int = 100,
        fail_times: int = 0,
        log: LoadLog | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.ram = ram
        self.fail_times = fail_times
        self.attempts = 0
        self.log = log or LoadLog()
        self.gate = gate
        self.started = threading.Event()
        self._servable: FakeServable | None = None

    def estimate_resources(self) -> ResourceEstimate:
        return ResourceEstimate(ram_bytes=self.ram)

    def load(self) -> None:
        self.attempts += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if self.attempts <= self.fail_times:
            self.log.add("load-failed", self.name, self.version)
            raise Internal(f"injected failure {self.attempts} of {self.name}:{self.version}")
        self._servable = FakeServable(self.name, self.version)
        self.log.add("load", self.name, self.version)

    def unload(self) -> None:
        assert self._servable is not None
        self._servable.unloaded = True
        self._servable = None
        self.log.add("unload", self.name, self.version)

    def servable(self) -> FakeServable:
        assert self._servable is not None
        return self._servable
