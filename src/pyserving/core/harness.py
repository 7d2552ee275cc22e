"""LoaderHarness: one version's state machine around its Loader, with load retries.

State changes are made by the manager while holding its lock; ``load_with_retries`` runs on a
load thread (or inline) without it. The harness never raises from loading: a failure comes
back as the ``ServingError`` that ended the last attempt.
"""

from __future__ import annotations

import logging
import threading

from pyserving.core.clock import Clock
from pyserving.core.handle import RefCounter
from pyserving.core.loader import Loader
from pyserving.core.policy import HarnessState
from pyserving.core.source import ServableId
from pyserving.errors import ServingError

log = logging.getLogger(__name__)


def as_serving_error(exc: BaseException) -> ServingError:
    """``exc`` itself when it is a ``ServingError``, else an UNKNOWN error naming it."""
    if isinstance(exc, ServingError):
        return exc
    return ServingError(f"{type(exc).__name__}: {exc}")


class LoaderHarness:
    """Owns one version's Loader, state, aspired flag, error and handle reference count."""

    def __init__(self, id: ServableId, loader: Loader | None, error: ServingError | None = None):
        self.id = id
        self.loader = loader
        self.state = HarnessState.ERROR if error is not None else HarnessState.NEW
        self.error = error
        self.refs = RefCounter()
        self.started_at: float | None = None
        self._aspired = True
        self._cancel = threading.Event()

    @property
    def is_aspired(self) -> bool:
        return self._aspired

    def set_aspired(self, aspired: bool) -> None:
        """Mark (un)aspired; un-aspiring stops pending load retries."""
        self._aspired = aspired
        if aspired:
            self._cancel.clear()
        else:
            self._cancel.set()

    def load_with_retries(
        self, max_retries: int, retry_interval: float, clock: Clock
    ) -> ServingError | None:
        """Call ``loader.load()`` up to ``1 + max_retries`` times, ``retry_interval`` apart.

        Retrying stops early once the version is no longer aspired. Returns ``None`` on
        success or the last attempt's error.
        """
        assert self.loader is not None
        attempt = 0
        while True:
            try:
                self.loader.load()
                return None
            except Exception as exc:
                error = as_serving_error(exc)
            if attempt >= max_retries or not self._aspired:
                return error
            attempt += 1
            log.warning(
                "Loading servable %s failed (%s); retry %d of %d in %.3gs",
                self.id,
                error.message,
                attempt,
                max_retries,
                retry_interval,
            )
            if clock.wait(self._cancel, retry_interval) or not self._aspired:
                log.info("Stopped retrying %s: it is no longer aspired", self.id)
                return error

    def __repr__(self) -> str:
        return f"LoaderHarness({self.id}, {self.state.value}, aspired={self._aspired})"
