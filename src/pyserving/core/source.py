"""Sources, targets and the values they pass: ``ServableId`` and ``ServableData``.

A Source emits, per servable name, the *complete* list of versions it wants loaded (the
aspired versions). A version missing from the latest list means "unload it". Errors travel
as data: a ``ServableData`` holds either a value or a ``ServingError``, never raises through
a callback.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pyserving.errors import ServingError

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True, order=True)
class ServableId:
    """A servable stream's name and one version of it."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{{name: {self.name} version: {self.version}}}"


class ServableData(Generic[T]):
    """A value of type T for one ``ServableId``, or the error that stopped producing it.

    ``fingerprint`` optionally names the content the value was made from (for a version
    directory: a digest of its file listing). A source sets it when the content behind one
    ``ServableId`` can change; adapters pass it on unchanged; the manager loads a version that
    ended in error again when the source re-emits it with a different fingerprint. ``None``
    (the default) means "unknown" and never triggers anything.
    """

    __slots__ = ("_error", "_value", "fingerprint", "id")

    def __init__(
        self,
        id: ServableId,
        value: T | None = None,
        error: ServingError | None = None,
        *,
        fingerprint: str | None = None,
    ):
        if (value is None) == (error is None):
            raise ValueError("ServableData holds exactly one of value and error")
        self.id = id
        self._value = value
        self._error = error
        self.fingerprint = fingerprint

    @property
    def ok(self) -> bool:
        return self._error is None

    @property
    def error(self) -> ServingError | None:
        return self._error

    def value(self) -> T:
        """The value; raises the stored error when there is none."""
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def __repr__(self) -> str:
        inner = repr(self._error) if self._error is not None else repr(self._value)
        return f"ServableData({self.id}, {inner})"


#: ``callback(servable_name, versions)``: the complete aspired set for that name.
AspiredVersionsCallback = Callable[[str, Sequence[ServableData[Any]]], None]


class Source(abc.ABC, Generic[T]):
    """Emits aspired versions of servables to exactly one target callback."""

    @abc.abstractmethod
    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback) -> None:
        """Connect the target. Called once, before the source emits anything."""


class Target(abc.ABC, Generic[T]):
    """Receives aspired versions from a source."""

    @abc.abstractmethod
    def get_aspired_versions_callback(self) -> AspiredVersionsCallback:
        """The callback a source should call; thread-safe."""


def connect(source: Source[T], target: Target[T]) -> None:
    """Connect ``source`` to ``target``."""
    source.set_aspired_versions_callback(target.get_aspired_versions_callback())


class SourceAdapter(Source[U], Target[T], Generic[T, U]):
    """Turns ``ServableData[T]`` into ``ServableData[U]`` (for example a path into a Loader).

    Subclasses implement :meth:`convert`; an exception it raises becomes an error value for
    that version. Errors arriving from upstream are passed through unchanged; every item keeps
    its ``fingerprint``.
    """

    def __init__(self) -> None:
        self._callback: AspiredVersionsCallback | None = None
        self._ready = threading.Event()

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback) -> None:
        self._callback = callback
        self._ready.set()

    def get_aspired_versions_callback(self) -> AspiredVersionsCallback:
        return self._on_aspired_versions

    @abc.abstractmethod
    def convert(self, id: ServableId, data: T) -> U:
        """Convert one value; may raise ``ServingError``."""

    def adapt(self, item: ServableData[T]) -> ServableData[U]:
        """Convert one item, turning failures into error data."""
        fingerprint = item.fingerprint
        if not item.ok:
            assert item.error is not None
            return ServableData(item.id, error=item.error, fingerprint=fingerprint)
        try:
            value = self.convert(item.id, item.value())
        except ServingError as exc:
            return ServableData(item.id, error=exc, fingerprint=fingerprint)
        except Exception as exc:  # a broken adapter must not break the source
            error = ServingError(f"{type(exc).__name__}: {exc}")
            return ServableData(item.id, error=error, fingerprint=fingerprint)
        return ServableData(item.id, value, fingerprint=fingerprint)

    def _on_aspired_versions(self, name: str, versions: Sequence[ServableData[T]]) -> None:
        self._ready.wait()
        assert self._callback is not None
        self._callback(name, [self.adapt(v) for v in versions])
