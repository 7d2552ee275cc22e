"""Adapters from version paths (and remote versions) to Loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pyserving.core.loader import Loader
from pyserving.core.source import ServableId, SourceAdapter

if TYPE_CHECKING:
    from pyserving.sources.remote import RemoteVersion

LoaderFactory = Callable[[ServableId, str], Loader]
RemoteLoaderFactory = Callable[[ServableId, "RemoteVersion"], Loader]


class PathToLoaderAdapter(SourceAdapter[str, Loader]):
    """Turns each version path into a Loader with ``factory(id, path)``.

    ``factory`` may be replaced at run time (for example per model platform) with
    :meth:`set_factory`; it must not load anything itself, only build the Loader.
    """

    def __init__(self, factory: LoaderFactory) -> None:
        super().__init__()
        self._factory = factory

    def set_factory(self, factory: LoaderFactory) -> None:
        self._factory = factory

    def convert(self, id: ServableId, data: str) -> Loader:
        return self._factory(id, data)


class RemoteVersionToLoaderAdapter(SourceAdapter["RemoteVersion", Loader]):
    """Turns each :class:`~pyserving.sources.remote.RemoteVersion` into a Loader with
    ``factory(id, version)`` (in the server: a ``CachedVersionLoader``, which copies the
    version into the local cache on ``load`` and hands the local path to the path factory).
    ``factory`` must not download or load anything itself."""

    def __init__(self, factory: RemoteLoaderFactory) -> None:
        super().__init__()
        self._factory = factory

    def convert(self, id: ServableId, data: RemoteVersion) -> Loader:
        return self._factory(id, data)
