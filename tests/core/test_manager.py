"""AspiredVersionsManager through its real seams: FakeLoaders in, handles and states out.

The manager loop is off; tests step it with ``run_once``/``settle`` and use a ManualClock, so
every test is deterministic whatever the pool sizes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pyserving.core.clock import ManualClock
from pyserving.core.handle import ServableRequest
from pyserving.core.loader import ResourceEstimate
from pyserving.core.manager import AspiredVersionsManager, ManagerOptions
from pyserving.core.monitor import ManagerState, ServableStateMonitor
from pyserving.core.policy import HarnessState
from pyserving.core.source import ServableData, ServableId
from pyserving.errors import InvalidArgument, NotFound, ResourceExhausted
from tests.core.fakes import FakeLoader, LoadLog

POOLS = [0, 1, 4]


def make(pool: int, **kw: object) -> AspiredVersionsManager:
    options = ManagerOptions(
        num_load_threads=pool,
        num_unload_threads=pool,
        run_manager_loop=False,
        load_retry_interval=5.0,
        clock=kw.pop("clock", ManualClock()),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return AspiredVersionsManager(options)


@pytest.fixture(params=POOLS, ids=[f"pool{p}" for p in POOLS])
def pool(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def manager(pool: int) -> Iterator[AspiredVersionsManager]:
    with make(pool) as m:
        yield m


def aspire(m: AspiredVersionsManager, name: str, *loaders: FakeLoader) -> None:
    m.get_aspired_versions_callback()(
        name, [ServableData(ServableId(name, ld.version), ld) for ld in loaders]
    )


def test_loads_aspired_version_and_serves_latest(manager: AspiredVersionsManager) -> None:
    aspire(manager, "m", FakeLoader("m", 1), FakeLoader("m", 2))
    manager.settle()
    assert manager.available_versions("m") == [1, 2]
    with manager.handle(ServableRequest.latest("m")) as h:
        assert h.id == ServableId("m", 2) and h.servable.version == 2
    with manager.handle(ServableRequest.specific("m", 1)) as h:
        assert h.servable.version == 1


def test_not_found_messages(manager: AspiredVersionsManager) -> None:
    with pytest.raises(NotFound, match=r"Servable not found for request: Latest\(nope\)"):
        manager.handle(ServableRequest.latest("nope"))
    aspire(manager, "m", FakeLoader("m", 1))
    manager.settle()
    with pytest.raises(NotFound, match=r"Servable not found for request: Specific\(m, 7\)"):
        manager.handle(ServableRequest.specific("m", 7))


def test_labels(manager: AspiredVersionsManager) -> None:
    aspire(manager, "m", FakeLoader("m", 1), FakeLoader("m", 2))
    manager.settle()
    manager.set_version_labels("m", {"stable": 1, "canary": 2, "gone": 9})
    with manager.handle(ServableRequest.labelled("m", "stable")) as h:
        assert h.id.version == 1
    with manager.handle(ServableRequest.labelled("m", "canary")) as h:
        assert h.id.version == 2
    with pytest.raises(InvalidArgument, match="Unrecognized servable version label: beta"):
        manager.handle(ServableRequest.labelled("m", "beta"))
    with pytest.raises(NotFound, match=r"Specific\(m, 9\)"):
        manager.handle(ServableRequest.labelled("m", "gone"))


def test_availability_preserving_swap_order(manager: AspiredVersionsManager) -> None:
    log = LoadLog()
    aspire(manager, "m", FakeLoader("m", 1, log=log))
    manager.settle()
    aspire(manager, "m", FakeLoader("m", 2, log=log))
    manager.settle()
    assert log.events == [("load", "m", 1), ("load", "m", 2), ("unload", "m", 1)]
    assert manager.available_versions("m") == [2]


def test_resource_preserving_swap_order(pool: int) -> None:
    log = LoadLog()
    with make(pool, default_policy="resource_preserving") as m:
        aspire(m, "m", FakeLoader("m", 1, log=log))
        m.settle()
        aspire(m, "m", FakeLoader("m", 2, log=log))
        m.settle()
        assert log.events == [("load", "m", 1), ("unload", "m", 1), ("load", "m", 2)]


def test_policy_per_model(pool: int) -> None:
    log = LoadLog()
    with make(pool) as m:
        m.set_policy("r", "resource_preserving")
        aspire(m, "a", FakeLoader("a", 1, log=log))
        aspire(m, "r", FakeLoader("r", 1, log=log))
        m.settle()
        log.events.clear()
        aspire(m, "a", FakeLoader("a", 2, log=log))
        m.settle()
        aspire(m, "r", FakeLoader("r", 2, log=log))
        m.settle()
        assert log.events == [
            ("load", "a", 2),
            ("unload", "a", 1),
            ("unload", "r", 1),
            ("load", "r", 2),
        ]


def test_resource_preserving_never_reserves_two_versions(pool: int) -> None:
    """Reserved memory never exceeds one version's estimate across a 1 -> 2 -> 3 swap."""
    peak = 0
    with make(pool, default_policy="resource_preserving") as m:

        def watch(_state: object) -> None:
            nonlocal peak
            peak = max(peak, m.resources.used().ram_bytes)

        m.bus.subscribe(watch)
        for version in (1, 2, 3):
            aspire(m, "m", FakeLoader("m", version, ram=1000))
            m.settle()
            peak = max(peak, m.resources.used().ram_bytes)
        assert m.available_versions("m") == [3]
    assert peak == 1000


