"""The manager under failure: changed content after an error or while loading, versions dropped
before loading, loads that hang past the load timeout. FakeLoaders through the real manager,
stepped by hand.

Tests that need a thread caught in a wait between load retries use ``ManualClock(blocking=True)``
and synchronise on ``wait_for_waiters`` and ``FakeLoader.started``; the clock never moves
unless a test advances it, so "no retry interval elapsed" is ``clock.monotonic() == 0``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from pyserving.core.clock import ManualClock
from pyserving.core.handle import ServableRequest
from pyserving.core.manager import AspiredVersionsManager, ManagerOptions
from pyserving.core.monitor import ManagerState, ServableStateMonitor
from pyserving.core.source import ServableData, ServableId
from pyserving.errors import DeadlineExceeded
from tests.core.fakes import FakeLoader, LoadLog

POOLS = [0, 1, 4]


def make(pool: int, **kw: object) -> AspiredVersionsManager:
    kw.setdefault("max_num_load_retries", 0)
    kw.setdefault("clock", ManualClock())
    options = ManagerOptions(
        num_load_threads=pool,
        num_unload_threads=pool,
        run_manager_loop=False,
        **kw,  # type: ignore[arg-type]
    )
    return AspiredVersionsManager(options)


@pytest.fixture(params=POOLS, ids=[f"pool{p}" for p in POOLS])
def pool(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def aspire(m: AspiredVersionsManager, name: str, *items: tuple[FakeLoader, str | None]) -> None:
    m.get_aspired_versions_callback()(
        name,
        [
            ServableData(ServableId(name, loader.version), loader, fingerprint=fingerprint)
            for loader, fingerprint in items
        ],
    )


def state(monitor: ServableStateMonitor, name: str, version: int) -> ManagerState | None:
    s = monitor.get_state(ServableId(name, version))
    return None if s is None else s.state


def history(monitor: ServableStateMonitor, name: str, version: int) -> list[ManagerState]:
    return [s.state for s in monitor.history() if s.id == ServableId(name, version)]


@contextlib.contextmanager
def stepping(m: AspiredVersionsManager) -> Iterator[None]:
    """One ``run_once`` on another thread: with inline loads (pool 0) a load waiting between
    retries blocks ``run_once`` itself, as it blocks the manager loop in the server."""
    stepper = threading.Thread(target=m.run_once, name="test-stepper")
    stepper.start()
    try:
        yield
    finally:
        stepper.join(30)
        assert not stepper.is_alive(), "run_once did not return"


# ------------------------------------------------------------------ changed content


def test_failed_version_loads_again_when_its_content_changes(pool: int) -> None:
    log = LoadLog()
    with make(pool) as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "m", (FakeLoader("m", 1, log=log), "a"))
        m.settle()
        bad = FakeLoader("m", 2, fail_times=100, log=log)
        aspire(m, "m", (bad, "corrupt"))
        m.settle()
        assert state(monitor, "m", 2) is ManagerState.END
        assert m.available_versions("m") == [1]  # the previous version keeps serving
        # The same content again: no new attempt, the error stays.
        again = FakeLoader("m", 2, log=log)
        aspire(m, "m", (again, "corrupt"))
        m.settle()
        assert again.attempts == 0 and bad.attempts == 1
        assert state(monitor, "m", 2) is ManagerState.END
        # Fixed content: a fresh load.
        fixed = FakeLoader("m", 2, log=log)
        aspire(m, "m", (fixed, "fixed"))
        m.settle()
        assert fixed.attempts == 1
        assert m.available_versions("m") == [2]
        assert ("unload", "m", 1) in log.events
        assert monitor.get_state(ServableId("m", 2)).error is None  # type: ignore[union-attr]


def test_source_error_is_retried_when_its_content_changes(pool: int) -> None:
    from pyserving.errors import NotFound

    with make(pool) as m:
        monitor = ServableStateMonitor(m.bus)
        m.get_aspired_versions_callback()(
            "m", [ServableData(ServableId("m", 1), error=NotFound("nothing"), fingerprint="a")]
        )
        m.settle()
        assert state(monitor, "m", 1) is ManagerState.END
        aspire(m, "m", (FakeLoader("m", 1), "b"))
        m.settle()
        assert m.available_versions("m") == [1]


def test_loaded_version_is_not_reloaded_when_its_content_changes(pool: int) -> None:
    with make(pool) as m:
        first = FakeLoader("m", 1)
        aspire(m, "m", (first, "a"))
        m.settle()
        second = FakeLoader("m", 1)
        aspire(m, "m", (second, "b"))
        m.settle()
        assert (first.attempts, second.attempts) == (1, 0)
        with m.handle(ServableRequest.latest("m")) as h:
            assert h.servable is first.servable()


def test_no_fingerprint_never_triggers_a_reload(pool: int) -> None:
    with make(pool) as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "m", (FakeLoader("m", 1, fail_times=100), None))
        m.settle()
        retry = FakeLoader("m", 1)
        aspire(m, "m", (retry, None))
        m.settle()
        assert retry.attempts == 0
        assert state(monitor, "m", 1) is ManagerState.END


# ------------------------------------------------------------------ changed while loading

START, LOADING, AVAILABLE, END = (
    ManagerState.START,
    ManagerState.LOADING,
    ManagerState.AVAILABLE,
    ManagerState.END,
)


def test_new_content_during_a_retry_wait_loads_at_once(pool: int) -> None:
    """The slow copy: version 2 is handed over half-copied, fails, and waits 60 s to retry.
    Its complete content arrives during the wait: the wait ends at once, the new content loads
    from a fresh start without the clock moving, and version 1 serves until then."""
    clock = ManualClock(blocking=True)
    log = LoadLog()
    with make(pool, clock=clock, max_num_load_retries=5, load_retry_interval=60.0) as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "m", (FakeLoader("m", 1, log=log), "v1"))
        m.settle()
        half = FakeLoader("m", 2, fail_times=100, log=log)
        complete = FakeLoader("m", 2, log=log)
        aspire(m, "m", (half, "variables only"))
        with stepping(m):
            assert clock.wait_for_waiters(1, timeout=30)  # waiting to retry
            assert half.attempts == 1 and state(monitor, "m", 2) is LOADING
            assert m.available_versions("m") == [1]
            aspire(m, "m", (complete, "complete"))  # ends the wait from the source's thread
        m.settle()
        assert clock.monotonic() == 0.0  # no retry interval elapsed
        assert (half.attempts, complete.attempts) == (1, 1)
        assert m.available_versions("m") == [2]
        assert log.events == [
            ("load", "m", 1),
            ("load-failed", "m", 2),
            ("load", "m", 2),
            ("unload", "m", 1),  # availability-preserving: 1 served until 2 was ready
        ]
        assert history(monitor, "m", 2) == [START, LOADING, END, START, LOADING, AVAILABLE]
        assert monitor.get_state(ServableId("m", 2)).error is None  # type: ignore[union-attr]


def test_new_content_during_a_load_attempt_is_loaded_without_waiting_to_retry(
    pool: int, gate: threading.Event
) -> None:
    clock = ManualClock(blocking=True)
    with make(pool, clock=clock, max_num_load_retries=5, load_retry_interval=60.0) as m:
        half = FakeLoader("m", 2, fail_times=100, gate=gate)
        complete = FakeLoader("m", 2)
        aspire(m, "m", (half, "a"))
        with stepping(m):
            assert half.started.wait(30)  # the attempt runs (held at the gate)
            aspire(m, "m", (complete, "b"))
            gate.set()  # the attempt fails: no wait, no further attempt
        m.settle()
        assert clock.monotonic() == 0.0
        assert (half.attempts, complete.attempts) == (1, 1)
        assert m.available_versions("m") == [2]


def test_attempt_that_succeeds_after_its_content_changed_stands(
    pool: int, gate: threading.Event
) -> None:
    """A running attempt is never interrupted; if it loads, the version serves and is not
    reloaded (versions are immutable once served)."""
    with make(pool, clock=ManualClock(blocking=True), max_num_load_retries=5) as m:
        first = FakeLoader("m", 2, gate=gate)
        second = FakeLoader("m", 2)
        aspire(m, "m", (first, "a"))
        with stepping(m):
            assert first.started.wait(30)
            aspire(m, "m", (second, "b"))
            gate.set()
        m.settle()
        assert (first.attempts, second.attempts) == (1, 0)
        with m.handle(ServableRequest.latest("m")) as h:
            assert h.servable is first.servable()


def test_same_content_during_a_retry_wait_keeps_the_retry_schedule(pool: int) -> None:
    """The source re-emits every version at each poll: the same fingerprint changes nothing,
    the retry happens when its interval has elapsed."""
    clock = ManualClock(blocking=True)
    with make(pool, clock=clock, max_num_load_retries=5, load_retry_interval=60.0) as m:
        monitor = ServableStateMonitor(m.bus)
        flaky = FakeLoader("m", 1, fail_times=1)
        aspire(m, "m", (flaky, "a"))
        with stepping(m):
            assert clock.wait_for_waiters(1, timeout=30)
            aspire(m, "m", (FakeLoader("m", 1), "a"))
            aspire(m, "m", (FakeLoader("m", 1), None))  # unknown content: no change either
            clock.advance(60.0)
        m.settle()
        assert flaky.attempts == 2 and clock.monotonic() == 60.0
        assert m.available_versions("m") == [1]
        assert history(monitor, "m", 1) == [START, LOADING, AVAILABLE]


def test_new_content_before_the_load_starts_replaces_the_version(pool: int) -> None:
    """resource_preserving: version 2 waits in START while 1 unloads; new content for 2
    arrives meanwhile; the new content is what loads, the old loader is never used."""
    with make(pool, default_policy="resource_preserving") as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "m", (FakeLoader("m", 1), "v1"))
        m.settle()
        old = FakeLoader("m", 2, fail_times=100)
        new = FakeLoader("m", 2)
        aspire(m, "m", (old, "a"))
        m.run_once()  # unloads 1 first; 2 waits in START
        assert m.wait_until_idle(timeout=30)
        assert state(monitor, "m", 2) is START
        aspire(m, "m", (new, "b"))
        m.settle()
        assert (old.attempts, new.attempts) == (0, 1)
        assert m.available_versions("m") == [2]


# ------------------------------------------------------------------ dropped before loading


def test_version_dropped_before_loading_ends_and_resource_preserving_goes_on(pool: int) -> None:
    """1 is served; 2 is aspired, then replaced by 3 before 2 started loading. 2 ends at once
    (START -> END, no load) and 3 loads: nothing waits forever for 2."""
    log = LoadLog()
    with make(pool, default_policy="resource_preserving") as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "m", (FakeLoader("m", 1, log=log), None))
        m.settle()
        aspire(m, "m", (FakeLoader("m", 2, log=log), None))
        m.run_once()  # resource-preserving: unloads 1 first; 2 waits in START
        assert m.wait_until_idle(timeout=30)
        assert state(monitor, "m", 2) is ManagerState.START
        aspire(m, "m", (FakeLoader("m", 3, log=log), None))
        m.settle()
        assert m.available_versions("m") == [3]
        assert log.events == [("load", "m", 1), ("unload", "m", 1), ("load", "m", 3)]
        history = [s.state for s in monitor.history() if s.id == ServableId("m", 2)]
        assert history == [ManagerState.START, ManagerState.END]
        assert monitor.get_state(ServableId("m", 2)).error is None  # type: ignore[union-attr]
        assert [s.version for s in m.snapshots("m")] == [3]  # 2 is forgotten


# ------------------------------------------------------------------ load timeout


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """A gate the hanging loader waits on; opened at the end so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def join_load_thread(name: str, version: int) -> None:
    for thread in threading.enumerate():
        if thread.name == f"pyserving-load-{name}-{version}":
            thread.join(30)
            assert not thread.is_alive()


