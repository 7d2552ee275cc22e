"""ServableHandle and the reference counting behind it.

A handle pins one loaded version while a request uses it. Handles are scoped::

    with manager.handle(ServableRequest.latest("model")) as handle:
        handle.servable.run(...)

and are never stored on long-lived objects. Unloading a version first removes it from lookup,
then waits (``RefCounter.close_and_wait``) until every handle taken before that is released,
and only then calls ``Loader.unload``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pyserving.core.source import ServableId


@dataclass(frozen=True)
class ServableRequest:
    """Which version of a servable a request wants: latest, a specific number, or a label."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def latest(cls, name: str) -> ServableRequest:
        return cls(name)

    @classmethod
    def specific(cls, name: str, version: int) -> ServableRequest:
        return cls(name, version=version)

    @classmethod
    def labelled(cls, name: str, label: str) -> ServableRequest:
        return cls(name, label=label)

    def __str__(self) -> str:
        """TF Serving's rendering, used in ``Servable not found for request: ...``."""
        if self.version is not None:
            return f"Specific({self.name}, {self.version})"
        if self.label is not None:
            return f"Label({self.name}, {self.label})"
        return f"Latest({self.name})"


class RefCounter:
    """Counts live handles on one version; once closed, no new handle can be taken."""

    __slots__ = ("_closed", "_cond", "_count")

    def __init__(self) -> None:
        self._count = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def acquire(self) -> bool:
        """Take a reference; False when the version is closing (the caller looks up again)."""
        with self._cond:
            if self._closed:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._count -= 1
            if self._count == 0:
                self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def close_and_wait(self, timeout: float | None = None) -> bool:
        """Refuse new references, then wait until the live ones are released."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._count == 0, timeout)


class ServableHandle:
    """A reference to one loaded version. Use as a context manager; release is idempotent."""

    __slots__ = ("_counter", "_released", "id", "servable")

    def __init__(self, id: ServableId, servable: Any, counter: RefCounter) -> None:
        self.id = id
        self.servable = servable
        self._counter = counter
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._counter.release()

    def __enter__(self) -> ServableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