def test_availability_preserving_holds_two_versions_at_once(pool: int) -> None:
    peak = 0
    with make(pool) as m:

        def watch(_state: object) -> None:
            nonlocal peak
            peak = max(peak, m.resources.used().ram_bytes)

        m.bus.subscribe(watch)
        for version in (1, 2):
            aspire(m, "m", FakeLoader("m", version, ram=1000))
            m.settle()
    assert peak == 2000


def test_resource_exhaustion_is_an_error_state_and_others_serve(pool: int) -> None:
    budget = ResourceEstimate(ram_bytes=1500)
    with make(pool, resource_budget=budget) as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "small", FakeLoader("small", 1, ram=1000))
        m.settle()
        aspire(m, "big", FakeLoader("big", 1, ram=1000))
        m.settle()
        state = monitor.get_state(ServableId("big", 1))
        assert state is not None and state.state is ManagerState.END
        assert isinstance(state.error, ResourceExhausted)
        msg = state.error.message
        assert "big" in msg and "1000 bytes" in msg and "500 bytes" in msg
        with m.handle(ServableRequest.latest("small")) as h:
            assert h.servable.name == "small"
        assert m.resources.used().ram_bytes == 1000


def test_load_retries_then_succeeds(pool: int) -> None:
    clock = ManualClock()
    with make(pool, clock=clock, max_num_load_retries=3) as m:
        loader = FakeLoader("m", 1, fail_times=2)
        aspire(m, "m", loader)
        m.settle()
        assert loader.attempts == 3
        assert m.available_versions("m") == [1]
        assert clock.monotonic() == pytest.approx(10.0)  # two waits of the 5 s interval


def test_load_retries_exhausted_is_error(pool: int) -> None:
    with make(pool, max_num_load_retries=2) as m:
        monitor = ServableStateMonitor(m.bus)
        loader = FakeLoader("m", 1, fail_times=10)
        aspire(m, "m", loader)
        m.settle()
        assert loader.attempts == 3
        state = monitor.get_state(ServableId("m", 1))
        assert state is not None and state.state is ManagerState.END
        assert state.error is not None and "injected failure 3" in state.error.message
        assert m.resources.used().ram_bytes == 0


class ExitingLoader(FakeLoader):
    """A loader whose load calls ``sys.exit()`` (as model code parsing the server's own
    command line with argparse does)."""

    def load(self) -> None:
        self.attempts += 1
        raise SystemExit(2)


def test_sys_exit_in_a_load_is_a_load_error(pool: int) -> None:
    with make(pool, max_num_load_retries=0) as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "m", ExitingLoader("m", 1))
        aspire(m, "other", FakeLoader("other", 1))
        m.settle()
        state = monitor.get_state(ServableId("m", 1))
        assert state is not None and state.state is ManagerState.END
        assert state.error is not None and state.error.message == "SystemExit: 2"
        assert m.available_versions("other") == [1]


def test_retries_stop_when_version_no_longer_aspired() -> None:
    """A load thread is retrying; un-aspiring the version cancels the wait between attempts."""
    with AspiredVersionsManager(
        ManagerOptions(
            num_load_threads=1,
            run_manager_loop=False,
            max_num_load_retries=100,
            load_retry_interval=3600.0,
        )
    ) as m:
        loader = FakeLoader("m", 1, fail_times=1000)
        aspire(m, "m", loader)
        m.run_once()
        # Wait until the first attempt has failed and the harness waits to retry (or is about
        # to: it checks the version is still aspired before waiting).
        deadline = time.monotonic() + 30
        while loader.attempts < 1:
            assert time.monotonic() < deadline, "the first load attempt never ran"
            threading.Event().wait(0.01)
        m.get_aspired_versions_callback()("m", [])
        m.run_once()  # applies the un-aspire, which wakes the retry wait at once
        assert m.wait_until_idle(timeout=30)
        assert loader.attempts == 1


def _inline_retrying_manager() -> tuple[AspiredVersionsManager, FakeLoader]:
    """A manager whose loop runs loads itself (``num_load_threads`` 0), loading a version
    that always fails, now waiting an hour to retry it (so the loop is blocked)."""
    m = AspiredVersionsManager(
        ManagerOptions(num_load_threads=0, max_num_load_retries=100, load_retry_interval=3600.0)
    )
    loader = FakeLoader("m", 1, fail_times=1000)
    aspire(m, "m", loader)
    deadline = time.monotonic() + 30
    while loader.attempts < 1:
        assert time.monotonic() < deadline, "the first load attempt never ran"
        threading.Event().wait(0.01)
    return m, loader


