"""LoaderHarness: one version's state machine around its Loader, with load retries.

State changes are made by the manager while holding its lock; ``load_with_retries`` runs on a
load thread (or inline) without it. The harness never raises from loading: a failure comes
back as the ``ServingError`` that ended the last attempt (``DeadlineExceeded`` when an attempt
outlived the load timeout).

Retrying stops early, and a wait between attempts ends at once, when the version is no longer
aspired or when the harness is *superseded* (the source has new content for the version: the
manager loads that afresh, from a new harness, instead of retrying the old one on schedule).
"""

from __future__ import annotations

import logging
import threading

from pyserving.core.clock import Clock
from pyserving.core.handle import RefCounter
from pyserving.core.loader import Loader
from pyserving.core.policy import HarnessState
from pyserving.core.source import ServableId
from pyserving.errors import DeadlineExceeded, ServingError

log = logging.getLogger(__name__)


def as_serving_error(exc: BaseException) -> ServingError:
    """``exc`` itself when it is a ``ServingError``, else an UNKNOWN error naming it."""
    if isinstance(exc, ServingError):
        return exc
    return ServingError(f"{type(exc).__name__}: {exc}")


class LoaderHarness:
    """Owns one version's Loader, state, aspired flag, error and handle reference count."""

    def __init__(
        self,
        id: ServableId,
        loader: Loader | None,
        error: ServingError | None = None,
        *,
        fingerprint: str | None = None,
    ):
        self.id = id
        self.loader = loader
        #: the source's fingerprint of the content this harness was made from (may be None)
        self.fingerprint = fingerprint
        self.state = HarnessState.ERROR if error is not None else HarnessState.NEW
        self.error = error
        self.refs = RefCounter()
        self.started_at: float | None = None
        self._aspired = True
        self._superseded = False
        #: set while retries must stop: un-aspired or superseded
        self._cancel = threading.Event()

    @property
    def is_aspired(self) -> bool:
        return self._aspired

    @property
    def superseded(self) -> bool:
        """Whether :meth:`supersede` was called (never reset)."""
        return self._superseded

    def set_aspired(self, aspired: bool) -> None:
        """Mark (un)aspired; un-aspiring stops pending load retries. Re-aspiring lets retries
        go on again unless the harness is superseded."""
        self._aspired = aspired
        if aspired and not self._superseded:
            self._cancel.clear()
        else:
            self._cancel.set()

    def supersede(self) -> None:
        """Give up this harness's content: the source has newer content for the version.

        No further load attempt is made: an attempt running now finishes (and its outcome
        stands), a wait between attempts ends at once, and ``load_with_retries`` then returns
        the last error. Idempotent; thread-safe.
        """
        self._superseded = True
        self._cancel.set()

    def load_with_retries(
        self,
        max_retries: int,
        retry_interval: float,
        clock: Clock,
        timeout: float | None = None,
    ) -> ServingError | None:
        """Call ``loader.load()`` up to ``1 + max_retries`` times, ``retry_interval`` apart.

        Retrying stops early, and a wait between attempts ends at once, once the version is
        no longer aspired or the harness is superseded (:meth:`supersede`). Returns ``None``
        on success or the last attempt's error.

        ``timeout`` (seconds, ``None`` = no limit) bounds each attempt: the attempt then runs
        on its own daemon thread, and one that has not finished in time gives up with
        ``DeadlineExceeded`` at once, without further retries. Python cannot stop a thread,
        so the attempt's thread is abandoned: it runs on until ``load`` returns, and if that
        load succeeds after all, ``loader.unload()`` is called on that thread so that nothing
        stays loaded. The caller must not use the loader again after a timeout.
        """
        assert self.loader is not None
        attempt = 0
        while True:
            if timeout is None:
                try:
                    self.loader.load()
                    return None
                except (Exception, SystemExit) as exc:  # SystemExit: sys.exit() in model code
                    error = as_serving_error(exc)
            else:
                outcome = self._load_with_timeout(self.loader, timeout)
                if outcome is None:
                    return None
                error, timed_out = outcome
                if timed_out:
                    return error
            if attempt >= max_retries or not self._aspired or self._superseded:
                if self._superseded:
                    log.info("Not retrying %s: its content changed since", self.id)
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
            if clock.wait(self._cancel, retry_interval) or not self._aspired or self._superseded:
                if self._superseded:
                    log.info("Stopped retrying %s: its content changed", self.id)
                else:
                    log.info("Stopped retrying %s: it is no longer aspired", self.id)
                return error

    def _load_with_timeout(
        self, loader: Loader, timeout: float
    ) -> tuple[ServingError, bool] | None:
        """One ``loader.load()`` on its own thread, waited for at most ``timeout`` seconds.

        Returns ``None`` on success, else ``(error, timed_out)``.
        """
        lock = threading.Lock()
        outcome: list[BaseException | None] = []
        abandoned = False

        def attempt() -> None:
            result: BaseException | None = None
            try:
                loader.load()
            except BaseException as exc:  # reported to the waiting thread, never re-raised
                result = exc
            with lock:
                outcome.append(result)
                late = abandoned
            if late:
                self._finish_abandoned(loader, result)

        thread = threading.Thread(
            target=attempt,
            name=f"pyserving-load-{self.id.name}-{self.id.version}",
            daemon=True,
        )
        thread.start()
        thread.join(timeout)
        with lock:
            if not outcome:
                abandoned = True
        if abandoned:
            return (
                DeadlineExceeded(
                    f"Loading servable {self.id} did not finish within the load timeout of "
                    f"{timeout:g} seconds; the load was abandoned"
                ),
                True,
            )
        result = outcome[0]
        return None if result is None else (as_serving_error(result), False)

    def _finish_abandoned(self, loader: Loader, result: BaseException | None) -> None:
        """Runs on an abandoned load's thread once ``load`` has returned at last."""
        if result is not None:
            log.warning("Abandoned load of servable %s failed later: %s", self.id, result)
            return
        log.warning(
            "Abandoned load of servable %s finished after its timeout; unloading it", self.id
        )
        try:
            loader.unload()
        except Exception:
            log.exception("Unloading the abandoned load of servable %s raised", self.id)

    def __repr__(self) -> str:
        return f"LoaderHarness({self.id}, {self.state.value}, aspired={self._aspired})"
