"""ResourceTracker: reserves each loader's estimate against a total budget.

A reservation is made before a version loads and released after it unloads, so the sum of
reservations bounds what loaded (and loading) versions may take. A reservation that does not
fit raises ``ResourceExhausted`` and changes nothing. Thread-safe.
"""

from __future__ import annotations

import threading

from pyserving.core.loader import ResourceEstimate
from pyserving.core.source import ServableId
from pyserving.errors import ResourceExhausted


class ResourceTracker:
    """Tracks reservations against ``total`` (``None`` = unlimited, TF Serving's default)."""

    def __init__(self, total: ResourceEstimate | None = None) -> None:
        self._total = total
        self._reserved: dict[ServableId, ResourceEstimate] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> ResourceEstimate | None:
        return self._total

    def used(self) -> ResourceEstimate:
        """The sum of current reservations."""
        with self._lock:
            return self._used_locked()

    def _used_locked(self) -> ResourceEstimate:
        used = ResourceEstimate()
        for estimate in self._reserved.values():
            used = used + estimate
        return used

    def reservation(self, id: ServableId) -> ResourceEstimate | None:
        with self._lock:
            return self._reserved.get(id)

    def reserve(self, id: ServableId, estimate: ResourceEstimate) -> None:
        """Reserve ``estimate`` for ``id`` or raise ``ResourceExhausted`` naming the shortfall.

        Reserving again for the same id replaces the earlier reservation.
        """
        with self._lock:
            if self._total is not None:
                others = self._used_locked() - self._reserved.get(id, ResourceEstimate())
                if not (others + estimate).fits_within(self._total):
                    free = self._total - others
                    raise ResourceExhausted(
                        f"Insufficient resources to load servable {id.name} version "
                        f"{id.version}: it needs {_describe(estimate)} but only "
                        f"{_describe(free)} of {_describe(self._total)} is free"
                    )
            self._reserved[id] = estimate

    def shrink(self, id: ServableId, estimate: ResourceEstimate) -> None:
        """Lower ``id``'s reservation to ``estimate`` where that is smaller (never grows)."""
        with self._lock:
            current = self._reserved.get(id)
            if current is None:
                return
            self._reserved[id] = ResourceEstimate(
                min(current.ram_bytes, estimate.ram_bytes),
                min(current.accelerator_bytes, estimate.accelerator_bytes),
            )

    def release(self, id: ServableId) -> None:
        """Drop ``id``'s reservation (no-op when there is none)."""
        with self._lock:
            self._reserved.pop(id, None)


def _describe(estimate: ResourceEstimate) -> str:
    text = f"{estimate.ram_bytes} bytes of RAM"
    if estimate.accelerator_bytes:
        text += f" and {estimate.accelerator_bytes} bytes of accelerator memory"
    return text
