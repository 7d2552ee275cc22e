"""The Loader contract: how one servable version is loaded, what it costs, how it is unloaded.

A Loader is created by a SourceAdapter for one ``ServableId`` and handed to the manager, which
alone decides when to call it. Call order is always::

    estimate_resources()*  ->  load()  ->  servable()*  ->  unload()

``load`` is called at most once per successful attempt (it may be retried after a failure,
in which case the loader must clean up anything a failed attempt left behind before raising);
``unload`` is called exactly once after a successful ``load`` and never concurrently with
``servable`` callers' use of the object it returned (the manager waits for handles first).
"""

from __future__ import annotations

import abc
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

from pyserving.errors import FailedPrecondition

_log = logging.getLogger(__name__)

#: TF Serving's default multiplier: the RAM a model takes is bounded by 1.2 x its files' size.
DISK_SIZE_RAM_MULTIPLIER = 1.2


@dataclass(frozen=True, order=True)
class ResourceEstimate:
    """An upper bound on what a loaded servable takes.

    ``ram_bytes`` is host memory; ``accelerator_bytes`` is device memory (GPU/TPU), kept
    separately because the two budgets are separate.
    """

    ram_bytes: int = 0
    accelerator_bytes: int = 0

    def __add__(self, other: ResourceEstimate) -> ResourceEstimate:
        return ResourceEstimate(
            self.ram_bytes + other.ram_bytes, self.accelerator_bytes + other.accelerator_bytes
        )

    def __sub__(self, other: ResourceEstimate) -> ResourceEstimate:
        return ResourceEstimate(
            self.ram_bytes - other.ram_bytes, self.accelerator_bytes - other.accelerator_bytes
        )

    def fits_within(self, other: ResourceEstimate) -> bool:
        """True when every component of ``self`` is at most the same component of ``other``."""
        return (
            self.ram_bytes <= other.ram_bytes and self.accelerator_bytes <= other.accelerator_bytes
        )


class Loader(abc.ABC):
    """Loads and unloads one servable version. Implementations need not be thread-safe: the
    manager never calls two of these methods on one loader at the same time."""

    @abc.abstractmethod
    def estimate_resources(self) -> ResourceEstimate:
        """An upper bound on the resources the loaded servable needs.

        Must be callable before ``load`` and must never grow between calls (it may shrink after
        ``load`` once the real cost is known). Cheap and side-effect free.
        """

    @abc.abstractmethod
    def load(self) -> None:
        """Load the servable. Raises (preferably a ``ServingError``) on failure."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Release everything ``load`` acquired. Must not raise."""

    @abc.abstractmethod
    def servable(self) -> Any:
        """The loaded object handed to requests. Only valid between ``load`` and ``unload``."""


class HeldServableLoader(Loader):
    """A loader whose ``load`` stores the servable it builds in ``self._servable`` (an
    object with ``close()``): :meth:`unload` closes and drops it, :meth:`servable` hands it
    out. Subclasses set ``path`` (for messages) and ``_servable = None`` before loading."""

    path: str
    _servable: Any

    def unload(self) -> None:
        """Close the servable, drop every reference to it, collect. Never raises: a failure
        to close is logged (the references are dropped regardless)."""
        servable, self._servable = self._servable, None
        if servable is None:
            return
        try:
            servable.close()
        except Exception:
            _log.exception("Error while unloading %s", self.path)
        del servable
        gc.collect()

    def servable(self) -> Any:
        """The loaded servable. Raises ``FailedPrecondition`` outside load/unload."""
        if self._servable is None:
            raise FailedPrecondition(f"{self!r} is not loaded")
        return self._servable


def directory_size_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the regular files under ``path`` (symlinks followed for files only)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def estimate_from_disk(path: str | os.PathLike[str]) -> ResourceEstimate:
    """TF Serving's default estimate: RAM <= 1.2 x the size of the version's files."""
    return ResourceEstimate(ram_bytes=int(directory_size_bytes(path) * DISK_SIZE_RAM_MULTIPLIER))


class FailingLoader(Loader):
    """A loader whose ``load`` raises ``error``: stands for a version that cannot be loaded
    for a reason known before loading (no platform recognizes its files), so that the reason
    shows in the model's status like any load error. Its estimate is from disk."""

    def __init__(self, path: str, error: Exception) -> None:
        self.path = path
        self.error = error

    def estimate_resources(self) -> ResourceEstimate:
        return estimate_from_disk(self.path)

    def load(self) -> None:
        raise self.error

    def unload(self) -> None:
        pass

    def servable(self) -> Any:
        raise self.error