@pytest.mark.parametrize("pool", [0, 1])
def test_hanging_load_times_out_and_other_models_load(pool: int, gate: threading.Event) -> None:
    log = LoadLog()
    # The timeout applies to "ok" too: generous next to its instant load even when the
    # load thread starts late (a busy machine, a garbage collection), yet short to wait for.
    with make(pool, load_timeout=1.0, max_num_load_retries=3) as m:
        monitor = ServableStateMonitor(m.bus)
        hanging = FakeLoader("hang", 1, gate=gate, log=log)
        aspire(m, "hang", (hanging, None))
        aspire(m, "ok", (FakeLoader("ok", 1, log=log), None))
        m.settle()
        hung = monitor.get_state(ServableId("hang", 1))
        assert hung is not None and hung.state is ManagerState.END
        assert isinstance(hung.error, DeadlineExceeded)
        assert "load timeout of 1 seconds" in hung.error.message
        assert m.available_versions("ok") == [1]
        assert m.available_versions("hang") == []
        assert hanging.attempts == 1  # a timed-out attempt is not retried
        assert m.resources.used().ram_bytes == 100  # only "ok" holds a reservation
        # The abandoned load finishes later: what it loaded is unloaded on its own thread.
        gate.set()
        join_load_thread("hang", 1)
        assert ("load", "hang", 1) in log.events and ("unload", "hang", 1) in log.events
        assert m.available_versions("hang") == []


def test_hanging_load_does_not_block_the_manager_loop(gate: threading.Event) -> None:
    """num_load_threads=0 with a timeout: the hanging load is off the manager loop, so other
    models' unloads and state changes go on while it hangs; it serves once it finishes."""
    log = LoadLog()
    with make(0, load_timeout=3600.0) as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "other", (FakeLoader("other", 1, log=log), None))
        m.settle()
        aspire(m, "hang", (FakeLoader("hang", 1, gate=gate, log=log), None))
        m.run_once()  # starts the load and returns
        assert state(monitor, "hang", 1) is ManagerState.LOADING
        aspire(m, "other")
        m.run_once()  # the unload runs inline, not behind the hanging load
        assert state(monitor, "other", 1) is ManagerState.END
        assert ("unload", "other", 1) in log.events
        gate.set()
        m.settle()
        assert m.available_versions("hang") == [1]


def test_failing_load_within_timeout_is_retried(pool: int) -> None:
    with make(pool, load_timeout=60.0, max_num_load_retries=2) as m:
        loader = FakeLoader("m", 1, fail_times=2)
        aspire(m, "m", (loader, None))
        m.settle()
        assert loader.attempts == 3
        assert m.available_versions("m") == [1]
