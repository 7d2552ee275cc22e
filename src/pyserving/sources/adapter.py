"""Adapters from version paths to Loaders."""

from __future__ import annotations

from collections.abc import Callable

from pyserving.core.loader import Loader
from pyserving.core.source import ServableId, SourceAdapter

LoaderFactory = Callable[[ServableId, str], Loader]


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