def test_a_version_gone_from_its_source_stops_retrying_at_once() -> None:
    """The loop is blocked in the retry wait, so it cannot apply the new aspired set: the
    source's callback itself ends the wait (the version's directory was deleted)."""
    m, loader = _inline_retrying_manager()
    monitor = ServableStateMonitor(m.bus)
    try:
        m.get_aspired_versions_callback()("m", [])
        state = monitor.wait_until_available(ServableId("m", 1), timeout=30)
        assert state.state is ManagerState.END
        assert loader.attempts == 1
    finally:
        m.close()


def test_close_ends_a_wait_between_load_attempts() -> None:
    """Shutting down does not wait out the retry interval (a SIGTERM would otherwise take
    minutes with the default retries)."""
    m, loader = _inline_retrying_manager()
    closer = threading.Thread(target=m.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() waited out the retry interval"
    assert loader.attempts == 1


def test_error_data_from_source_is_visible(manager: AspiredVersionsManager) -> None:
    from pyserving.errors import NotFound as NF

    monitor = ServableStateMonitor(manager.bus)
    manager.get_aspired_versions_callback()(
        "m", [ServableData(ServableId("m", 3), error=NF("no SavedModel at /x"))]
    )
    manager.settle()
    state = monitor.get_state(ServableId("m", 3))
    assert state is not None and state.state is ManagerState.END
    assert state.error is not None and state.error.message == "no SavedModel at /x"


def test_unaspired_version_unloads_and_is_forgotten(manager: AspiredVersionsManager) -> None:
    aspire(manager, "m", FakeLoader("m", 1), FakeLoader("m", 2))
    manager.settle()
    aspire(manager, "m", FakeLoader("m", 2))
    manager.settle()
    assert manager.available_versions("m") == [2]
    assert [s.version for s in manager.snapshots("m")] == [2]
    aspire(manager, "m")
    manager.settle()
    assert manager.available_versions("m") == []
    with pytest.raises(NotFound):
        manager.handle(ServableRequest.latest("m"))


def test_reaspired_version_reloads_after_unload(manager: AspiredVersionsManager) -> None:
    log = LoadLog()
    aspire(manager, "m", FakeLoader("m", 1, log=log))
    manager.settle()
    aspire(manager, "m")
    manager.settle()
    aspire(manager, "m", FakeLoader("m", 1, log=log))
    manager.settle()
    assert log.events == [("load", "m", 1), ("unload", "m", 1), ("load", "m", 1)]
    assert manager.available_versions("m") == [1]


def test_unload_waits_for_open_handle() -> None:
    """Quiescing: the unload does not run while a handle on the version is open."""
    log = LoadLog()
    with AspiredVersionsManager(
        ManagerOptions(num_load_threads=1, num_unload_threads=1, run_manager_loop=False)
    ) as m:
        aspire(m, "m", FakeLoader("m", 1, log=log))
        m.settle()
        handle = m.handle(ServableRequest.latest("m"))
        aspire(m, "m")
        m.run_once()
        assert not m.wait_until_idle(timeout=0.2)  # the unload is blocked on the handle
        assert ("unload", "m", 1) not in log.events
        assert not handle.servable.unloaded
        with pytest.raises(NotFound):  # already out of lookup while quiescing
            m.handle(ServableRequest.latest("m"))
        assert [s.state for s in m.snapshots("m")] == [HarnessState.QUIESCING]
        handle.release()
        assert m.wait_until_idle(timeout=30)
        assert ("unload", "m", 1) in log.events


def test_states_published_in_order(manager: AspiredVersionsManager) -> None:
    monitor = ServableStateMonitor(manager.bus)
    aspire(manager, "m", FakeLoader("m", 1))
    manager.settle()
    aspire(manager, "m")
    manager.settle()
    states = [s.state for s in monitor.history() if s.id == ServableId("m", 1)]
    assert states == [
        ManagerState.START,
        ManagerState.LOADING,
        ManagerState.AVAILABLE,
        ManagerState.UNLOADING,
        ManagerState.END,
    ]
    assert monitor.get_version_states("m")[1].error is None


def test_close_unloads_everything_and_is_idempotent(pool: int) -> None:
    log = LoadLog()
    m = make(pool)
    aspire(m, "a", FakeLoader("a", 1, log=log))
    aspire(m, "b", FakeLoader("b", 1, log=log))
    m.settle()
    m.close()
    m.close()
    assert sorted(e for e in log.events if e[0] == "unload") == [
        ("unload", "a", 1),
        ("unload", "b", 1),
    ]
    assert m.resources.used().ram_bytes == 0


def test_background_loop_loads_without_stepping() -> None:
    with AspiredVersionsManager(ManagerOptions(num_load_threads=1)) as m:
        monitor = ServableStateMonitor(m.bus)
        aspire(m, "m", FakeLoader("m", 1))
        state = monitor.wait_until_available(ServableId("m", 1), timeout=30)
        assert state.state is ManagerState.AVAILABLE
