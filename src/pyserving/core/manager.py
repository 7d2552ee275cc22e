"""AspiredVersionsManager: decides when versions load and unload, and hands out handles.

Contract:

* Sources call the callback from :meth:`get_aspired_versions_callback` with the complete set of
  versions they want for a name; the set is applied at the next :meth:`run_once`.
* :meth:`run_once` (called by the background manager loop every ``manage_state_interval``, or by
  hand when the loop is off) applies pending aspired sets, forgets finished un-aspired versions,
  and asks each name's policy for at most one action, only when none of that name's versions
  is mid-transition. Loads and unloads run on bounded thread pools (size 0 = inline, inside
  ``run_once``).
* A load first reserves the loader's estimate with the ResourceTracker; one that does not fit
  ends in an error state (RESOURCE_EXHAUSTED) and touches no other model.
* :meth:`handle` never blocks on loading: it returns a handle to an AVAILABLE version or raises
  ``NotFound``. An unload removes the version from lookup first, waits for its handles in
  flight, then calls ``Loader.unload``.
* Every transition is published on the event bus (START, LOADING, AVAILABLE, UNLOADING, END).
* A version un-aspired before its load started ends (END) at once.
* New content: when the source re-emits a version with a different
  ``ServableData.fingerprint`` (its content changed), a version that ended in error or has
  not started loading is loaded afresh, from a new harness, at the next round. A version
  loading (an attempt running, or waiting for its next retry) is superseded as soon as the
  source calls back, from the source's thread: it makes no further attempt on the old
  content, its wait for ``load_retry_interval`` ends at once, and once its running attempt
  (if any) has failed it is loaded afresh in the same way. Whatever the retry schedule, new
  content is thus tried within a round of its arrival (or of the running attempt's end).
  A loaded version is never reloaded.
* With ``load_timeout``, a load attempt that outlives it ends the version with
  DEADLINE_EXCEEDED and is abandoned on its own thread (see :class:`ManagerOptions`).

Thread-safe. ``close()`` unloads everything and is idempotent; use the manager as a context
manager.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyserving.core.clock import Clock, SystemClock
from pyserving.core.handle import RefCounter, ServableHandle, ServableRequest
from pyserving.core.harness import LoaderHarness, as_serving_error
from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.core.monitor import EventBus, ManagerState, ServableState
from pyserving.core.policy import (
    Action,
    ActionKind,
    HarnessState,
    Policy,
    VersionSnapshot,
    policy_by_name,
)
from pyserving.core.resources import ResourceTracker
from pyserving.core.source import AspiredVersionsCallback, ServableData, ServableId, Target
from pyserving.errors import InvalidArgument, NotFound, ServingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagerOptions:
    """Options of :class:`AspiredVersionsManager`.

    ``num_load_threads`` / ``num_unload_threads``: pool sizes; 0 runs the work inline in
    ``run_once`` (TF Serving's default). ``max_num_load_retries``: retries after a failed load
    (5, as TF Serving). ``load_retry_interval``: seconds between attempts (60, as TF Serving).
    ``manage_state_interval``: seconds between background ``run_once`` calls.
    ``run_manager_loop``: False leaves stepping to the caller. ``default_policy``: the policy
    for names without one of their own. ``resource_budget``: the total the ResourceTracker
    reserves against; ``None`` means unlimited. ``clock``: time source for retries.
    ``load_timeout``: seconds one load attempt may take (``None``: no limit). An attempt that
    takes longer ends its version in END with DEADLINE_EXCEEDED, without retries; its thread
    is abandoned (see ``LoaderHarness.load_with_retries``). With a timeout, loads never run
    inline in the manager loop: ``num_load_threads`` = 0 then means one load thread, so a
    hanging load holds up other loads for at most the timeout and never blocks the loop
    (unloads, newly aspired versions, other models' state).
    """

    num_load_threads: int = 0
    num_unload_threads: int = 0
    max_num_load_retries: int = 5
    load_retry_interval: float = 60.0
    manage_state_interval: float = 0.05
    run_manager_loop: bool = True
    default_policy: str = "availability_preserving"
    resource_budget: ResourceEstimate | None = None
    clock: Clock = field(default_factory=SystemClock)
    load_timeout: float | None = None


class _Executor(Protocol):
    def submit(self, fn: Callable[[], None]) -> Any: ...

    def shutdown(self, wait: bool = True) -> None: ...


class _InlineExecutor:
    """Runs work at once on the calling thread (pool size 0)."""

    def submit(self, fn: Callable[[], None]) -> None:
        fn()

    def shutdown(self, wait: bool = True) -> None:
        return None


def _executor(size: int, name: str) -> _Executor:
    if size <= 0:
        return _InlineExecutor()
    return concurrent.futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)


@dataclass(frozen=True)
class _Slot:
    servable: Any
    refs: RefCounter


@dataclass(frozen=True)
class _ServingEntry:
    """An immutable snapshot of one name's AVAILABLE versions (replaced, never mutated)."""

    versions: Mapping[int, _Slot]
    latest: int


_STATE_FOR: dict[HarnessState, ManagerState] = {
    HarnessState.NEW: ManagerState.START,
    HarnessState.LOAD_REQUESTED: ManagerState.LOADING,
    HarnessState.LOADING: ManagerState.LOADING,
    HarnessState.READY: ManagerState.AVAILABLE,
    HarnessState.QUIESCING: ManagerState.UNLOADING,
    HarnessState.UNLOADING: ManagerState.UNLOADING,
    HarnessState.DISABLED: ManagerState.END,
    HarnessState.ERROR: ManagerState.END,
}


def _content_changed(existing: LoaderHarness, item: ServableData[Any]) -> bool:
    """Whether ``item`` carries other content than ``existing`` was made from (a ``None``
    fingerprint in ``item`` means "unknown" and never counts as a change)."""
    return item.fingerprint is not None and item.fingerprint != existing.fingerprint


#: States in which a harness is replaced by a fresh one when its content changes.
_RESTARTABLE = (HarnessState.ERROR, HarnessState.NEW)
#: States in which a harness is superseded when its content changes.
_LOADING = (HarnessState.LOAD_REQUESTED, HarnessState.LOADING)


class AspiredVersionsManager(Target[Loader]):
    """Loads aspired versions, unloads the rest under a per-name policy, serves handles."""

    def __init__(self, options: ManagerOptions | None = None, bus: EventBus | None = None) -> None:
        self.options = options or ManagerOptions()
        self.bus = bus or EventBus()
        self.resources = ResourceTracker(self.options.resource_budget)
        self._default_policy = policy_by_name(self.options.default_policy)
        self._policies: dict[str, Policy] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._harnesses: dict[str, dict[int, LoaderHarness]] = {}
        self._pending: dict[str, Sequence[ServableData[Loader]]] = {}
        self._serving: dict[str, _ServingEntry] = {}
        self._lock = threading.RLock()
        self._run_lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(threading.Lock())
        load_threads = self.options.num_load_threads
        if self.options.load_timeout is not None:
            load_threads = max(1, load_threads)
        self._load_pool = _executor(load_threads, "pyserving-load")
        self._unload_pool = _executor(self.options.num_unload_threads, "pyserving-unload")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.options.run_manager_loop:
            self._thread = threading.Thread(
                target=self._loop, name="pyserving-manager", daemon=True
            )
            self._thread.start()

    # ----------------------------------------------------------------- configuration

    def set_policy(self, name: str, policy: Policy | str) -> None:
        """Use ``policy`` (a function or a policy name) for servable ``name``."""
        with self._lock:
            self._policies[name] = policy_by_name(policy) if isinstance(policy, str) else policy

    def set_version_labels(self, name: str, labels: Mapping[str, int]) -> None:
        """Replace ``name``'s version labels (label -> version)."""
        with self._lock:
            self._labels[name] = dict(labels)

    def version_labels(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._labels.get(name, {}))

    # ----------------------------------------------------------------- source side

    def get_aspired_versions_callback(self) -> AspiredVersionsCallback:
        return self._set_aspired_versions

    def _set_aspired_versions(self, name: str, versions: Sequence[ServableData[Any]]) -> None:
        if self._closed:
            return
        with self._lock:
            self._pending[name] = list(versions)
            self._supersede_changed(name, versions)
        self._wake.set()

    def _supersede_changed(self, name: str, versions: Sequence[ServableData[Any]]) -> None:
        """Supersede every loading harness of ``name`` whose content ``versions`` changes, and
        un-aspire every loading harness ``versions`` no longer holds.

        Runs on the source's thread, so that a load waiting between retries stops waiting
        even when it runs inline in the manager loop (``num_load_threads`` = 0) and no round
        can run until it returns. Caller holds ``_lock``.
        """
        current = self._harnesses.get(name, {})
        wanted = {item.id.version for item in versions}
        for version, loading in current.items():
            if version not in wanted and loading.state in _LOADING and loading.is_aspired:
                # Gone from the source (its directory deleted): no further attempt.
                log.info(
                    "Servable %s: no longer aspired while loading; no further attempt",
                    loading.id,
                )
                loading.set_aspired(False)
        for item in versions:
            harness = current.get(item.id.version)
            if (
                harness is not None
                and harness.state in _LOADING
                and not harness.superseded
                and _content_changed(harness, item)
            ):
                log.info(
                    "Servable %s: source content changed while loading; no further attempt "
                    "on the old content, the new content is loaded next",
                    item.id,
                )
                harness.supersede()

    # ----------------------------------------------------------------- request side

    def handle(self, request: ServableRequest) -> ServableHandle:
        """A handle on the version ``request`` names; ``NotFound`` if it is not AVAILABLE.

        Never blocks on loads. ``InvalidArgument`` for a label that is not defined.
        """
        for _ in range(8):
            entry = self._serving.get(request.name)
            version = request.version
            if request.label is not None:
                labels = self._labels.get(request.name, {})
                if request.label not in labels:
                    raise InvalidArgument(f"Unrecognized servable version label: {request.label}")
                version = labels[request.label]
            if entry is None:
                break
            if version is None:
                version = entry.latest
            slot = entry.versions.get(version)
            if slot is None:
                break
            if slot.refs.acquire():
                return ServableHandle(ServableId(request.name, version), slot.servable, slot.refs)
            # The version is closing; the next snapshot no longer lists it.
        shown = request
        if request.label is not None and version is not None:
            shown = ServableRequest.specific(request.name, version)
        raise NotFound(f"Servable not found for request: {shown}")

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of ``name``, ascending."""
        entry = self._serving.get(name)
        return sorted(entry.versions) if entry else []

    def available_ids(self) -> list[ServableId]:
        serving = self._serving
        return sorted(ServableId(n, v) for n, e in serving.items() for v in e.versions)

    def snapshots(self, name: str) -> list[VersionSnapshot]:
        """What the policy sees of ``name`` now (for diagnostics and tests)."""
        with self._lock:
            return [
                VersionSnapshot(v, h.state, h.is_aspired)
                for v, h in sorted(self._harnesses.get(name, {}).items())
            ]

    # ----------------------------------------------------------------- the manager loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.options.manage_state_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_once()
            except Exception:
                log.exception("manager loop iteration failed")

    def run_once(self) -> int:
        """One round of management; returns how many load/unload actions it started."""
        with self._run_lock:
            tasks: list[tuple[_Executor, Callable[[], None]]] = []
            with self._lock:
                self._apply_pending()
                self._forget_finished()
                for name, versions in self._harnesses.items():
                    if any(h.state.transitional for h in versions.values()):
                        continue
                    policy = self._policies.get(name, self._default_policy)
                    action = policy(
                        [
                            VersionSnapshot(v, h.state, h.is_aspired)
                            for v, h in sorted(versions.items())
                        ]
                    )
                    if action is not None:
                        started = self._start(versions[action.version], action)
                        if started is not None:
                            tasks.append(started)
            for pool, task in tasks:
                self._submit(pool, task)
            return len(tasks)

    def _submit(self, pool: _Executor, task: Callable[[], None]) -> None:
        with self._idle:
            self._inflight += 1

        def run() -> None:
            try:
                task()
            finally:
                with self._idle:
                    self._inflight -= 1
                    self._idle.notify_all()
                self._wake.set()

        pool.submit(run)

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Wait until no load or unload is running; return whether that happened in time."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def settle(self, max_rounds: int = 100, timeout: float | None = 30.0) -> None:
        """Step ``run_once`` until a round starts nothing and nothing runs (for tests/tools)."""
        for _ in range(max_rounds):
            started = self.run_once()
            self.wait_until_idle(timeout)
            if started == 0 and not self._pending:
                return

    # ----------------------------------------------------------------- transitions

    def _publish(
        self,
        harness: LoaderHarness,
        error: ServingError | None = None,
        duration: float | None = None,
        cause: str = "",
    ) -> None:
        self.bus.publish(
            ServableState(
                harness.id,
                _STATE_FOR[harness.state],
                error,
                self.options.clock.monotonic(),
                duration,
                cause,
            )
        )

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for name, data in pending.items():
            current = self._harnesses.setdefault(name, {})
            wanted = {d.id.version: d for d in data}
            blocked = any(
                v in current
                and (
                    (
                        not current[v].is_aspired
                        and current[v].state not in (HarnessState.NEW, HarnessState.READY)
                        and not current[v].state.finished
                    )
                    or (current[v].superseded and current[v].state.transitional)
                )
                for v in wanted
            )
            if blocked:
                # A re-aspired version is still unloading, or a superseded load has not
                # returned yet: apply this set once it has (the task's end wakes the loop).
                self._pending.setdefault(name, data)
                continue
            for version, harness in current.items():
                if version not in wanted and harness.is_aspired:
                    harness.set_aspired(False)
                    if harness.state is HarnessState.NEW:
                        # Never started: it ends here instead of lingering (a lingering
                        # un-aspired version would block resource_preserving loads forever).
                        harness.state = HarnessState.DISABLED
                        self._publish(harness, cause="no longer aspired before it was loaded")
            for version, item in wanted.items():
                existing = current.get(version)
                cause = "source error" if item.error else "aspired by source"
                if existing is not None and not (
                    existing.state.finished and not existing.is_aspired
                ):
                    if existing.state not in _RESTARTABLE or not _content_changed(existing, item):
                        existing.set_aspired(True)
                        continue
                    if existing.state is HarnessState.NEW:
                        cause = "content changed before it was loaded"
                    else:
                        cause = "content changed after an error; loading it again"
                    log.info("Servable %s: source content changed; retrying it", item.id)
                new = LoaderHarness(
                    item.id,
                    item.value() if item.ok else None,
                    item.error,
                    fingerprint=item.fingerprint,
                )
                current[version] = new
                self._publish(new, new.error, cause=cause)
                if new.error is not None:
                    log.error("Servable %s cannot be loaded: %s", new.id, new.error.message)

    def _forget_finished(self) -> None:
        for name in list(self._harnesses):
            versions = self._harnesses[name]
            done = [v for v, h in versions.items() if h.state.finished and not h.is_aspired]
            for version in done:
                del versions[version]
            if not versions and name not in self._pending:
                del self._harnesses[name]

    def _start(
        self, harness: LoaderHarness, action: Action
    ) -> tuple[_Executor, Callable[[], None]] | None:
        if action.kind is ActionKind.LOAD:
            load = self._start_load(harness)
            return None if load is None else (self._load_pool, load)
        return self._unload_pool, self._start_unload(harness)

    def _start_load(self, harness: LoaderHarness) -> Callable[[], None] | None:
        assert harness.loader is not None
        loader = harness.loader
        harness.state = HarnessState.LOAD_REQUESTED
        harness.started_at = self.options.clock.monotonic()
        self._publish(harness, cause="policy: load the newest aspired version")
        try:
            self.resources.reserve(harness.id, loader.estimate_resources())
        except Exception as exc:
            self._fail(harness, as_serving_error(exc))
            return None

        def load() -> None:
            with self._lock:
                harness.state = HarnessState.LOADING
            log.info("Loading servable version %s", harness.id)
            error = harness.load_with_retries(
                self.options.max_num_load_retries,
                self.options.load_retry_interval,
                self.options.clock,
                self.options.load_timeout,
            )
            if error is None:
                try:
                    self.resources.shrink(harness.id, loader.estimate_resources())
                except Exception:
                    log.exception("estimate_resources failed after loading %s", harness.id)
            with self._lock:
                if error is not None:
                    self.resources.release(harness.id)
                    cause = "load failed"
                    if harness.superseded:
                        cause = "load failed; its content changed since and is loaded next"
                    self._fail(harness, error, cause)
                    return
                harness.state = HarnessState.READY
                self._add_serving(harness, loader.servable())
                elapsed = self._elapsed(harness)
                log.info("Successfully loaded servable version %s in %.3fs", harness.id, elapsed)
                self._publish(harness, duration=elapsed, cause="loaded")

        return load

    def _start_unload(self, harness: LoaderHarness) -> Callable[[], None]:
        harness.state = HarnessState.QUIESCING
        harness.started_at = self.options.clock.monotonic()
        self._remove_serving(harness.id)
        self._publish(harness, cause="policy: unload a version that is no longer aspired")
        loader = harness.loader
        assert loader is not None

        def unload() -> None:
            harness.refs.close_and_wait()
            with self._lock:
                harness.state = HarnessState.UNLOADING
            try:
                loader.unload()
            except Exception:
                log.exception("Unloading servable %s raised; continuing", harness.id)
            self.resources.release(harness.id)
            with self._lock:
                harness.state = HarnessState.DISABLED
                harness.loader = None
                elapsed = self._elapsed(harness)
                log.info("Done unloading servable version %s in %.3fs", harness.id, elapsed)
                self._publish(harness, duration=elapsed, cause="unloaded")

        return unload

    def _fail(
        self, harness: LoaderHarness, error: ServingError, cause: str = "load failed"
    ) -> None:
        harness.state = HarnessState.ERROR
        harness.error = error
        elapsed = self._elapsed(harness)
        log.error("Failed to load servable version %s: %s", harness.id, error.message)
        self._publish(harness, error, duration=elapsed, cause=cause)

    def _elapsed(self, harness: LoaderHarness) -> float:
        if harness.started_at is None:
            return 0.0
        return self.options.clock.monotonic() - harness.started_at

    def _add_serving(self, harness: LoaderHarness, servable: Any) -> None:
        name = harness.id.name
        entry = self._serving.get(name)
        versions = dict(entry.versions) if entry else {}
        versions[harness.id.version] = _Slot(servable, harness.refs)
        self._serving = {**self._serving, name: _ServingEntry(versions, max(versions))}

    def _remove_serving(self, id: ServableId) -> None:
        entry = self._serving.get(id.name)
        if entry is None or id.version not in entry.versions:
            return
        versions = {v: s for v, s in entry.versions.items() if v != id.version}
        serving = dict(self._serving)
        if versions:
            serving[id.name] = _ServingEntry(versions, max(versions))
        else:
            del serving[id.name]
        self._serving = serving

    # ----------------------------------------------------------------- shutdown

    def _unaspire_all(self) -> None:
        """Un-aspire every version and drop what the sources asked for since the last
        round; loads waiting to retry stop waiting."""
        with self._lock:
            self._pending = {}
            for versions in self._harnesses.values():
                for harness in versions.values():
                    harness.set_aspired(False)

    def unload_all(self, timeout: float | None = 60.0) -> None:
        """Un-aspire every version and step until all are unloaded."""
        self._unaspire_all()
        self.wait_until_idle(timeout)
        self.settle(timeout=timeout)

    def close(self) -> None:
        """Stop the loop, unload everything, stop the pools. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._unaspire_all()  # (the loop may be waiting to retry a load inline)
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.unload_all()
        self._load_pool.shutdown(wait=True)
        self._unload_pool.shutdown(wait=True)

    def __enter__(self) -> AspiredVersionsManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
