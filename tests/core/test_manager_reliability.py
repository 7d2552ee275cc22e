"""The manager under failure: changed content after an error, versions dropped before loading,
loads that hang past the load timeout. FakeLoaders through the real manager, stepped by hand."""

from __future__ import annotations

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
    options = ManagerOptions(
        num_load_threads=pool,
        num_unload_threads=pool,
        run_manager_loop=False,
        clock=ManualClock(),
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
    with make(pool, load_timeout=0.05, max_num_load_retries=3) as m:
        monitor = ServableStateMonitor(m.bus)
        hanging = FakeLoader("hang", 1, gate=gate, log=log)
        aspire(m, "hang", (hanging, None))
        aspire(m, "ok", (FakeLoader("ok", 1, log=log), None))
        m.settle()
        hung = monitor.get_state(ServableId("hang", 1))
        assert hung is not None and hung.state is ManagerState.END
        assert isinstance(hung.error, DeadlineExceeded)
        assert "load timeout of 0.05 seconds" in hung.error.message
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
